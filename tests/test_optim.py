"""Learning-rate schedule values and weight-decay exclusion (PaddleViT's never fired)."""
import numpy as np
import paddle
import pytest

from engine.config import make_get_config
from engine.optim import WarmupCosine, build_optimizer, build_scheduler, no_decay_names, scaled_lrs

get_config = make_get_config(lambda c: None)


def test_warmup_cosine_known_steps():
    sched = WarmupCosine(base_lr=1.0, warmup_start_lr=0.0, end_lr=0.1, warmup_steps=10, total_steps=110)
    lrs = []
    for _ in range(111):
        lrs.append(sched())
        sched.step()
    assert lrs[0] == 0.0                      # first step uses the warmup start, not one step in
    assert lrs[5] == pytest.approx(0.5)
    assert lrs[10] == pytest.approx(1.0)      # warmup ends exactly at base lr
    assert lrs[60] == pytest.approx(0.55)     # cosine midpoint: (1 + 0.1) / 2
    assert lrs[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_linear_scaling_uses_global_batch():
    config = get_config(opts=['DATA.BATCH_SIZE', '64', 'TRAIN.ACCUM_ITER', '2', 'TRAIN.BASE_LR', '1e-3',
                              'TRAIN.LINEAR_SCALED_LR', '512'])
    base, _, _ = scaled_lrs(config, world_size=4)
    assert base == pytest.approx(1e-3 * 64 * 4 * 2 / 512)
    sched = build_scheduler(config, steps_per_epoch=7, world_size=4)
    assert sched.total_steps == 7 * config.TRAIN.NUM_EPOCHS
    assert sched.warmup_steps == 7 * config.TRAIN.WARMUP_EPOCHS


class _Toy(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.proj = paddle.nn.Linear(4, 4)
        self.norm = paddle.nn.LayerNorm(4)
        self.pos_embed = self.create_parameter([1, 3, 4])

    def no_weight_decay(self):
        return {'pos_embed'}

    def forward(self, x):
        return self.norm(self.proj(x)) + self.pos_embed.sum()


@pytest.mark.parametrize('name', ['AdamW', 'SGD'])
def test_weight_decay_skips_biases_norms_and_listed(name):
    model = _Toy()
    assert no_decay_names(model) == {'proj.bias', 'norm.weight', 'norm.bias', 'pos_embed'}
    config = get_config(opts=['TRAIN.OPTIMIZER.NAME', name, 'TRAIN.WEIGHT_DECAY', '0.5'])
    opt = build_optimizer(config, model, scheduler=0.1)
    before = {n: p.numpy().copy() for n, p in model.named_parameters()}
    (model(paddle.zeros([1, 4])) * 0).sum().backward()   # zero gradients: only decay moves weights
    opt.step()
    after = {n: p.numpy() for n, p in model.named_parameters()}
    np.testing.assert_allclose(after['proj.weight'], before['proj.weight'] * (1 - 0.1 * 0.5), rtol=1e-6)
    for kept in ('proj.bias', 'norm.weight', 'norm.bias', 'pos_embed'):
        np.testing.assert_array_equal(after[kept], before[kept])
