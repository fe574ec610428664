"""PerViT: parity with the official code, parameter counts, the eval-mode cache of the
position-based attention, the recipe configs, and the attention pictures."""
import importlib.util
import os
import types

import numpy as np
import paddle
import pytest
from PIL import Image

from conftest import FIXTURES, REPO
from engine.families import build_from_config, load_family
from port_weights.port import max_abs_diff, port

pytestmark = pytest.mark.filterwarnings('ignore:When training, we now always track')

FIX = os.path.join(FIXTURES, 'pervit_mini')
MINI_CFG = os.path.join(FIX, 'pervit_mini.yaml')
FAMILY_DIR = os.path.join(REPO, 'image_classification', 'PerViT')
CONFIGS = os.path.join(FAMILY_DIR, 'configs')


def _load(name):
    """A module of the PerViT folder, imported by path under a unique name."""
    path = os.path.join(FAMILY_DIR, f'{name}.py')
    spec = importlib.util.spec_from_file_location(f'_test_pervit_{name}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


visualize = _load('visualize')
hooks = _load('hooks')


def _trainable(model):
    return sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient)


@pytest.fixture(scope='module')
def ported():
    """(model, input) with the official mini checkpoint whose position encoding is random."""
    _config, model, _state = port(os.path.join(FIX, 'model_random_ppe.pth'), MINI_CFG, log=lambda *a: None)
    return model, np.load(os.path.join(FIX, 'input.npy'))


def _fresh_mini(**opts):
    flat = [str(x) for kv in opts.items() for x in kv]
    family = load_family('PerViT')
    config = family.get_config(MINI_CFG, opts=flat)
    return config, family.build_model(config)


def _logits(model, x):
    with paddle.no_grad():
        return model(paddle.to_tensor(x)).numpy()


# ---- parity with the official implementation -------------------------------------------------
@pytest.mark.slow
def test_param_counts_equal_official():
    official = {'tiny': 7_591_000, 'small': 21_317_672, 'medium': 43_723_936}   # golden README
    for name, count in official.items():
        _config, model = build_from_config(os.path.join(CONFIGS, f'pervit_{name}_224.yaml'))
        assert _trainable(model) == count, name


def test_golden_logits():
    _config, model, _state = port(os.path.join(FIX, 'model.pth'), MINI_CFG, log=lambda *a: None)
    x, reference = np.load(os.path.join(FIX, 'input.npy')), np.load(os.path.join(FIX, 'logits.npy'))
    diff = max_abs_diff(model, x, reference)
    assert diff <= 1e-4


def test_random_position_encoding_logits_and_phi(ported):
    """The golden checkpoint keeps the constant PPE init; this one proves kernel and axis order."""
    model, x = ported
    model.eval()
    assert np.abs(_logits(model, x) - np.load(os.path.join(FIX, 'logits_random_ppe.npy'))).max() <= 1e-4
    with paddle.no_grad():
        phi = model.position_attention()
    ref = np.load(os.path.join(FIX, 'phi_random_ppe.npy'))       # blocks 0 and 11, [2, heads, N, N]
    assert np.abs(phi[0].numpy()[0] - ref[0]).max() <= 1e-4
    assert np.abs(phi[11].numpy()[0] - ref[1]).max() <= 1e-4
    assert not np.allclose(ref[0], ref[0].transpose(0, 2, 1), atol=1e-3)   # query/key order matters


def test_other_input_size_matches_official_grid(ported):
    """160 px -> a 10 x 10 grid; reference: the official class with num_patches = 100."""
    model, x = ported
    model.eval()
    small = np.ascontiguousarray(x[:, :, 32:192, 32:192])
    reference = np.load(os.path.join(FIX, 'logits_random_ppe_160.npy'))
    assert np.abs(_logits(model, small) - reference).max() <= 1e-4
    with pytest.raises(ValueError, match=r'square token grid.*14 x 10 grid.*224 x 224'):
        _logits(model, np.ascontiguousarray(x[:, :, :, :160]))


# ---- the eval-mode cache of the position-based attention ---------------------------------------
def test_cache_computed_once_in_eval_and_always_in_training(monkeypatch):
    _config, model = _fresh_mini()
    calls = []
    original = model.position_attention
    monkeypatch.setattr(model, 'position_attention', lambda grid=None: calls.append(grid) or original(grid))
    x = paddle.randn([1, 3, 64, 64])
    model.eval()
    with paddle.no_grad():
        model(x), model(x), model(x)
    assert len(calls) == 1
    model.train()
    model(x).sum().backward()
    model(x)
    assert len(calls) == 3
    ppe = model.blocks[0].attn.ppe
    for p in (model.rpe_proj.weight, ppe.conv1.weight, ppe.gn2.bias):
        assert p.grad is not None and float(paddle.abs(p.grad).sum().item()) > 0


def _perturb_position_encoding(model, tensors):
    for name, t in tensors.items():
        if '.ppe.' in name or name.startswith('rpe_proj'):
            t.set_value(t + 0.3 * paddle.randn(t.shape))


def test_cache_follows_weight_changes():
    """Every way weights change must reach the next eval forward."""
    _config, model, _state = port(os.path.join(FIX, 'model_random_ppe.pth'), MINI_CFG, log=lambda *a: None)
    x = np.random.RandomState(0).randn(1, 3, 96, 96).astype('float32')     # a 6 x 6 grid: quick
    model.eval()
    reference_model = _fresh_mini()[1]
    reference_model.eval()

    def check():
        ours = _logits(model, x)                      # before state_dict(), which resets the cache
        reference_model.set_state_dict(model.state_dict())
        assert np.abs(ours - _logits(reference_model, x)).max() < 2e-6

    base = _logits(model, x)
    # 1) in place through state_dict() (how the EMA updates its copy), staying in eval mode
    _perturb_position_encoding(model, model.state_dict())
    assert np.abs(_logits(model, x) - base).max() > 2e-5   # a stale cache fails check()
    check()
    # 2) set_state_dict (each step starts with a warm cache: check() ends with state_dict())
    _logits(model, x)
    state = {k: v.numpy() + (0.2 if k.endswith('gn2.bias') else 0) for k, v in model.state_dict().items()}
    model.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
    check()
    # 3) a training step while wrapped (wrapper.train()/eval() do not call PerViT's methods)
    _logits(model, x)
    wrapper = paddle.nn.Sequential(model)
    wrapper.train()
    opt = paddle.optimizer.SGD(learning_rate=1.0, parameters=model.parameters())
    wrapper(paddle.to_tensor(x)).sum().backward()
    opt.step()
    opt.clear_grad()
    wrapper.eval()
    check()
    # 4) anything else, then the explicit reset
    _logits(model, x)
    _perturb_position_encoding(model, {n: p for n, p in model.named_parameters()})
    model.reset_position_attention()
    check()


@pytest.mark.slow
def test_to_static_keeps_nothing_from_the_trace(ported):
    """A tensor made while tracing belongs to that program: keeping one crashed the next trace."""
    from paddle.static import InputSpec
    model, x = ported
    model.eval()
    small = np.ascontiguousarray(x[:, :, :80, :80])     # a 5 x 5 grid, not seen before
    static = paddle.jit.to_static(model.forward, input_spec=[InputSpec([2, 3, 80, 80], 'float32')],
                                  full_graph=True)
    out = static(paddle.to_tensor(small)).numpy()
    assert 5 not in model._distance_patches and 5 not in model._position_cache
    np.testing.assert_allclose(out, _logits(model, small), atol=1e-5)


# ---- architecture details ------------------------------------------------------------------------
def test_peripheral_initialisation_spreads_local_to_global():
    _config, model = _fresh_mini()
    depth = len(model.blocks)
    gn2_bias = [blk.attn.ppe.gn2.bias.numpy() for blk in model.blocks]
    gn2_weight = [blk.attn.ppe.gn2.weight.numpy() for blk in model.blocks]
    np.testing.assert_allclose(np.stack(gn2_bias)[:, 0], np.linspace(-5, 4, depth), rtol=1e-6)
    np.testing.assert_allclose(np.stack(gn2_weight)[:, 0], np.linspace(3, 0.01, depth), rtol=1e-6)
    with paddle.no_grad():
        phi = np.stack([p[0].numpy() for p in model.position_attention()])
    score = visualize.nonlocality(phi.mean(axis=1), visualize.token_distances(14))
    assert np.all(np.diff(score) > 0), score


def test_forward_attention_is_the_forward(ported):
    model, x = ported
    model.eval()
    with paddle.no_grad():
        logits, attentions = model.forward_attention(paddle.to_tensor(x))
    np.testing.assert_allclose(logits.numpy(), _logits(model, x), atol=1e-6)
    assert len(attentions) == 12 and attentions[0].shape == [2, 2, 196, 196]
    np.testing.assert_allclose(attentions[5].sum(axis=-1).numpy(), 1.0, atol=1e-5)


def test_attention_dropout_is_refused():
    with pytest.raises(ValueError, match='attention dropout'):
        _fresh_mini(**{'MODEL.ATTENTION_DROPOUT': 0.1})


def test_configs_carry_the_official_recipe():
    # seed README: --weight_decay {0.03, 0.05, 0.05} --warmup_epochs {5, 5, 20} --drop_path {0.0, 0.1, 0.2},
    # --batch-size 128 on 8 GPUs; main.py: lr 5e-4 x batch / 512, 300 epochs; datasets.py: 256 -> 224 bicubic
    family = load_family('PerViT')
    for name, wd, warmup, dpr in [('tiny', 0.03, 5, 0.0), ('small', 0.05, 5, 0.1), ('medium', 0.05, 20, 0.2)]:
        c = family.get_config(os.path.join(CONFIGS, f'pervit_{name}_224.yaml'))
        assert (c.TRAIN.WEIGHT_DECAY, c.TRAIN.WARMUP_EPOCHS, c.MODEL.DROPPATH) == (wd, warmup, dpr), name
        assert (c.DATA.BATCH_SIZE, c.TRAIN.BASE_LR, c.TRAIN.LINEAR_SCALED_LR, c.TRAIN.NUM_EPOCHS) == \
            (128, 5e-4, 512, 300)
        assert int(c.DATA.IMAGE_SIZE / c.DATA.CROP_PCT) == 256 and c.DATA.INTERPOLATION == 'bicubic'


# ---- pictures ------------------------------------------------------------------------------------
def test_nonlocality_by_hand():
    d = visualize.token_distances(3)                    # 3 x 3 grid on [-1, 1]: neighbours 1 apart
    phi = np.zeros((2, 9, 9))
    phi[0] = np.eye(9)                                  # head 0: every query sees itself only
    phi[1, :, 8] = 1.0                                  # head 1: every query sees the bottom-right token
    expected = d[:, 8].sum() / 81                       # mean over 81 pairs of |p_q - p_8|
    np.testing.assert_allclose(visualize.nonlocality(phi, d), [0.0, expected])
    order, score = visualize.sort_heads_by_nonlocality(phi[::-1], d)
    assert order.tolist() == [1, 0] and score[0] == 0.0


def _known_attention_model():
    """Mini model whose Phi_p is constant per head: sigmoid(bias), ranked by hand."""
    _config, model = _fresh_mini()
    biases = {0: [2.0, -3.0], 4: [-1.0, 1.0]}       # layer index -> gn2 bias per head
    for i, blk in enumerate(model.blocks):
        blk.attn.ppe.gn2.weight.set_value(paddle.zeros([2]))
        blk.attn.ppe.gn2.bias.set_value(paddle.to_tensor(biases.get(i, [0.0, 0.5]), dtype='float32'))
    model.eval()
    return model


def test_position_attention_pictures_sorted_by_nonlocality(tmp_path):
    model = _known_attention_model()
    paths = visualize.save_position_attention(model, str(tmp_path), query=(2, 3))
    grid = Image.open(paths[0])
    assert grid.size[0] > 12 * 14 * 2 and grid.size[1] > 2 * 14 * 2
    tiles = sorted(os.listdir(tmp_path / 'position_attention'))
    assert len(tiles) == 24
    # layer 1: head 1 (sigmoid(-3)) is the more local, layer 5: head 0 (sigmoid(-1))
    assert 'L01_rank0_head1.png' in tiles and 'L01_rank1_head0.png' in tiles
    assert 'L05_rank0_head0.png' in tiles and 'L05_rank1_head1.png' in tiles
    # constant maps are drawn on the absolute scale: the local head is dark, the global one bright
    dark = np.asarray(Image.open(tmp_path / 'position_attention' / 'L01_rank0_head1.png'))[2, 2].astype(int)
    bright = np.asarray(Image.open(tmp_path / 'position_attention' / 'L01_rank1_head0.png'))[2, 2].astype(int)
    assert dark.sum() < bright.sum()
    # the query token is boxed in red
    scale = max(2, 84 // 14)
    tile = np.asarray(Image.open(tmp_path / 'position_attention' / 'L01_rank0_head1.png'))
    edge = tile[2 * scale, 3 * scale]
    assert edge.tolist() == [255, 0, 0]
    with open(paths[1], encoding='utf-8') as f:
        text = f.read()
    assert 'layer 1: head 1: ' in text and 'layer 5: head 0: ' in text


def test_hooks_visualize_after_eval(tmp_path, ported):
    model, _x = ported
    picture = tmp_path / 'cat.png'
    Image.fromarray((np.random.RandomState(0).rand(180, 240, 3) * 255).astype(np.uint8)).save(picture)
    import argparse
    parser = argparse.ArgumentParser()
    hook = hooks.PerViTHooks()
    hook.add_arguments(parser)
    args = parser.parse_args(['-visualize', '-visualize_image', str(picture), '-visualize_query', '1', '12'])
    config = load_family('PerViT').get_config(MINI_CFG, opts=['SAVE', str(tmp_path / 'run')])
    messages = []
    hook.after_eval(model, config, args, types.SimpleNamespace(info=messages.append))
    vis = tmp_path / 'run' / 'vis'
    assert (vis / 'position_attention.png').is_file() and (vis / 'attention_cat.png').is_file()
    assert len(messages) == 3
    # nothing without -visualize
    hook.after_eval(model, config, parser.parse_args([]), types.SimpleNamespace(info=messages.append))
    assert len(messages) == 3


def test_visualize_command_line(tmp_path, ported):
    model, _x = ported
    weights = str(tmp_path / 'mini.pdparams')
    paddle.save(model.state_dict(), weights)
    picture = tmp_path / 'dog.jpg'
    Image.fromarray((np.random.RandomState(1).rand(224, 300, 3) * 255).astype(np.uint8)).save(picture)
    visualize.main(['-cfg', MINI_CFG, '-pretrained', weights, '-output', str(tmp_path / 'out'),
                    '-image', str(picture)])
    out = tmp_path / 'out' / 'vis'
    assert sorted(os.listdir(out)) == ['attention_dog.png', 'nonlocality.txt', 'position_attention',
                                       'position_attention.png']
    with pytest.raises(FileNotFoundError):
        visualize.main(['-cfg', MINI_CFG, '-pretrained', str(tmp_path / 'missing.pdparams'),
                        '-output', str(tmp_path / 'out')])
