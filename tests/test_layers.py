"""Shared layers and process settings that exist for speed: same results as the stock path."""
import os
import subprocess
import sys

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from engine.layers import Linear, gemm_bias_wanted, linear

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('switch', ['1', '0'])           # the fused kernel; the bias by GEMM
@pytest.mark.parametrize('shape', [(5, 7), (2, 3, 7), (2, 2, 3, 7)])
def test_cpu_linear_matches_f_linear_values_and_gradients(shape, switch, monkeypatch):
    from engine.cpu import kernels
    monkeypatch.setenv('PADDLEVIT_FUSED_CPU_OPS', switch)
    used = []
    monkeypatch.setattr(kernels, 'linear', lambda *a, _f=kernels.linear: used.append(1) or _f(*a))
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal(shape).astype('float32')
    w_np = rng.standard_normal((7, 4)).astype('float32')
    b_np = rng.standard_normal(4).astype('float32')
    grad_np = rng.standard_normal(shape[:-1] + (4,)).astype('float32')
    results = []
    for fn in (F.linear, linear):
        x, w, b = (paddle.to_tensor(a, stop_gradient=False) for a in (x_np, w_np, b_np))
        assert fn is F.linear or gemm_bias_wanted(b)        # else both sides would be F.linear
        out = fn(x, w, b)
        grads = paddle.grad([out], [x, w, b], [paddle.to_tensor(grad_np)])
        results.append([out.numpy()] + [g.numpy() for g in grads])
    assert len(used) == (switch == '1')
    assert results[1][0].shape == shape[:-1] + (4,)
    for ours, stock in zip(results[1], results[0]):
        np.testing.assert_allclose(ours, stock, rtol=1e-5, atol=1e-5)


def test_traced_graphs_keep_the_plain_linear():
    """to_static and export keep matmul + add, the pattern Paddle Inference fuses; dygraph
    (train and eval) adds the bias by GEMM with the same result."""
    paddle.seed(0)
    layer = Linear(6, 3)
    x = paddle.randn([4, 6])
    stock = F.linear(x, layer.weight, layer.bias).numpy()
    for training in (False, True):
        layer.train() if training else layer.eval()
        program = paddle.jit.to_static(layer.forward, full_graph=True, input_spec=[
            paddle.static.InputSpec([None, 6], 'float32')]).concrete_program.main_program
        ops = [op.name() for op in program.global_block().ops]
        assert ops.count('pd_op.matmul') == 1 and 'pd_op.ones_like' not in ops, ops
        np.testing.assert_allclose(layer(x).numpy(), stock, rtol=1e-5, atol=1e-6)
    no_bias = Linear(6, 3, bias_attr=False)
    np.testing.assert_allclose(no_bias(x).numpy(), (x @ no_bias.weight).numpy(), rtol=1e-6)


def test_linear_trains_under_to_static_with_a_dynamic_batch():
    paddle.seed(0)
    layer = Linear(6, 3)
    layer.train()
    static = paddle.jit.to_static(layer, full_graph=True, input_spec=[
        paddle.static.InputSpec([None, 5, 6], 'float32')])
    x = paddle.randn([2, 5, 6])
    out = static(x)
    out.sum().backward()
    np.testing.assert_allclose(out.numpy(), F.linear(x, layer.weight, layer.bias).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.bias.grad.numpy(), np.full(3, 10.), rtol=1e-6)


_PAGE_FAULT_PROBE = '''
import resource, sys
sys.path[:0] = [{ic!r}]
import engine
engine.prepare_process()
import paddle
from engine.cpu import settings
settings.configure()
print('stride', paddle.get_flags(['FLAGS_use_stride_kernel'])['FLAGS_use_stride_kernel'])
x = paddle.ones([64, 1024, 1024])           # 256 MB, far above glibc's mmap threshold
for _ in range(8):                          # the first rounds grow the heap (3 here; more under load)
    (x * 2.).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    (x * 2.).sum()                          # a 256 MB temporary made and freed each time
print('faults', resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
'''


def _probe(env):
    script = _PAGE_FAULT_PROBE.format(ic=os.path.join(REPO, 'image_classification'))
    out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=300,
                         env={k: v for k, v in env.items() if k != 'FLAGS_use_stride_kernel'}, check=True)
    return dict(line.split() for line in out.stdout.splitlines() if line.split()[0] in ('stride', 'faults'))


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc mallopt')
@pytest.mark.slow
def test_cpu_settings_recycle_freed_memory_and_use_dense_kernels():
    """The settings of a CPU run stop large temporaries costing page faults on every op.

    A 256 MB temporary is 65,536 pages: without `keep_freed_memory` each of the three
    is mapped and faulted in afresh.  Exporting MALLOC_MMAP_MAX_ keeps glibc's behaviour.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith('MALLOC_')}
    ours = _probe(env)
    assert ours['stride'] == 'False'
    assert int(ours['faults']) < 3000, ours
    default = _probe(dict(env, MALLOC_MMAP_MAX_='65536'))
    assert int(default['faults']) > 3 * 60000, default


@pytest.mark.parametrize('kwargs,kernel', [
    (dict(stride=2, padding=1), 'conv'), (dict(padding=0), 'conv'), (dict(padding='SAME', dilation=2), None),
    (dict(padding=1, groups=4), 'depthwise_conv_image'),
    (dict(stride=2, padding=1, groups=4), 'depthwise_conv_image'),     # PiT's pooling
    (dict(stride=(2, 3), padding=(1, 2), groups=4), 'depthwise_conv_image'), (dict(padding='SAME', groups=4), None)])
def test_cpu_conv_matches_stock_conv_values_and_gradients(kwargs, kernel, monkeypatch):
    """The fused dense (groups 1) or depthwise kernel (groups = input channels, here x2 outputs)
    where the conv is one they take, else the bias by GEMM."""
    from engine.cpu import kernels
    from engine.layers import Conv2D
    if kernel == 'conv' and not kernels.gemm_kernels_available():
        kernel = None                              # no BLAS to build the dense kernel against: Paddle's conv
    used = []
    for name in ('conv', 'depthwise_conv_image'):
        monkeypatch.setattr(kernels, name, lambda *a, _f=getattr(kernels, name), _n=name: used.append(_n) or _f(*a))
    paddle.seed(0)
    ours = Conv2D(4, 8, 3, **kwargs)
    stock = paddle.nn.Conv2D(4, 8, 3, **kwargs)
    stock.set_state_dict(ours.state_dict())
    x_np = np.random.default_rng(1).standard_normal((3, 4, 9, 11)).astype('float32')
    results = []
    for layer in (stock, ours):
        layer.train()
        x = paddle.to_tensor(x_np, stop_gradient=False)
        out = layer(x)
        grads = paddle.grad([(out * out).sum()], [x, layer.weight, layer.bias])
        results.append([out.numpy()] + [g.numpy() for g in grads])
    assert used == ([kernel] if kernel else [])
    for a, b in zip(results[1], results[0]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('batch,channels,size,kwargs', [
    (3, 3, 32, dict(kernel_size=16, stride=8)),                        # PiT's patch embedding
    (1, 3, 32, dict(kernel_size=7, stride=4, padding=3)),              # fewer images than threads
    (2, 32, 40, dict(kernel_size=3, padding=1, bias_attr=False)),      # rows in more than one band
    (2, 4, 9, dict(kernel_size=(3, 5), stride=(2, 1), padding=(1, 2))),
    (2, 3, 10, dict(kernel_size=5, stride=3, padding=(2, 6))),         # whole output columns in the padding
    (2, 4, 9, dict(kernel_size=3, padding=1, groups=4, bias_attr=False))])  # depthwise, no bias
def test_cpu_conv_kernels_match_stock_conv_with_and_without_gradients(batch, channels, size, kwargs, monkeypatch):
    """Dense convs run the unfold + GEMM kernel, depthwise ones theirs, with or without a
    bias, in evaluation and in training (values, and the gradients of x, weight and bias)."""
    from engine.cpu import kernels
    from engine.layers import Conv2D
    if not kernels.gemm_kernels_available():
        pytest.skip('this Paddle ships no BLAS to build the kernel against')
    used = []
    for name in ('conv', 'depthwise_conv_image'):
        monkeypatch.setattr(kernels, name, lambda *a, _f=getattr(kernels, name), _n=name: used.append(_n) or _f(*a))
    paddle.seed(0)
    ours = Conv2D(channels, 2 * channels, **kwargs)
    stock = paddle.nn.Conv2D(channels, 2 * channels, **kwargs)
    stock.set_state_dict(ours.state_dict())
    x_np = np.random.default_rng(1).standard_normal((batch, channels, size, size)).astype('float32')
    x = paddle.to_tensor(x_np)
    with paddle.no_grad():
        out, expected = ours(x), stock(x)
    kernel = 'depthwise_conv_image' if kwargs.get('groups') else 'conv'
    assert used == [kernel]
    np.testing.assert_allclose(out.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    grad_out = paddle.to_tensor(np.random.default_rng(2).standard_normal(out.shape).astype('float32'))
    results = []
    for layer in (ours, stock):
        x = paddle.to_tensor(x_np, stop_gradient=False)
        params = [x, layer.weight] + ([layer.bias] if layer.bias is not None else [])
        results.append([g.numpy() for g in paddle.grad([layer(x)], params, [grad_out])])
    assert used == [kernel, kernel]
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_bias_helpers_add_the_bias_once_per_row_and_channel():
    from engine.layers import add_bias_channels, add_bias_last_axis
    x = paddle.zeros([2, 3, 4, 5])
    np.testing.assert_array_equal(add_bias_channels(x, paddle.to_tensor([1., 2., 3.])).numpy()[1, :, 2, 4], [1, 2, 3])
    np.testing.assert_array_equal(add_bias_last_axis(x, paddle.arange(5, dtype='float32')).numpy()[1, 2, 3],
                                  [0, 1, 2, 3, 4])


def test_position_embedding_added_by_expand_matches_the_broadcast():
    from engine.layers import add_position_embedding
    rng = np.random.default_rng(4)
    x_np, pos_np = rng.standard_normal((3, 5, 4)).astype('float32'), rng.standard_normal((1, 5, 4)).astype('float32')
    grad = paddle.to_tensor(rng.standard_normal((3, 5, 4)).astype('float32'))
    results = []
    for fn in (lambda x, p: x + p, add_position_embedding):
        x, pos = paddle.to_tensor(x_np, stop_gradient=False), paddle.to_tensor(pos_np, stop_gradient=False)
        out = fn(x, pos)
        results.append([out.numpy()] + [g.numpy() for g in paddle.grad([out], [x, pos], [grad])])
    for ours, stock in zip(results[1], results[0]):
        np.testing.assert_allclose(ours, stock, rtol=1e-6, atol=1e-6)
