"""AMP as it runs on a GPU, checked in CPU form.

On this CPU Paddle's AMP is a no-op: `auto_cast` warns and stays float32,
`paddle.amp.decorate` returns the model unchanged, and `GradScaler` disables
itself ("can only be enabled on CUDAPlace ..."), and there are no float16 CPU
kernels for matmul or AdamW.  What is checked here instead:
  * the launcher's AMP decision (`_amp_settings`): loss scaling for float16 on GPU
    only, the autocast arguments handed to `auto_cast`;
  * Paddle's O1 / O2 op lists for both dtypes: the matmuls that produce q, k, v are
    cast, so the attention dispatch receives the AMP dtype, and what it picks then;
  * O2 parameter casting through `amp_initialize` (the step `decorate` runs after its
    place check) on the real families' layers: Linear / Conv weights to the AMP dtype,
    LayerNorm and BatchNorm kept float32 where Paddle keeps them, and the optimizer
    switched to float32 master weights;
  * the GPU scaler's own kernels (`check_finite_and_unscale`, `update_loss_scaling`,
    which have CPU kernels): a forced inf is found, and the scale halves.
Not covered (needs a GPU): the numerics of float16 / bfloat16 kernels, the optimizer
step on float16 parameters, `GradScaler.step` skipping the update end to end.
"""
import inspect
import types

import numpy as np
import paddle
import paddle.nn as nn
import pytest
from paddle import _legacy_C_ops
from paddle.amp import amp_lists
from paddle.amp.auto_cast import _set_multi_precision, amp_initialize

from engine import attention_dispatch as dispatch
from engine.launcher import _amp_settings
from engine.layers import Conv2D, LayerNorm, Linear


def _config(amp, level='O1', dtype='float16'):
    """The three keys `_amp_settings` reads (engine/config.py validates them)."""
    return types.SimpleNamespace(AMP=amp, AMP_LEVEL=level, AMP_DTYPE=dtype)


@pytest.mark.parametrize('level', ['O1', 'O2'])
@pytest.mark.parametrize('dtype,on_gpu,scaler', [('float16', True, True), ('bfloat16', True, False),
                                                 ('float16', False, False), ('bfloat16', False, False)])
def test_amp_settings(level, dtype, on_gpu, scaler):
    amp, use_scaler = _amp_settings(_config(True, level, dtype), on_gpu)
    assert amp == {'enable': True, 'level': level, 'dtype': dtype}
    assert use_scaler is scaler         # bfloat16 has float32's exponent range: no loss scaling


def test_amp_off():
    amp, use_scaler = _amp_settings(_config(False), True)
    assert amp['enable'] is False and use_scaler is False


@pytest.mark.parametrize('level', ['O1', 'O2'])
@pytest.mark.parametrize('dtype', ['float16', 'bfloat16'])
def test_attention_inputs_take_the_amp_dtype(level, dtype):
    """Under both levels the matmul that makes q, k, v is white-listed, so the attention
    dispatch sees the AMP dtype; under O1 softmax is black-listed (runs float32), as
    the math path does by itself."""
    white, black = amp_lists.white_list()[dtype][level], amp_lists.black_list()[dtype][level]
    assert {'matmul', 'matmul_v2'} <= set(white)
    if level == 'O1':
        assert 'softmax' in black and 'layer_norm' in black


@pytest.mark.parametrize('dtype,sm,expected', [
    ('float16', (7, 0), dispatch.MEM_EFFICIENT), ('float16', (8, 0), dispatch.FLASH),
    ('bfloat16', (7, 5), dispatch.MATH), ('bfloat16', (9, 0), dispatch.FLASH),
    ('float32', (7, 0), dispatch.MEM_EFFICIENT),      # AMP off
])
def test_dispatch_under_amp_on_gpus(monkeypatch, dtype, sm, expected):
    """ViT-S / DeiT-S heads (64) under AMP on a V100, T4, A100, H100."""
    monkeypatch.setattr(dispatch, '_kernel_registered', lambda op, dt: not (op == 'flash_attn' and dt == 'float32'))
    case = dispatch.Case('gpu', dtype, sm, 64, (3, 0), True, 0., False)
    assert dispatch.choose(case)[0] == expected


class Block(nn.Layer):
    def __init__(self):
        super().__init__()
        self.conv = Conv2D(3, 8, 3)
        self.bn = nn.BatchNorm2D(8)
        self.norm = LayerNorm(8)
        self.fc = Linear(8, 8)


@pytest.mark.parametrize('dtype', ['float16', 'bfloat16'])
def test_o2_casts_weights_and_keeps_float32_masters(dtype):
    model = Block()
    optimizer = paddle.optimizer.AdamW(parameters=model.parameters(), learning_rate=1e-3)
    amp_initialize(models=[model], dtype=dtype, excluded_layers=None)
    _set_multi_precision(optimizer, True)
    low = getattr(paddle, dtype)
    assert model.conv.weight.dtype == low and model.fc.weight.dtype == low and model.fc.bias.dtype == low
    assert model.bn.weight.dtype == paddle.float32 and model.bn._mean.dtype == paddle.float32
    # Paddle keeps LayerNorm float32 for float16 only; with bfloat16 it is cast too
    assert model.norm.weight.dtype == (paddle.float32 if dtype == 'float16' else low)
    assert optimizer._multi_precision
    # our fused CPU kernels refuse half tensors (they would be wrong): the O2 model never reaches them
    from engine.cpu import dispatch
    assert not dispatch.wanted(paddle.ones([2, 8]).astype(dtype), model.norm.weight, model.norm.bias)


def test_loss_scaling_kernels_find_inf_and_lower_the_scale():
    """The ops GradScaler runs on GPU, with GradScaler's own defaults: an inf gradient is
    found, the gradients are zeroed (the update changes nothing), and after
    `decr_every_n_nan_or_inf` such steps the scale is multiplied by `decr_ratio`."""
    defaults = {name: p.default for name, p in inspect.signature(paddle.amp.GradScaler).parameters.items()}
    scale = paddle.to_tensor([2. ** 16])          # the launcher's init_loss_scaling
    good, bad = paddle.to_tensor([0], dtype='int32'), paddle.to_tensor([0], dtype='int32')
    for step in range(defaults['decr_every_n_nan_or_inf']):
        assert scale.item() == 2. ** 16           # not lowered before the n-th inf
        grads = [paddle.to_tensor([1., 2.]), paddle.to_tensor([np.inf, 0.])]
        found_inf = paddle.to_tensor([False])
        _legacy_C_ops.check_finite_and_unscale(grads, scale, grads, found_inf)
        assert found_inf.item()
        _legacy_C_ops.update_loss_scaling(grads, found_inf, scale, good, bad, grads, scale, good, bad,
                                          'incr_every_n_steps', defaults['incr_every_n_steps'],
                                          'decr_every_n_nan_or_inf', defaults['decr_every_n_nan_or_inf'],
                                          'incr_ratio', defaults['incr_ratio'], 'decr_ratio', defaults['decr_ratio'])
        assert all(np.all(g.numpy() == 0) for g in grads)
    assert scale.item() == 2. ** 16 * defaults['decr_ratio'] < 2. ** 16

    grads = [paddle.to_tensor([2. ** 16, 2. ** 17])]  # finite: unscaled, not flagged
    found_inf = paddle.to_tensor([False])
    _legacy_C_ops.check_finite_and_unscale(grads, paddle.to_tensor([2. ** 16]), grads, found_inf)
    assert not found_inf.item() and grads[0].numpy().tolist() == [1., 2.]
