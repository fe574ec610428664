"""Convert an official checkpoint into a `.pdparams` for one of our configs, and prove it.

    python port_weights/port.py --src pit_s_809.pth \\
        --config image_classification/PiT/configs/pit_s_224.yaml --dst pit_s_224.pdparams \\
        [--ema] [--check-input IN.npy --check-logits REF.npy --atol 1e-4] [-opts KEY VALUE ...]

The config's MODEL.TYPE picks the family; `port_weights/<family>.py` holds its
key map (`convert(state, config)`).  The result must fill every parameter of
the model with the right shape, or nothing is written.  With `--check-input`
and `--check-logits` the ported model runs in eval mode and the line
`max_abs_diff=<value>` is printed; the exit status is 1 above `--atol`.

A training checkpoint can hold two sets of weights: the model's and their
exponential moving average.  Without `--ema` the model's are taken (`model`,
`state_dict`); with `--ema` the average's: `state_dict_ema` (timm's
CheckpointSaver, hence TLT's and SP-ViT's `model_best.pth.tar`, whose best
accuracy is often the EMA's) or `model_ema` (DeiT's and PerViT's main.py).
Asked for an EMA that the file does not hold, it stops and lists what it holds
(timm would silently fall back to the non-EMA weights).
"""
import argparse
import os
import sys

import engine

if __name__ == '__main__':
    engine.prepare_process()   # run as a program: before paddle is imported

import numpy as np  # noqa: E402

from engine.errors import UserError  # noqa: E402
from engine.families import family_for_config, load_family  # noqa: E402
from port_weights.checkpoint_io import load_checkpoint, load_torch, unwrap_state_dict  # noqa: E402
from port_weights.keymap import check_state  # noqa: E402


def porter_for(family_name):
    """The `port_weights.<porter>` key map registered for a MODEL.TYPE in engine/families.py."""
    return load_family(family_name).port_module()


# where training scripts store the EMA weights beside the model's, in the order looked for
EMA_KEYS = ('state_dict_ema', 'model_ema')


class MissingEMAError(UserError, KeyError):
    """`--ema` was asked for and the checkpoint holds no EMA weights."""

    def __str__(self):   # KeyError would quote the message
        return str(self.args[0])


def _describe_top_level(obj):
    if not isinstance(obj, dict):
        return f'a {type(obj).__name__}, not a dict'
    keys = [str(k) for k in obj]
    if obj and all(isinstance(v, np.ndarray) for v in obj.values()):
        shown = ', '.join(keys[:5]) + (', ...' if len(keys) > 5 else '')
        return f'a bare state dict of {len(keys)} tensors ({shown})'
    return 'top-level keys: ' + ', '.join(sorted(keys))


def load_official(src, ema=False):
    """`{name: array}` of the official checkpoint `src`; with `ema`, its EMA weights."""
    if not ema:
        return load_checkpoint(src)
    ext = os.path.splitext(src)[1].lower()
    if ext in ('.safetensors', '.npz', '.pdparams'):
        raise MissingEMAError(f'{src}: --ema takes the EMA weights of a PyTorch training checkpoint '
                              f'(keys {" or ".join(EMA_KEYS)}); a {ext} file holds one set of weights: '
                              f'port it without --ema')
    if not os.path.isfile(src):
        raise FileNotFoundError(f'checkpoint not found: {src}')
    obj = load_torch(src)
    key = next((k for k in EMA_KEYS if isinstance(obj, dict) and isinstance(obj.get(k), dict)), None)
    if key is None:
        raise MissingEMAError(f'{src}: --ema asked for EMA weights, but the checkpoint has none '
                              f'(looked for {" or ".join(EMA_KEYS)}); it is {_describe_top_level(obj)}. '
                              f'Port it without --ema to take the model weights.')
    return unwrap_state_dict(obj[key], source=f'{src}[{key!r}]')


def port(src, cfg_file, opts=None, log=print, ema=False):
    """(config, model, state): the model built from `cfg_file` holding the weights of `src`
    (its EMA weights with `ema`)."""
    import paddle
    family = family_for_config(cfg_file)
    config = family.get_config(cfg_file, opts=opts)
    model = family.build_model(config)
    model.eval()
    official = load_official(src, ema)
    state = porter_for(family.name).convert(official, config)
    if hasattr(model, 'adapt_state_dict'):   # e.g. a 384 checkpoint for a 224 config
        for message in model.adapt_state_dict(state):
            log(f'WARNING: {message}')
    expected = {k: v.shape for k, v in model.state_dict().items()}
    check_state(expected, state, source=src)
    model.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
    log(f'{src}{" (EMA weights)" if ema else ""}: {len(official)} official tensors -> {len(state)} {family.name} tensors '
        f'({sum(int(np.prod(v.shape)) for v in state.values()):,} values) for {config.MODEL.NAME}')
    return config, model, state


def max_abs_diff(model, inputs, reference):
    """Largest |model(inputs) - reference| with the model in eval mode."""
    import paddle
    model.eval()
    with paddle.no_grad():
        out = model(paddle.to_tensor(inputs.astype('float32')))
    out = out.numpy()
    if out.shape != reference.shape:
        raise ValueError(f'output shape {out.shape} differs from reference {reference.shape}')
    return float(np.abs(out - reference).max())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--src', required=True, help='official checkpoint: .pth/.pt/.bin, .safetensors or .npz')
    parser.add_argument('--config', required=True, help='our YAML config of the target variant')
    parser.add_argument('--dst', required=True, help='output .pdparams')
    parser.add_argument('--check-input', help='N x 3 x S x S float32 .npy to run the ported model on')
    parser.add_argument('--check-logits', help='the official model\'s logits on --check-input (.npy)')
    parser.add_argument('--atol', type=float, default=1e-4)
    parser.add_argument('--ema', action='store_true',
                        help='take the EMA weights of a checkpoint that holds both (state_dict_ema / model_ema)')
    parser.add_argument('-opts', nargs='+', default=None, help='config overrides: KEY VALUE ...')
    args = parser.parse_args(argv)
    if bool(args.check_input) != bool(args.check_logits):
        parser.error('--check-input and --check-logits go together')

    import paddle
    try:
        _config, model, _state = port(args.src, args.config, opts=args.opts, ema=args.ema)
    except MissingEMAError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    os.makedirs(os.path.dirname(os.path.abspath(args.dst)), exist_ok=True)
    paddle.save(model.state_dict(), args.dst)
    print(f'saved {args.dst}')
    if args.check_input:
        diff = max_abs_diff(model, np.load(args.check_input), np.load(args.check_logits))
        print(f'max_abs_diff={diff:.3e}')
        if diff > args.atol:
            print(f'FAILED: max_abs_diff {diff:.3e} > atol {args.atol:g}', file=sys.stderr)
            return 1
    return 0


if __name__ == '__main__':
    from engine.cpu.settings import configure as configure_cpu
    from engine.errors import cli
    configure_cpu()   # the comparison runs both models: threads, allocator, Paddle flags of a CPU run
    sys.exit(cli(main))
