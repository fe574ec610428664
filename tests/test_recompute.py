"""Gradient checkpointing (TRAIN.RECOMPUTE, `model.set_grad_checkpointing`): engine/recompute.py.

For a small model of every family that supports it, in training mode with drop path and
dropout on, one forward + backward with checkpointing gives the loss and every parameter
gradient of the same step without it (same seed), while the blocks really go through
Paddle's recompute.
"""
import os

import numpy as np
import paddle
import pytest

from conftest import FIXTURES, REPO
from engine import recompute as recompute_module
from engine.families import build_from_config

CONFIGS = os.path.join(REPO, 'image_classification')
STOCHASTIC = ['MODEL.DROPPATH', '0.3', 'MODEL.DROPOUT', '0.1']
TINY_PIT = ['DATA.IMAGE_SIZE', '64', 'MODEL.BASE_DIMS', '[8, 8, 8]', 'MODEL.DEPTH', '[2, 1, 1]',
            'MODEL.NUM_HEADS', '[2, 2, 4]']
CASES = {   # name: (config, opts, blocks run per forward)
    'vit': ('ViT/configs/vit_tiny_patch16_224.yaml',
            ['DATA.IMAGE_SIZE', '32', 'MODEL.PATCH_SIZE', '8', 'MODEL.EMBED_DIM', '32', 'MODEL.DEPTH', '2',
             'MODEL.NUM_HEADS', '2', 'MODEL.MLP_DIM', '64'], 2),
    'vit_r50': (os.path.join(FIXTURES, 'vit_r50_mini', 'vit_r50_mini.yaml'), [], 2),
    'pit': ('PiT/configs/pit_ti_224.yaml', TINY_PIT, 4),
    'pit_distilled': ('PiT/configs/pit_ti_distilled_224.yaml', TINY_PIT, 4),
    'pervit': (os.path.join(FIXTURES, 'pervit_mini', 'pervit_mini.yaml'),
               ['DATA.IMAGE_SIZE', '64', 'MODEL.DEPTHS', '[1, 1, 1, 1]'], 4),
    'spvit': ('SPViT/configs/spvit_s_224.yaml',
              ['DATA.IMAGE_SIZE', '64', 'MODEL.EMBED_DIM', '48', 'MODEL.DEPTH', '3', 'MODEL.NUM_HEADS', '2',
               'MODEL.LOCAL_UP_TO_LAYER', '2'], 3),
    'vvt': (os.path.join(FIXTURES, 'vvt_mini', 'vvt_mini.yaml'), [], None),
}


def _tensors(out):
    if isinstance(out, paddle.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in _tensors(item)]
    return []


def _step(model, x, seed):
    """(loss, {name: gradient}) of one training forward + backward drawn from `seed`."""
    model.clear_gradients()
    paddle.seed(seed)
    np.random.seed(seed)
    outputs = _tensors(model(x))
    # a loss that weighs every output element differently, so every gradient path is exercised
    loss = sum((t * paddle.sin(paddle.arange(t.size, dtype=t.dtype).reshape(t.shape))).sum() for t in outputs)
    loss.backward()
    grads = {n: p.grad.numpy().copy() for n, p in model.named_parameters() if p.grad is not None}
    return loss.item(), grads


@pytest.mark.parametrize('name', sorted(CASES))
@pytest.mark.slow
def test_checkpointed_step_equals_plain_step(name, monkeypatch):
    cfg, opts, blocks = CASES[name]
    paddle.seed(1)
    config, model = build_from_config(os.path.join(CONFIGS, cfg) if not os.path.isabs(cfg) else cfg,
                                      opts + STOCHASTIC)
    if blocks is None:
        blocks = sum(config.MODEL.DEPTHS)
    model.train()
    size = config.DATA.IMAGE_SIZE
    x = paddle.to_tensor(np.random.default_rng(0).standard_normal((2, 3, size, size)).astype('float32'))

    plain_loss, plain = _step(model, x, seed=7)
    other_loss, _ = _step(model, x, seed=8)
    assert other_loss != plain_loss, 'drop path / dropout draw nothing: the test would prove nothing'

    from paddle.distributed.fleet import utils as fleet_utils
    calls = []

    def counting(function, *args, **kwargs):
        calls.append(kwargs)
        return original(function, *args, **kwargs)
    original = fleet_utils.recompute
    monkeypatch.setattr(fleet_utils, 'recompute', counting)

    assert model.set_grad_checkpointing(True) is model
    loss, grads = _step(model, x, seed=7)
    assert len(calls) == blocks and all(c['preserve_rng_state'] for c in calls)
    np.testing.assert_allclose(loss, plain_loss, rtol=1e-6)
    assert grads.keys() == plain.keys() and any('blocks' in key for key in grads)
    for key in plain:
        np.testing.assert_allclose(grads[key], plain[key], rtol=1e-5, atol=1e-6, err_msg=key)

    # evaluation and no_grad never recompute; switching off restores the plain loop
    calls.clear()
    model.eval()
    with paddle.no_grad():
        model(x)
    model.train()
    model.set_grad_checkpointing(False)
    _step(model, x, seed=7)
    assert calls == []


def test_model_without_block_loop_is_refused():
    """set_grad_checkpointing on a layer with no checkpointable loop says so instead of doing nothing."""
    with pytest.raises(ValueError, match='no block loop'):
        recompute_module.set_grad_checkpointing(paddle.nn.Linear(2, 2))


DATA_PARALLEL_SCRIPT = '''
import os, sys
sys.path[:0] = {paths!r}
import conftest  # noqa: F401  (paths, quiet Paddle)
import numpy as np
import paddle
import paddle.distributed as dist
from engine.families import build_from_config

dist.init_parallel_env()
rank = dist.get_rank()
paddle.seed(1)
config, model = build_from_config({cfg!r}, {opts!r})
dp = paddle.DataParallel(model)
dp.train()
x = paddle.to_tensor(np.random.default_rng(rank).standard_normal((2, 3, 32, 32)).astype('float32'))

def step(enable):
    model.set_grad_checkpointing(enable)
    model.clear_gradients()
    paddle.seed(7 + rank)
    out = dp(x)
    loss = (out * paddle.arange(out.size, dtype='float32').reshape(out.shape).sin()).sum()
    loss.backward()
    return {{n: p.grad.numpy() for n, p in model.named_parameters() if p.grad is not None}}

plain, checkpointed = step(False), step(True)
np.savez(os.path.join({out!r}, f'rank{{rank}}.npz'),
         **{{'plain/' + k: v for k, v in plain.items()}}, **{{'ckpt/' + k: v for k, v in checkpointed.items()}})
'''


@pytest.mark.slow
def test_checkpointing_under_data_parallel(tmp_path):
    """2 CPU ranks (gloo) under paddle.DataParallel: the all-reduced gradients with checkpointing
    equal those without, and are the same on both ranks (the reducer's hooks still fire)."""
    import subprocess
    import sys
    cfg, opts, _ = CASES['vit']
    script = tmp_path / 'dp.py'
    script.write_text(DATA_PARALLEL_SCRIPT.format(
        paths=[os.path.dirname(os.path.abspath(__file__)), REPO, os.path.join(REPO, 'image_classification')],
        cfg=os.path.join(CONFIGS, cfg), opts=opts + STOCHASTIC, out=str(tmp_path)))
    proc = subprocess.run([sys.executable, '-m', 'paddle.distributed.launch', '--nproc_per_node', '2',
                           '--log_dir', str(tmp_path / 'log'), str(script)], cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=300)
    logs = ''.join(p.read_text(errors='replace') for p in (tmp_path / 'log').glob('*'))
    assert proc.returncode == 0, (proc.stdout + proc.stderr + logs)[-4000:]
    ranks = [np.load(tmp_path / f'rank{r}.npz') for r in (0, 1)]
    keys = [k for k in ranks[0].files if k.startswith('plain/')]
    assert keys and {k for k in ranks[0].files if k.startswith('ckpt/')} == {'ckpt/' + k[6:] for k in keys}
    for key in keys:
        for r in ranks:
            np.testing.assert_allclose(r['ckpt/' + key[6:]], r[key], rtol=1e-5, atol=1e-6, err_msg=key)
        np.testing.assert_allclose(ranks[1][key], ranks[0][key], rtol=1e-6, atol=1e-7, err_msg=key)


def test_recompute_on_a_family_without_block_loop_is_a_user_error(tmp_path):
    """TRAIN.RECOMPUTE on RegNet (convolutional stages, no checkpointed loop) ends with one message,
    before any data is read, instead of training without it."""
    from engine.config import ConfigError
    from engine.families import load_family
    from engine.launcher import execute
    family = load_family('RegNet')
    argv = ['-cfg', os.path.join(CONFIGS, 'RegNet/configs/regnety_400mf.yaml'), '-output', str(tmp_path),
            '-data_path', str(tmp_path / 'no_data'), '-opts', 'DATA.IMAGE_SIZE', '64', 'MODEL.STEM_WIDTH', '8',
            'MODEL.W0', '16', 'MODEL.WA', '12.0', 'MODEL.WM', '1.5', 'MODEL.DEPTH', '5', 'MODEL.GROUP_W', '12',
            'TRAIN.RECOMPUTE', 'True']
    with pytest.raises(ConfigError, match='RegNet models do not support TRAIN.RECOMPUTE'):
        execute(family.get_config, family.build_model, argv=argv)


def test_launcher_switches_checkpointing_on(tmp_path):
    """-opts TRAIN.RECOMPUTE True reaches the model the launcher trains (it stops later, at the
    missing data, which is all this test needs)."""
    from engine.errors import UserError
    from engine.families import load_family
    from engine.launcher import execute
    family, built = load_family('ViT'), []

    def build(config):
        built.append(family.build_model(config))
        return built[-1]
    cfg, opts, _ = CASES['vit']
    for value in ('False', 'True'):
        argv = ['-cfg', os.path.join(CONFIGS, cfg), '-output', str(tmp_path / value), '-data_path',
                str(tmp_path / 'no_data'), '-opts', *opts, 'TRAIN.RECOMPUTE', value]
        with pytest.raises(UserError):
            execute(family.get_config, build, argv=argv)
    assert [m.grad_checkpointing for m in built] == [False, True]
