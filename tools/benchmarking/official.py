"""The official PyTorch model of one of ours, built from a checkout of its official repository and
timed with the protocol of `measure.py`, in a process whose Python has torch.

    <python with torch> -m tools.benchmarking.official '<job JSON>'   # prints one JSON row

Nothing official is kept in this repository: `--torch-src DIR` of `tools/benchmark.py` is a
checkout the user made (with the official code's own dependencies, e.g. timm and einops,
installed next to torch).  `ADAPTERS` says, per family, which file of which repository builds
which of our models: a file is imported from the checkout (its folder path, as a dotted module
name, with the checkout first on sys.path, so its own relative and top-level imports work) and
refused when the module Python found is not the checkout's (an installed timm, say).  A family
with two adapters (ViT: timm or jeonsworld/ViT-pytorch) uses the one whose file the checkout has.

The protocol is `measure.py`'s, step for step: random inputs of the same shape, `warmup` untimed
then `iters` timed steps; eval = the model in eval mode under no_grad; train = forward in train
mode, cross-entropy on random labels (of the class logits, `measure.class_logits`), backward,
AdamW (lr 1e-4, weight decay 0.05) step, zero_grad; the same threads (OMP_NUM_THREADS and
`torch.set_num_threads`), and peak memory as the process's peak resident set size.
"""
import contextlib
import importlib
import json
import os
import sys
import time

from .measure import class_logits
from .process import peak_rss_bytes, rss_bytes

__all__ = ['ADAPTERS', 'Adapter', 'OfficialModelError', 'official_model', 'measure_official']


class Adapter:
    """How one checkout builds our models: `file` (relative to the checkout) holds the official
    constructors; `build(module, name, image_size, drop_path)` returns the official model of our
    MODEL.NAME `name`, for the names in `names`, with our stochastic depth (MODEL.DROPPATH; the
    official constructors default to none, which would make their training step cheaper)."""

    def __init__(self, repository, file, names, build):
        self.repository, self.file, self.names, self.build = repository, file, names, build


def _by_constructor(table, **fixed):
    """`build` of a module whose function `table[name][0]` takes `table[name][1]` as keywords."""
    def build(module, name, image_size, drop_path):
        constructor, kwargs = table[name]
        return getattr(module, constructor)(**fixed, **kwargs, drop_path_rate=drop_path)
    return build


_PIT = {f'pit_{v}{d}': (f'pit_{v}{d}', {}) for v in ('ti', 'xs', 's', 'b') for d in ('', '_distilled')}
_VIT = {f'vit_{v}_patch{p}_{s}': (f'vit_{v}_patch{p}_{s}', {})
        for v, p in (('tiny', 16), ('small', 16), ('base', 16), ('base', 32), ('large', 16), ('large', 32))
        for s in (224, 384)}
_PERVIT = {f'pervit_{v}': (f'pervit_{v}', {}) for v in ('tiny', 'small', 'medium')}
_SPVIT = {f'spvit_{v}_{s}': (f'lvvit_{v}', {'local_up_to_layer': layer, 'img_size': s})   # as our configs say
          for v, layer in (('s', 14), ('m', 10), ('l', 22)) for s in (224, 384)}
_VVT = {f'vvt_{v}_{s}': (f'vvt_{v}', {'img_size': s})
        for v in ('tiny', 'small', 'medium', 'large') for s in (224, 384)}


@contextlib.contextmanager
def _cuda_placements_on_cpu():
    """juhongm999/pervit builds constant tensors with `.cuda()` / `.to('cuda')` in its constructors
    (`model/pervit.py`, `model/utils.py`), which a CPU-only torch refuses; while it is built, those
    two calls leave a tensor where it is.  Its forward pass places nothing."""
    import torch
    cuda, to = torch.Tensor.cuda, torch.Tensor.to

    def stay(tensor, *args, **kwargs):
        if args and str(args[0]).startswith('cuda') or str(kwargs.get('device', '')).startswith('cuda'):
            return tensor
        return to(tensor, *args, **kwargs)
    torch.Tensor.cuda, torch.Tensor.to = lambda tensor, *args, **kwargs: tensor, stay
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.Tensor.to = cuda, to


def _pervit(module, name, image_size, drop_path):
    with _cuda_placements_on_cpu():
        return _by_constructor(_PERVIT)(module, name, image_size, drop_path)


def _pos_cnn_out_of_place(self, x, H, W):
    """ZhouYuxuanYX/SP-ViT's `PosCNN.forward`, the same values, with the grid tokens replaced in a
    new tensor: the official writes them into a view of its input, which the conv keeps for its
    backward pass, so an fp32 backward raises "modified by an inplace operation"."""
    import torch
    B, N, C = x.shape
    tokens = x.permute(0, 2, 1)
    grid = tokens[:, :, N % 2:].reshape(B, C, H, W)
    new = (self.proj(grid) + grid if self.s == 1 else self.proj(grid)).reshape(B, C, H * W)
    return (torch.cat([tokens[:, :, :1], new], dim=2) if N % 2 == 1 else new).transpose(1, 2)


def _spvit(module, name, image_size, drop_path):
    """ZhouYuxuanYX/SP-ViT's token-labeling models run MixToken in every training forward,
    whose box (`rand_bbox`) calls `np.int`, an alias NumPy 1.24 removed: in this measuring
    process it is given back as the builtin it stood for; its PosCNN runs out of place."""
    module.np.int = int
    if hasattr(module, 'PosCNN'):
        module.PosCNN.forward = _pos_cnn_out_of_place
    return _by_constructor(_SPVIT)(module, name, image_size, drop_path)


# jeonsworld/ViT-pytorch's CONFIGS has B, L, H; Ti and S are B/16 with the DeiT widths
_VIT_PYTORCH_WIDTHS = {'tiny': (192, 768, 3), 'small': (384, 1536, 6)}   # hidden, MLP, heads


def _vit_pytorch(module, name, image_size, drop_path):
    """jeonsworld/ViT-pytorch has no stochastic depth (`drop_path` unused) but dropout after every
    projection and MLP layer by its configs (0.1, for fine-tuning), which our recipe for these
    models does not have (MODEL.DROPOUT 0, as DeiT): it is set to 0, as the other official
    constructors default to, so that both sides do the same work (its dropout masks took 12% of
    its ViT-S training step)."""
    size, patch = name.split('_')[1], name.split('_')[2][len('patch'):]
    base = 'B' if size in _VIT_PYTORCH_WIDTHS else size[0].upper()
    config = module.CONFIGS[f'ViT-{base}_{patch}'].copy_and_resolve_references()
    if size in _VIT_PYTORCH_WIDTHS:
        config.hidden_size, config.transformer.mlp_dim, config.transformer.num_heads = _VIT_PYTORCH_WIDTHS[size]
    config.transformer.dropout_rate = config.transformer.attention_dropout_rate = 0.0
    return module.VisionTransformer(config, img_size=image_size, num_classes=1000)


ADAPTERS = {
    'PiT': [Adapter('naver-ai/pit', 'pit.py', _PIT, _by_constructor(_PIT, pretrained=False))],
    'ViT': [Adapter('huggingface/pytorch-image-models', 'timm/models/vision_transformer.py', _VIT,
                    _by_constructor(_VIT, pretrained=False)),
            Adapter('jeonsworld/ViT-pytorch', 'models/modeling.py', _VIT, _vit_pytorch)],
    'PerViT': [Adapter('juhongm999/pervit', 'model/models.py', _PERVIT, _pervit)],
    'SPViT': [Adapter('ZhouYuxuanYX/SP-ViT', 'tlt/models/spvit.py', _SPVIT, _spvit)],
    'VVT': [Adapter('OpenNLPLab/Vicinity-Vision-Transformer', 'classification/vvt.py', _VVT,
                    _by_constructor(_VVT))],
}


class OfficialModelError(Exception):
    """A model with no adapter, or a checkout that does not hold what its adapter reads."""


def _adapter(name, src):
    families = [adapters for adapters in ADAPTERS.values() if any(name in a.names for a in adapters)]
    if not families:
        known = sorted(n for adapters in ADAPTERS.values() for a in adapters for n in a.names)
        raise OfficialModelError(f'no official PyTorch model is known for {name}; known: {", ".join(known)}')
    for adapter in families[0]:
        if os.path.isfile(os.path.join(src, adapter.file)):
            return adapter
    wanted = ' or '.join(f'{a.file} (a checkout of github.com/{a.repository})' for a in families[0])
    raise OfficialModelError(f'--torch-src {src} has no {wanted}, which builds the official {name}')


def _import_from(src, file):
    """The module of `file` in the checkout `src`, imported by its dotted path with `src` first on sys.path."""
    sys.path.insert(0, src)
    module = importlib.import_module(file[:-len('.py')].replace('/', '.'))
    found = os.path.realpath(getattr(module, '__file__', '') or '')
    if found != os.path.realpath(os.path.join(src, file)):
        raise OfficialModelError(f'importing {file} from --torch-src {src} found {found} instead: '
                                 f'another package of that name comes first on sys.path')
    return module


def official_model(name, src, image_size, drop_path=0.0):
    """(official model of our MODEL.NAME `name`, its repository), built from the checkout `src`."""
    src = os.path.abspath(src)
    adapter = _adapter(name, src)
    return adapter.build(_import_from(src, adapter.file), name, image_size, drop_path), adapter.repository


def measure_official(job):
    """Time the official model of `job` (our row's 'model', 'image size' and 'drop path', with the
    protocol's 'batch_size', 'warmup', 'iters', 'threads', 'mode', and 'torch_src'); returns its row."""
    os.environ['OMP_NUM_THREADS'] = str(job['threads'])
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(job['threads'])
    torch.manual_seed(0)
    model, repository = official_model(job['model'], job['torch_src'], job['image size'], job['drop path'])
    batch, size = job['batch_size'], job['image size']
    images = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, 1000, (batch,))
    if job['mode'] == 'eval':
        model.eval()

        def step():
            with torch.no_grad():
                return class_logits(model(images))
    else:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)

        def step():
            loss = F.cross_entropy(class_logits(model(images)), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            return loss

    base = rss_bytes()
    for _ in range(job['warmup']):
        out = step()
    if not bool(torch.isfinite(out).all()):
        raise FloatingPointError(f'official {job["model"]}: non-finite output in {job["mode"]} mode')
    del out
    start = time.perf_counter()
    for _ in range(job['iters']):
        step()
    seconds = time.perf_counter() - start
    peak = peak_rss_bytes()
    return {'model': job['model'], 'image size': size, 'batch': batch, 'mode': job['mode'],
            'img/s': batch * job['iters'] / seconds, 'peak MB': peak / 2 ** 20,
            'work MB': (peak - base) / 2 ** 20, 'threads': job['threads'], 'torch': torch.__version__,
            'repository': repository, 'params (M)': sum(p.numel() for p in model.parameters()) / 1e6}


if __name__ == '__main__':
    try:
        row = measure_official(json.loads(sys.argv[1]))
    except OfficialModelError as error:
        print(f'error: {error}', file=sys.stderr)
        sys.exit(2)
    print(json.dumps(row), flush=True)
