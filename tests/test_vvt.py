"""VVT: parity with the official model, Vicinity Attention against its N x N definition,
parameter counts of the published variants, configs, port errors, to_static."""
import glob
import importlib
import json
import math
import os

import numpy as np
import paddle
import pytest

from conftest import FIXTURES, REPO
from engine.families import build_from_config, load_family
from port_weights import vvt as vvt_port
from engine.weights import load_checkpoint
from port_weights.keymap import KeyMismatchError
from port_weights.port import max_abs_diff, port

MINI = os.path.join(FIXTURES, 'vvt_mini')
MINI_CFG = os.path.join(MINI, 'vvt_mini.yaml')
CONFIGS = os.path.join(REPO, 'image_classification', 'VVT', 'configs')
vvt = load_family('VVT')
vvt_module = importlib.import_module(vvt.build_model.__module__)   # VVT/vvt.py

# official parameter counts (1000 classes), from running the official code
OFFICIAL_PARAMS = {'tiny': 12_882_440, 'small': 25_492_264, 'medium': 47_907_304, 'large': 61_848_520}


def n_params(model):
    return sum(int(np.prod(p.shape)) for p in model.parameters())


@pytest.fixture(scope='module')
def ported_mini():
    return port(os.path.join(MINI, 'model.pth'), MINI_CFG, log=lambda *_: None)


def test_golden_mini_matches_official_logits(ported_mini):
    _config, model, _state = ported_mini
    meta = json.load(open(os.path.join(MINI, 'meta.json')))
    assert n_params(model) == meta['params']
    diff = max_abs_diff(model, np.load(os.path.join(MINI, 'input.npy')), np.load(os.path.join(MINI, 'logits.npy')))
    assert diff <= 1e-4, diff


@pytest.mark.parametrize('variant', sorted(OFFICIAL_PARAMS))
@pytest.mark.slow
def test_param_counts_equal_official(variant):
    for size in (224, 384):
        _config, model = build_from_config(os.path.join(CONFIGS, f'vvt_{variant}_{size}.yaml'))
        assert n_params(model) == OFFICIAL_PARAMS[variant], (variant, size)
        if size == 224:
            shapes = {k: v.shape for k, v in model.state_dict().items()}
        else:   # nothing depends on the image size: 224 weights load at 384 as they are
            assert {k: v.shape for k, v in model.state_dict().items()} == shapes


def _dense_vicinity(q, k, v, height, width):
    """The definition, with the N x N matrix: out_i = sum_j w_ij v_j / sum_j w_ij,
    w_ij = q_i.k_j * (cos(a_i - a_j) + cos(b_i - b_j))."""
    rows, cols = np.divmod(np.arange(height * width), width)
    a, b = np.pi / 2 * rows / height, np.pi / 2 * cols / width
    locality = np.cos(a[:, None] - a[None, :]) + np.cos(b[:, None] - b[None, :])
    w = np.einsum('bhid,bhjd->bhij', q, k) * locality
    return np.einsum('bhij,bhjd->bhid', w, v) / (w.sum(-1, keepdims=True) + 1e-4)


@pytest.mark.parametrize('height,width', [(5, 7), (6, 6)])
def test_vicinity_attention_equals_manhattan_definition(height, width):
    rng = np.random.default_rng(0)
    q, k, v = (rng.uniform(.5, 1.5, (2, 3, height * width, 4)).astype('float32') for _ in range(3))
    ours = vvt_module.vicinity_attention(*(paddle.to_tensor(t) for t in (q, k, v)),
                                         vvt_module.vicinity_phases(height, width)).numpy()
    ref = _dense_vicinity(q.astype('float64'), k.astype('float64'), v.astype('float64'), height, width)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
    # and the locality matters: plain linear attention gives something else
    plain = np.einsum('bhij,bhjd->bhid', np.einsum('bhid,bhjd->bhij', q, k), v)
    plain /= np.einsum('bhid,bhjd->bhij', q, k).sum(-1, keepdims=True)
    assert np.abs(plain - ours).max() > 1e-3


def test_other_image_sizes_run(ported_mini):
    """Any size works (odd grids too): the phases are computed from the grid, nothing is stored."""
    _config, model, _state = ported_mini
    model.eval()
    with paddle.no_grad():
        for size in (72, 96):
            out = model(paddle.randn([1, 3, size, size]))
            assert out.shape == [1, 10] and bool(paddle.isfinite(out).all())


@pytest.mark.slow
def test_to_static_matches_dygraph_eval_and_train(ported_mini):
    config, _model, state = ported_mini
    x = paddle.to_tensor(np.load(os.path.join(MINI, 'input.npy')))
    y = paddle.to_tensor([1, 7])
    results = []
    for static in (False, True):
        model = vvt.build_model(config)
        model.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
        net = paddle.jit.to_static(model, full_graph=True, backend=None) if static else model
        model.eval()
        with paddle.no_grad():
            logits = net(x).numpy()
        model.train()
        loss = paddle.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        grad = model.stages[0].blocks[0].attn.qkv.weight.grad.numpy()
        results.append((logits, loss.item(), grad))
    (l0, loss0, g0), (l1, loss1, g1) = results
    np.testing.assert_allclose(l1, l0, atol=1e-5)
    assert abs(loss1 - loss0) < 1e-5
    assert np.abs(g0).max() > 0
    np.testing.assert_allclose(g1, g0, atol=1e-5, rtol=1e-4)


def test_configs_follow_official_recipe():
    files = sorted(glob.glob(os.path.join(CONFIGS, 'vvt_*.yaml')))
    assert len(files) == 8
    for path in files:
        config = vvt.get_config(path)
        variant = os.path.basename(path).split('_')[1]
        assert config.MODEL.TYPE == 'VVT'
        assert config.DATA.IMAGE_SIZE == int(path[-8:-5])
        # official configs/vvt/vvt_<variant>.py: drop_path, clip_grad; main.py: lr, wd, warmup
        assert config.MODEL.DROPPATH == (0.1 if variant == 'tiny' else 0.3)
        assert config.TRAIN.GRAD_CLIP == (None if variant == 'tiny' else 1.0)
        assert (config.TRAIN.BASE_LR, config.TRAIN.WEIGHT_DECAY, config.TRAIN.WARMUP_EPOCHS) == (5e-4, 0.05, 5)
        assert config.TRAIN.OPTIMIZER.NAME == 'AdamW'
        # official eval: Resize(int(256 / 224 * size), bicubic) + CenterCrop(size), ImageNet mean/std
        assert int(config.DATA.IMAGE_SIZE / config.DATA.CROP_PCT) == int(256 / 224 * config.DATA.IMAGE_SIZE)
        assert config.DATA.INTERPOLATION == 'bicubic'
        assert list(config.DATA.MEAN) == [0.485, 0.456, 0.406] and list(config.DATA.STD) == [0.229, 0.224, 0.225]


@pytest.mark.slow
def test_drop_path_rises_linearly_to_the_configured_rate():
    config = vvt.get_config(os.path.join(CONFIGS, 'vvt_small_224.yaml'))
    model = vvt.build_model(config)
    rates = [getattr(b.drop_path, 'drop_prob', 0.) for s in model.stages for b in s.blocks]
    assert len(rates) == 18
    np.testing.assert_allclose(rates, np.linspace(0, 0.3, 18), atol=1e-7)


def test_port_refuses_unknown_and_missing_keys():
    state = load_checkpoint(os.path.join(MINI, 'model.pth'))
    extra = dict(state, **{'block1.0.attn.sr.weight': np.zeros((16, 16, 2, 2), 'float32')})
    with pytest.raises(KeyMismatchError, match='sr.weight'):
        vvt_port.convert(extra)
    missing = {k: v for k, v in state.items() if k != 'block3.1.attn.k_proj.bias'}
    with pytest.raises(KeyMismatchError, match='k_proj.bias'):
        vvt_port.convert(missing)


def test_fused_qkv_order_is_q_k_v():
    state = load_checkpoint(os.path.join(MINI, 'model.pth'))
    ours = vvt_port.convert(state)
    w = ours['stages.1.blocks.0.attn.qkv.weight']          # [in, 3 * reduced]
    r = w.shape[1] // 3
    np.testing.assert_array_equal(w[:, :r], state['block2.0.attn.q_proj.weight'].T)
    np.testing.assert_array_equal(w[:, 2 * r:], state['block2.0.attn.v_proj.weight'].T)
    assert math.isclose(float(ours['stages.3.norm.weight'][0]), float(state['norm4.weight'][0]))


def test_addmm_linear_equals_linear_with_gradients():
    paddle.seed(1)
    ours = vvt_module.Linear(6, 5)
    ref = paddle.nn.Linear(6, 5)
    ref.weight.set_value(ours.weight)
    ref.bias.set_value(ours.bias)
    x = paddle.randn([2, 3, 6])
    for layer in (ours, ref):
        layer(x).pow(2).sum().backward()
    np.testing.assert_allclose(ours(x).numpy(), ref(x).numpy(), atol=1e-6)
    np.testing.assert_allclose(ours.weight.grad.numpy(), ref.weight.grad.numpy(), atol=1e-5)
    np.testing.assert_allclose(ours.bias.grad.numpy(), ref.bias.grad.numpy(), atol=1e-5)


def test_layer_norm_epsilons_follow_official():
    """Official: blocks and stage norms use norm_layer (eps 1e-6), patch embeddings nn.LayerNorm (1e-5).
    The golden logits are barely sensitive to it (1e-6), trained weights can be."""
    model = vvt.build_model(vvt.get_config(MINI_CFG))
    stage = model.stages[2]
    assert stage.patch_embed.norm._epsilon == 1e-5
    assert stage.norm._epsilon == 1e-6
    assert {b.norm1._epsilon for b in stage.blocks} == {b.norm2._epsilon for b in stage.blocks} == {1e-6}
