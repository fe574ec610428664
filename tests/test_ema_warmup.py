"""EMA warmup (TRAIN.MODEL_EMA_WARMUP, timm's --model-ema-warmup): decay at update t is
min(MODEL_EMA_DECAY, (1 + t) / (10 + t)); the update count survives a checkpoint and resume."""
import numpy as np
import paddle

from engine.checkpoint import CheckpointManager, resolve_resume, resume
from engine.ema import ModelEMA
from engine.optim import WarmupCosine


def _net():
    return paddle.nn.Linear(3, 2)


def _set(model, value):
    for p in model.parameters():
        p.set_value(paddle.full(p.shape, value, p.dtype))


def _expected(values, decay, warmup, start_value=0.0, start_t=0):
    """The EMA of the scalar weights `values` (one per update) by the closed form."""
    ema = start_value
    for i, v in enumerate(values):
        t = start_t + i
        d = min(decay, (1 + t) / (10 + t)) if warmup else decay
        ema = d * ema + (1 - d) * v
    return ema


def test_warmup_decay_follows_closed_form():
    model = _net()
    _set(model, 0.0)
    ema = ModelEMA(model, 0.99, warmup=True)
    plain = ModelEMA(model, 0.99)
    values = [1.0, 2.0, -3.0, 0.5, 4.0, 1.5]
    assert ema.current_decay() == 0.1       # (1 + 0) / (10 + 0)
    for v in values:
        _set(model, v)
        ema.update(model)
        plain.update(model)
    assert ema.updates == len(values)
    np.testing.assert_allclose(ema.module.weight.numpy(), _expected(values, 0.99, True), rtol=1e-6)
    np.testing.assert_allclose(plain.module.weight.numpy(), _expected(values, 0.99, False), rtol=1e-6)
    # far into training the warmup form reaches the configured decay and stays there
    ema.updates = 10_000
    assert ema.current_decay() == 0.99


def test_resume_restores_the_update_count(tmp_path):
    values = [1.0, -2.0, 3.0, 0.25, 5.0, -1.0, 2.0]
    model = _net()
    _set(model, 0.0)
    sched = WarmupCosine(0.1, 0.01, 0.001, warmup_steps=2, total_steps=20)
    opt = paddle.optimizer.AdamW(learning_rate=sched, parameters=model.parameters())
    ema = ModelEMA(model, 0.999, warmup=True)
    for v in values[:4]:
        _set(model, v)
        ema.update(model)
        sched.step()
    CheckpointManager(str(tmp_path), 'net', save_freq=1).save(1, model, opt, sched, ema=ema)

    model2 = _net()
    sched2 = WarmupCosine(0.1, 0.01, 0.001, warmup_steps=2, total_steps=20)
    opt2 = paddle.optimizer.AdamW(learning_rate=sched2, parameters=model2.parameters())
    ema2 = ModelEMA(model2, 0.999, warmup=True)
    resume(resolve_resume(str(tmp_path)), model2, opt2, sched2, ema=ema2)
    assert ema2.updates == 4
    for v in values[4:]:
        _set(model2, v)
        ema2.update(model2)
    np.testing.assert_allclose(ema2.module.weight.numpy(), _expected(values, 0.999, True), rtol=1e-6)
