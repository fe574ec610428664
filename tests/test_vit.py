"""ViT: parameter counts, parity with the official code (.pth and Google .npz), position
embedding resizing and attention maps (the relevance-map tool: tests/test_explain.py).

Reference data (tests/fixtures/):
  vit_mini, vit_r50_mini   golden data made by running ViT-pytorch's VisionTransformer
                           (model.pth in its key layout, input.npy, logits.npy, meta.json)
  vit_npz_mini             random weights written in Google's .npz layout, loaded with
                           ViT-pytorch's own `load_from` and run (meta.json says how)
"""
import glob
import inspect
import json
import os
import warnings

import numpy as np
import paddle
import pytest

from conftest import FIXTURES, REPO
from engine.families import build_from_config, load_family
from port_weights import port as port_cli
from engine.weights import load_checkpoint
from port_weights.keymap import KeyMismatchError
from port_weights.port import max_abs_diff, port
from port_weights.vit import convert, is_google_layout
from resolved_configs import set_by_files

CONFIGS = os.path.join(REPO, 'image_classification', 'ViT', 'configs')
NPZ = os.path.join(FIXTURES, 'vit_npz_mini')

# Parameter counts of the official ViT-pytorch VisionTransformer (1000 classes), counted by
# building models/modeling.py on torch's 'meta' device.  The 224 figures of B/16, B/32,
# L/16, L/32 and R50-B/16 are also the ones in the golden README; Ti and S are ViT-pytorch's
# model with DeiT's sizes (192/3 heads, 384/6 heads, MLP 4x, 12 layers).
OFFICIAL_PARAMS = {
    'vit_tiny_patch16_224': 5_717_416, 'vit_tiny_patch16_384': 5_790_376,
    'vit_small_patch16_224': 22_050_664, 'vit_small_patch16_384': 22_196_584,
    'vit_base_patch16_224': 86_567_656, 'vit_base_patch16_384': 86_859_496,
    'vit_base_patch32_224': 88_224_232, 'vit_base_patch32_384': 88_297_192,
    'vit_large_patch16_224': 304_326_632, 'vit_large_patch16_384': 304_715_752,
    'vit_large_patch32_224': 306_535_400, 'vit_large_patch32_384': 306_632_680,
    'vit_huge_patch14_224': 632_045_800, 'vit_huge_patch14_384': 632_651_240,
    'vit_base_r50_patch16_224': 98_659_112, 'vit_base_r50_patch16_384': 98_950_952,
}


def _count(model):
    return sum(int(np.prod(p.shape)) for p in model.parameters())


def _quiet_port(src, cfg, opts=None):
    """port() with its log lines collected: (config, model, state, log lines)."""
    lines = []
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        config, model, state = port(src, cfg, opts=opts, log=lines.append)
    return config, model, state, lines


# ----------------------------------------------------------------- configs, sizes
def test_every_variant_has_a_config():
    names = {os.path.basename(p)[:-5] for p in glob.glob(os.path.join(CONFIGS, '*.yaml'))}
    assert set(OFFICIAL_PARAMS) <= names, sorted(set(OFFICIAL_PARAMS) - names)


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(CONFIGS, '*.yaml'))))
@pytest.mark.slow
def test_every_config_builds(path):
    with paddle.LazyGuard():
        config, model = build_from_config(path)
    assert config.MODEL.TYPE == 'ViT' and os.path.basename(path) == f'{config.MODEL.NAME}.yaml'


@pytest.mark.parametrize('name', sorted(OFFICIAL_PARAMS))
@pytest.mark.slow
def test_param_count_matches_official(name):
    # Built under LazyGuard: the same constructor, parameters declared but not allocated
    # (ViT-H/14 would otherwise take ~60 s and 2.7 GB); test_lazy_count_is_the_real_count
    # checks that this counts what a real build holds.
    with paddle.LazyGuard():
        config, model = build_from_config(os.path.join(CONFIGS, f'{name}.yaml'))
    assert config.MODEL.NAME == name
    assert _count(model) == OFFICIAL_PARAMS[name]


@pytest.mark.parametrize('cfg', [os.path.join(CONFIGS, 'vit_tiny_patch16_224.yaml'),
                                 os.path.join(FIXTURES, 'vit_r50_mini', 'vit_r50_mini.yaml')])
def test_lazy_count_is_the_real_count(cfg):
    with paddle.LazyGuard():
        _, lazy = build_from_config(cfg)
    _, real = build_from_config(cfg)
    assert _count(lazy) == _count(real)
    assert {k: tuple(v.shape) for k, v in lazy.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in real.state_dict().items()}


@pytest.mark.parametrize('name', sorted(OFFICIAL_PARAMS))
def test_config_states_eval_preprocessing_and_recipe(name):
    path = os.path.join(CONFIGS, f'{name}.yaml')
    raw = set_by_files(path)
    for key in ('IMAGE_SIZE', 'CROP_PCT', 'INTERPOLATION', 'MEAN', 'STD'):
        assert key in raw['DATA'], f'{path}: DATA.{key} not set'
    for key in ('BASE_LR', 'WEIGHT_DECAY', 'NUM_EPOCHS', 'WARMUP_EPOCHS'):
        assert key in raw['TRAIN'], f'{path}: TRAIN.{key} not set'
    config = load_family('ViT').get_config(path)
    assert str(config.DATA.IMAGE_SIZE) in config.MODEL.NAME
    if '_tiny_' in path or '_small_' in path:        # DeiT recipe from scratch
        assert config.TRAIN.OPTIMIZER.NAME == 'AdamW' and config.MODEL.DROPPATH == 0.1
        assert config.DATA.CROP_PCT == 0.875 and config.DATA.INTERPOLATION == 'bicubic'
        assert config.DATA.EVAL_RESIZE == 'shorter' and config.DATA.REPEATED_AUG == 3
    else:                                             # Google / ViT-pytorch fine-tuning
        assert config.TRAIN.OPTIMIZER.NAME == 'SGD' and config.TRAIN.GRAD_CLIP == 1.0
        assert config.DATA.MEAN == [0.5, 0.5, 0.5] and config.DATA.CROP_PCT == 1.0
        assert config.MODEL.ZERO_HEAD
        # evaluated on the whole image squashed to the input size, fine-tuned on 5-100% crops, no flip
        assert config.DATA.EVAL_RESIZE == 'squash' and config.DATA.INTERPOLATION == 'bilinear'
        assert tuple(config.TRAIN.CROP_SCALE) == (0.05, 1.0) and config.TRAIN.HFLIP_PROB == 0.0
        assert config.DATA.REPEATED_AUG == 0


def test_config_override_and_unknown_key():
    get_config = load_family('ViT').get_config
    cfg = os.path.join(CONFIGS, 'vit_base_patch16_224.yaml')
    config = get_config(cfg, opts=['MODEL.REPRESENTATION_SIZE', '768', 'MODEL.RESNET_WIDTH', '0.5'])
    assert config.MODEL.REPRESENTATION_SIZE == 768 and config.MODEL.RESNET_WIDTH == 0.5
    with pytest.raises(ValueError, match='MODEL.EMBED_DIMS'):
        get_config(cfg, opts=['MODEL.EMBED_DIMS', '8'])


# ------------------------------------------------------------- .pth parity (golden)
@pytest.mark.parametrize('name', ['vit_mini', 'vit_r50_mini'])
def test_pth_parity_with_official(name):
    folder = os.path.join(FIXTURES, name)
    with open(os.path.join(folder, 'meta.json'), encoding='utf-8') as f:
        meta = json.load(f)
    _, model, _, _ = _quiet_port(os.path.join(folder, 'model.pth'), os.path.join(folder, f'{name}.yaml'))
    assert _count(model) == meta['params']
    diff = max_abs_diff(model, np.load(os.path.join(folder, 'input.npy')),
                        np.load(os.path.join(folder, 'logits.npy')))
    assert diff <= 1e-4, diff


def test_port_cli_proves_a_conversion(tmp_path, capsys):
    folder = os.path.join(FIXTURES, 'vit_mini')
    args = ['--src', os.path.join(folder, 'model.pth'), '--config', os.path.join(folder, 'vit_mini.yaml'),
            '--dst', str(tmp_path / 'vit_mini.pdparams'),
            '--check-input', os.path.join(folder, 'input.npy'),
            '--check-logits', os.path.join(folder, 'logits.npy')]
    assert port_cli.main(args) == 0
    assert 'max_abs_diff=' in capsys.readouterr().out
    reloaded = paddle.load(str(tmp_path / 'vit_mini.pdparams'))
    assert 'blocks.1.attn.qkv.weight' in reloaded


def test_qkv_fusion_order():
    """The fused qkv weight holds query, key, value in that order, each transposed."""
    state = load_checkpoint(os.path.join(FIXTURES, 'vit_mini', 'model.pth'))
    config = load_family('ViT').get_config(os.path.join(FIXTURES, 'vit_mini', 'vit_mini.yaml'))
    ours = convert(state, config)
    qkv = ours['blocks.1.attn.qkv.weight']
    for i, name in enumerate(('query', 'key', 'value')):
        np.testing.assert_array_equal(qkv[:, 32 * i:32 * (i + 1)],
                                      state[f'transformer.encoder.layer.1.attn.{name}.weight'].T)


def test_convert_refuses_unknown_and_missing_keys():
    folder = os.path.join(FIXTURES, 'vit_mini')
    config = load_family('ViT').get_config(os.path.join(folder, 'vit_mini.yaml'))
    state = load_checkpoint(os.path.join(folder, 'model.pth'))
    with pytest.raises(KeyMismatchError, match='transformer.encoder.extra'):
        convert({**state, 'transformer.encoder.extra': np.zeros(3)}, config)
    wrong_depth = load_family('ViT').get_config(os.path.join(folder, 'vit_mini.yaml'),
                                                opts=['MODEL.DEPTH', '3'])
    from port_weights.keymap import check_state
    model = load_family('ViT').build_model(wrong_depth)
    with pytest.raises(KeyMismatchError, match='blocks.2'):
        check_state({k: v.shape for k, v in model.state_dict().items()}, convert(state, wrong_depth))


# --------------------------------------------------------- Google .npz parity
def _vit_module():
    """image_classification/ViT/vit.py as the family registry imports it."""
    return inspect.getmodule(load_family('ViT').build_model)


def _npz_meta():
    with open(os.path.join(NPZ, 'meta.json'), encoding='utf-8') as f:
        return json.load(f)


def test_google_layout_is_detected():
    assert is_google_layout(load_checkpoint(os.path.join(NPZ, 'vit_21k.npz')))
    assert not is_google_layout(load_checkpoint(os.path.join(FIXTURES, 'vit_mini', 'model.pth')))


@pytest.mark.parametrize('npz, cfg, size, logits', [
    ('vit_21k.npz', 'vit_npz_mini.yaml', 64, 'logits_vit_21k_64.npy'),
    ('vit_r50.npz', 'vit_npz_r50_mini.yaml', 64, 'logits_vit_r50_64.npy'),
])
def test_npz_parity_with_official_load_from(npz, cfg, size, logits):
    meta = _npz_meta()[npz]['runs'][logits]
    _, model, _, _ = _quiet_port(os.path.join(NPZ, npz), os.path.join(NPZ, cfg))
    assert _count(model) == meta['params']
    diff = max_abs_diff(model, np.load(os.path.join(NPZ, meta['input'])), np.load(os.path.join(NPZ, logits)))
    assert diff <= 1e-4, diff


def test_npz_21k_drops_pre_logits_with_a_warning():
    with pytest.warns(UserWarning, match='pre_logits/kernel'):
        port(os.path.join(NPZ, 'vit_21k.npz'), os.path.join(NPZ, 'vit_npz_mini.yaml'), log=lambda s: None)


def test_npz_resized_to_another_image_size_matches_official():
    """A checkpoint of a 4x4 grid ported for a 6x6 model: the position embedding is
    resized as ViT-pytorch's load_from does (scipy.ndimage.zoom, order 1), with a warning."""
    _, model, state, lines = _quiet_port(os.path.join(NPZ, 'vit_21k.npz'), os.path.join(NPZ, 'vit_npz_mini.yaml'),
                                         opts=['DATA.IMAGE_SIZE', '96'])
    warning = [s for s in lines if s.startswith('WARNING')]
    assert len(warning) == 1 and 'pos_embed' in warning[0] and '4x4 to a 6x6' in warning[0]
    assert 'zoom_linear' in warning[0]
    assert state['pos_embed'].shape == (1, 37, 32)
    diff = max_abs_diff(model, np.load(os.path.join(NPZ, 'input_96.npy')),
                        np.load(os.path.join(NPZ, 'logits_vit_21k_96.npy')))
    assert diff <= 1e-4, diff


def test_npz_pre_logits_kept_when_configured():
    """With MODEL.REPRESENTATION_SIZE set, Google's pre_logits is loaded and applied as
    tanh(x W + b) before the head (ViT-pytorch has no such layer to compare with)."""
    raw = load_checkpoint(os.path.join(NPZ, 'vit_21k.npz'))
    _, model, state, _ = _quiet_port(os.path.join(NPZ, 'vit_21k.npz'), os.path.join(NPZ, 'vit_npz_mini.yaml'),
                                     opts=['MODEL.REPRESENTATION_SIZE', '32'])
    np.testing.assert_array_equal(state['pre_logits.weight'], raw['pre_logits/kernel'])
    x = paddle.to_tensor(np.load(os.path.join(NPZ, 'input_64.npy')))
    with paddle.no_grad():
        feats = model.forward_features(x).numpy().astype(np.float64)
        logits = model(x).numpy()
    expect = np.tanh(feats @ raw['pre_logits/kernel'] + raw['pre_logits/bias']) @ raw['head/kernel'] \
        + raw['head/bias']
    np.testing.assert_allclose(logits, expect, atol=1e-5)
    assert np.abs(logits - np.load(os.path.join(NPZ, 'logits_vit_21k_64.npy'))).max() > 1e-2


# ---------------------------------------------------- position-embedding resizing
def test_pth_ported_for_another_image_size_warns_and_runs():
    folder = os.path.join(FIXTURES, 'vit_mini')
    for opts, grid in ((['DATA.IMAGE_SIZE', '32'], '2x2'), (['DATA.IMAGE_SIZE', '96', 'MODEL.POS_EMBED_RESIZE',
                                                              'bicubic'], '6x6')):
        _, model, state, lines = _quiet_port(os.path.join(folder, 'model.pth'), os.path.join(folder, 'vit_mini.yaml'),
                                             opts=opts)
        assert any(s.startswith('WARNING') and f'4x4 to a {grid}' in s for s in lines), lines
        size = int(opts[1])
        with paddle.no_grad():
            assert model(paddle.randn([1, 3, size, size])).shape == [1, 10]


def test_adapt_a_384_state_to_a_224_model():
    """-pretrained with ViT-Ti/16 384 weights for the 224 config: pos_embed 24x24 -> 14x14."""
    _, big = build_from_config(os.path.join(CONFIGS, 'vit_tiny_patch16_384.yaml'))
    _, small = build_from_config(os.path.join(CONFIGS, 'vit_tiny_patch16_224.yaml'))
    state = {k: v.numpy() for k, v in big.state_dict().items()}
    messages = small.adapt_state_dict(state)
    assert len(messages) == 1 and 'pos_embed resized from a 24x24 to a 14x14 grid' in messages[0]
    assert {k: tuple(v.shape) for k, v in state.items()} == \
        {k: tuple(v.shape) for k, v in small.state_dict().items()}
    assert small.adapt_state_dict(state) == []          # nothing left to adapt


def test_bicubic_resize_is_the_shared_one():
    from engine.layers import resize_pos_embed as shared
    resize_pos_embed = _vit_module().resize_pos_embed
    pos = np.random.default_rng(0).normal(size=(1, 1 + 24 * 24, 8)).astype(np.float32)
    np.testing.assert_array_equal(resize_pos_embed(pos, (14, 14), 'bicubic'), shared(pos, (14, 14)))
    assert resize_pos_embed(pos, (14, 14))[0, 0].tolist() == pos[0, 0].tolist()   # class token kept


def test_zoom_linear_known_values():
    zoom_linear = _vit_module().zoom_linear
    grid = np.array([[0., 2.], [4., 6.]])[..., None]
    np.testing.assert_allclose(zoom_linear(grid, (3, 3))[..., 0], [[0, 1, 2], [2, 3, 4], [4, 5, 6]])
    np.testing.assert_allclose(zoom_linear(zoom_linear(grid, (3, 3)), (2, 2)), grid)


@pytest.mark.parametrize('old, new', [(4, 6), (24, 14), (14, 24), (7, 12), (12, 12), (2, 1)])
def test_zoom_linear_matches_scipy(old, new):
    ndimage = pytest.importorskip('scipy.ndimage')
    zoom_linear = _vit_module().zoom_linear
    grid = np.random.default_rng(old * new).normal(size=(old, old, 5)).astype(np.float32)
    ref = ndimage.zoom(grid, (new / old, new / old, 1), order=1)
    np.testing.assert_allclose(zoom_linear(grid, (new, new)), ref, atol=1e-6)


# --------------------------------------------------------------- model behaviour
def _mini(opts=None, name='vit_mini'):
    return build_from_config(os.path.join(FIXTURES, name, f'{name}.yaml'), opts)


def test_no_weight_decay_and_classifier_names_exist():
    _, model = _mini()
    names = {n for n, _ in model.named_parameters()}
    assert model.no_weight_decay() <= names
    assert any(n.startswith(model.CLASSIFIER[0] + '.') for n in names)


def test_official_initialisation():
    _, model = _mini(['MODEL.EMBED_DIM', '64', 'MODEL.MLP_DIM', '256'])
    assert np.abs(model.pos_embed.numpy()).max() == 0 and np.abs(model.cls_token.numpy()).max() == 0
    fc1 = model.blocks[0].mlp.fc1
    bound = np.sqrt(6 / (64 + 256))                       # Xavier uniform
    w = fc1.weight.numpy()
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert np.abs(fc1.bias.numpy()).max() < 1e-5          # N(0, 1e-6)
    qkv = model.blocks[0].attn.qkv.weight.numpy()         # torch default: U(+-1/sqrt(fan_in))
    assert np.abs(qkv).max() <= 1 / 8 and np.abs(qkv).max() > 0.9 / 8


def test_zero_head():
    _, model = _mini(['MODEL.ZERO_HEAD', 'True'])
    assert not model.head.weight.numpy().any() and not model.head.bias.numpy().any()
    _, model = _mini()
    assert model.head.weight.numpy().any()


@pytest.mark.parametrize('name', ['vit_mini', 'vit_r50_mini'])
def test_train_step_reaches_every_parameter(name):
    paddle.seed(0)
    _, model = _mini(['MODEL.DROPPATH', '0.1'], name=name)
    model.train()
    loss = paddle.nn.functional.cross_entropy(model(paddle.randn([2, 3, 64, 64])), paddle.to_tensor([1, 2]))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_forward_attention_is_opt_in_and_exact():
    paddle.seed(0)
    _, model = _mini()
    model.eval()
    x = paddle.randn([2, 3, 64, 64])
    with paddle.no_grad():
        plain = model(x).numpy()
        logits, maps = model.forward_attention(x)
    np.testing.assert_allclose(logits.numpy(), plain, atol=1e-5)
    assert len(maps) == 2 and maps[0].shape == [2, 2, 17, 17]
    np.testing.assert_allclose(maps[1].numpy().sum(-1), 1, atol=1e-5)
    assert all(not b.attn.attn_drop._forward_post_hooks for b in model.blocks)   # nothing left hooked
