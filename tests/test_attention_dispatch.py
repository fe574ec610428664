"""The attention dispatch (engine/attention_dispatch.py) never picks a kernel that does
not exist for the case, and its math path equals the attention we had.

No GPU is available here, so the GPU cases are driven on the CPU by faking the
probes (device type, compute capability, Paddle version, kernel table) and
asserting the choice; the math path's values and gradients are compared on CPU.
"""
import logging

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from engine import attention_dispatch as dispatch
from engine.cpu import dispatch as cpu
from engine.cpu import kernels
from engine.layers import multi_head_attention

FLASH, MEM, MATH, CPU = dispatch.FLASH, dispatch.MEM_EFFICIENT, dispatch.MATH, dispatch.CPU_KERNELS


def gpu_case(dtype, sm, head_dim, version=(3, 0), needs_grad=True, dropout=0.):
    return dispatch.Case(device='gpu', dtype=dtype, capability=sm, head_dim=head_dim, paddle_version=version,
                         needs_grad=needs_grad, dropout=dropout, cpu_kernels=False)


@pytest.fixture
def gpu_wheel(monkeypatch):
    """A GPU wheel that registers flash_attn (half types) and memory_efficient_attention
    (float32 and half types), as Paddle's CUDA builds with flash-attn and CUTLASS do."""
    registered = {('flash_attn', 'float16'), ('flash_attn', 'bfloat16'), ('memory_efficient_attention', 'float32'),
                  ('memory_efficient_attention', 'float16'), ('memory_efficient_attention', 'bfloat16')}
    monkeypatch.setattr(dispatch, '_kernel_registered', lambda op, dtype: (op, dtype) in registered)
    return registered


# dtype, SM, head size -> backend; the same under every supported Paddle version (the rules
# do not ask Paddle to choose).  Paddle 3.0.0's own F.scaled_dot_product_attention would
# send every one of these with head size <= 256 to flash_attn, including the fp32 and SM 7.x rows.
TABLE = [
    ('float32', (7, 0), 64, MEM), ('float32', (7, 5), 64, MEM), ('float32', (8, 0), 64, MEM),
    ('float32', (9, 0), 64, MEM), ('float32', (8, 0), 128, MEM), ('float32', (8, 0), 320, MEM),
    ('float16', (7, 0), 64, MEM), ('float16', (7, 5), 128, MEM), ('float16', (7, 0), 320, MEM),
    ('float16', (8, 0), 64, FLASH), ('float16', (8, 0), 128, FLASH), ('float16', (8, 0), 256, FLASH),
    ('float16', (9, 0), 64, FLASH), ('float16', (9, 0), 128, FLASH), ('float16', (8, 0), 320, MEM),
    ('float16', (9, 0), 320, MEM),
    ('bfloat16', (7, 0), 64, MATH), ('bfloat16', (7, 5), 128, MATH), ('bfloat16', (7, 5), 320, MATH),
    ('bfloat16', (8, 0), 64, FLASH), ('bfloat16', (9, 0), 128, FLASH), ('bfloat16', (8, 0), 320, MEM),
    ('float16', (7, 0), 36, MATH),      # 36 is not aligned to 8, CUTLASS's minimum for half types on SM 7+
    ('float16', (8, 0), 36, MATH),      # flash needs a multiple of 8 too
    ('float16', (8, 0), 48, FLASH),     # PiT-S / SP-ViT heads
    ('float32', (8, 0), 42, MATH),      # float32 on SM 8+ runs tensor cores: alignment 4
    ('float32', (7, 0), 42, MEM),       # float32 on SM 7.x: no tensor cores, alignment 1
    ('float16', (5, 2), 64, MEM), ('float16', (3, 7), 64, MATH),
]


@pytest.mark.parametrize('version', [(3, 0), (3, 1), (3, 2), (3, 3)])
@pytest.mark.parametrize('dtype,sm,head_dim,expected', TABLE)
def test_gpu_choice(gpu_wheel, dtype, sm, head_dim, expected, version):
    backend, reason = dispatch.choose(gpu_case(dtype, sm, head_dim, version))
    assert backend == expected, reason


def test_flash_backward_limits_on_sm86_to_89(gpu_wheel):
    # Paddle 3.0's check_flash_head_dim_constraints: no backward for 192 < d <= 224, nor d > 224 with dropout
    assert dispatch.choose(gpu_case('float16', (8, 6), 208))[0] == MEM
    assert dispatch.choose(gpu_case('float16', (8, 6), 208, needs_grad=False))[0] == FLASH
    assert dispatch.choose(gpu_case('float16', (8, 9), 256, dropout=0.1))[0] == MEM
    assert dispatch.choose(gpu_case('float16', (8, 9), 256))[0] == FLASH
    assert dispatch.choose(gpu_case('float16', (8, 0), 208))[0] == FLASH


def test_kernels_missing_from_the_wheel_are_never_chosen(monkeypatch):
    monkeypatch.setattr(dispatch, '_kernel_registered', lambda op, dtype: op == 'memory_efficient_attention')
    assert dispatch.choose(gpu_case('float16', (8, 0), 64))[0] == MEM
    monkeypatch.setattr(dispatch, '_kernel_registered', lambda op, dtype: False)
    for dtype in ('float32', 'float16', 'bfloat16'):
        assert dispatch.choose(gpu_case(dtype, (9, 0), 64))[0] == MATH


def test_real_kernel_table_of_this_cpu_wheel():
    # this CPU wheel registers no GPU attention kernel: a faked GPU must get the math path
    dispatch._kernel_registered.cache_clear()
    assert not dispatch._kernel_registered('flash_attn', 'float16')
    assert not dispatch._kernel_registered('memory_efficient_attention', 'float32')
    assert dispatch.choose(gpu_case('float16', (8, 0), 64))[0] == MATH


def test_unread_paddle_versions_and_other_devices_get_math(gpu_wheel):
    assert dispatch.choose(gpu_case('float16', (8, 0), 64, version=(3, 4)))[0] == MATH
    assert dispatch.choose(gpu_case('float16', (8, 0), 64, version=(2, 6)))[0] == MATH
    other = gpu_case('float16', None, 64)._replace(device='other')
    assert dispatch.choose(other)[0] == MATH


def test_cpu_choices():
    case = dispatch.Case('cpu', 'float32', None, 64, (3, 3), True, 0., True)
    assert dispatch.choose(case)[0] == CPU
    assert dispatch.choose(case._replace(cpu_kernels=False))[0] == MATH
    assert dispatch.choose(case._replace(dtype='float16', cpu_kernels=False))[0] == MATH


def test_probes_read_the_version_and_capability(monkeypatch):
    monkeypatch.setattr(paddle, '__version__', '3.0.0')
    assert dispatch._paddle_version() == (3, 0)
    monkeypatch.setattr(paddle, '__version__', '3.3.1.post120')
    assert dispatch._paddle_version() == (3, 3)
    monkeypatch.setattr(paddle, '__version__', '0.0.0')
    assert dispatch._paddle_version() == (3, 3)     # a develop build: the newest version read
    monkeypatch.setattr(paddle.device.cuda, 'get_device_capability', lambda device=None: (7, 5))
    assert dispatch._capability() == (7, 5)


def _qkv(seed=0, b=2, n=9, heads=3, d=8):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((b, n, 3, heads, d)).astype('float32')


def _grads(fn, qkv_np, grad_np):
    qkv = paddle.to_tensor(qkv_np, stop_gradient=False)
    out = fn(qkv)
    (out * paddle.to_tensor(grad_np)).sum().backward()
    return out.numpy(), qkv.grad.numpy()


def test_math_path_matches_paddle_and_the_fused_kernels():
    qkv_np = _qkv()
    grad_np = np.random.default_rng(1).standard_normal((2, 9, 3, 8)).astype('float32')
    math = _grads(lambda t: dispatch.math_attention(*t.unbind(axis=2)), qkv_np, grad_np)
    paddles = _grads(lambda t: F.scaled_dot_product_attention(*t.unbind(axis=2)), qkv_np, grad_np)
    fused = _grads(lambda t: multi_head_attention(t), qkv_np, grad_np)      # CPU kernels here
    for ours, ref in ((math, paddles), (math, fused)):
        np.testing.assert_allclose(ours[0], ref[0], atol=2e-6, rtol=1e-5)
        np.testing.assert_allclose(ours[1], ref[1], atol=2e-6, rtol=1e-5)


def test_multi_head_attention_runs_the_chosen_backend(monkeypatch):
    """A faked GPU case must reach the kernel `choose` names, and nothing else."""
    qkv = paddle.to_tensor(_qkv())
    called = []
    monkeypatch.setattr(dispatch, 'math_attention', lambda *a, **k: called.append(MATH) or a[0])
    monkeypatch.setattr(dispatch, 'cpu_kernels_attention', lambda *a, **k: called.append(CPU) or a[0])
    monkeypatch.setattr(kernels, 'attention', lambda *a: pytest.fail('fused CPU kernel reached on GPU'))
    monkeypatch.setattr(dispatch, '_device_type', lambda x: 'gpu')
    monkeypatch.setattr(dispatch, '_capability', lambda: (7, 0))
    monkeypatch.setattr(dispatch, '_kernel_registered', lambda op, dtype: False)
    multi_head_attention(qkv)
    assert called == [MATH]


def test_fused_cpu_kernels_never_run_on_gpu_tensors():
    class FakePlace:
        def is_cpu_place(self):
            return False

    class FakeGpuTensor:
        dtype = paddle.float32
        place = FakePlace()

    assert not cpu.wanted(FakeGpuTensor())
    assert not cpu.wanted(FakeGpuTensor(), FakeGpuTensor())


def test_choice_logged_once_per_case(monkeypatch, caplog):
    monkeypatch.setattr(dispatch, '_logged', set())
    qkv = paddle.to_tensor(_qkv())
    with caplog.at_level(logging.INFO, logger='engine.attention_dispatch'):
        for _ in range(3):
            multi_head_attention(qkv)
        multi_head_attention(paddle.to_tensor(_qkv(d=16)))
    lines = [r.getMessage() for r in caplog.records if r.name == 'engine.attention_dispatch']
    assert len(lines) == 2, lines
    assert 'head size 8' in lines[0] and 'head size 16' in lines[1]


def test_math_path_softmax_in_float32_for_half_inputs(monkeypatch):
    """Half-precision scores reach the softmax as float32 (a float16 exp of a large score is inf)."""
    seen = []
    softmax = F.softmax
    monkeypatch.setattr(dispatch.F, 'softmax', lambda x, axis: seen.append(x.dtype) or softmax(x, axis=axis))
    q = paddle.to_tensor(_qkv()).unbind(axis=2)
    dispatch.math_attention(*q)
    assert seen == [paddle.float32]
