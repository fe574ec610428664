"""The fused CPU kernels (engine/cpu/) give Paddle's results, values and gradients, are used
where they should be and nowhere else, fall back cleanly, and are built for this CPU and Paddle."""
import logging
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
import pytest

from engine.cpu import build, dispatch, settings
from engine.cpu import kernels as fused
from engine.families import build_from_config
from engine.layers import (GELU, Conv2D, GroupNorm, LayerNorm, Linear, Mlp, clamp_magnitude, conv_tokens, drop_path,
                           gelu_linear, multi_head_attention)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, 'tests', 'fixtures')
CONFIGS = os.path.join(REPO, 'image_classification')


@pytest.fixture
def calls(monkeypatch):
    """Counts the calls of each fused op (they still run)."""
    fused.available()       # built (and smoke-tested) before counting starts
    counts = {}
    for name in ('layer_norm', 'gelu', 'depthwise_conv_tokens', 'peripheral_attention', 'scaled_softmax_',
                 'linear', 'depthwise_conv_image', 'attention', 'conv', 'abs_clamp', 'scale_rows', 'gelu_linear',
                 'group_norm'):
        original = getattr(fused, name)

        def counted(*args, _name=name, _original=original):
            counts[_name] = counts.get(_name, 0) + 1
            return _original(*args)
        monkeypatch.setattr(fused, name, counted)
    return counts


def _values_and_grads(out, wrt, grad_out):
    """[out] + the gradients of `out` wrt each tensor of `wrt`, as numpy arrays."""
    return [out.numpy()] + [g.numpy() for g in paddle.grad([out], list(wrt), [grad_out])]


def _grads(fn, inputs, grad_out):
    return _values_and_grads(fn(*inputs), inputs, grad_out)


def _tensors(*arrays):
    return [paddle.to_tensor(a, stop_gradient=False) for a in arrays]


def test_kernels_build_here():
    """CI has a C++ compiler: the kernels must build (a silent fallback would hide a broken build)."""
    assert fused.available()
    assert build.built_for(build.build_directory(), build.build_key())


def test_kernels_run_on_paddles_openmp_runtime():
    """Where Paddle ships Intel's libiomp5, the kernels link to it and not to GCC's
    libgomp: two thread pools on the same cores slowed a LayerNorm backward 3x."""
    if build.openmp_link_flags() == ['-fopenmp']:
        pytest.skip('this Paddle ships no libiomp5')
    assert fused.available()
    library = build.library_path(build.build_directory())
    with open(library, 'rb') as f:
        binary = f.read()
    assert b'libiomp5.so' in binary and b'libgomp.so' not in binary


@pytest.mark.parametrize('shape,epsilon', [((2, 5, 7), 1e-5), ((3, 384), 1e-6), ((1, 1, 1, 16), 1e-6)])
def test_layer_norm_matches_paddle(shape, epsilon, calls):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 3 + 5).astype('float32')     # a large mean: two-pass variance
    w = (rng.random(shape[-1]) + .5).astype('float32')
    b = rng.standard_normal(shape[-1]).astype('float32')
    grad = paddle.to_tensor(rng.standard_normal(shape).astype('float32'))
    ours = LayerNorm(shape[-1], epsilon=epsilon)
    stock = nn.LayerNorm(shape[-1], epsilon=epsilon)
    for layer in (ours, stock):
        layer.weight.set_value(w)
        layer.bias.set_value(b)
    results = []
    for layer in (ours, stock):
        x_t, = _tensors(x)
        results.append(_values_and_grads(layer(x_t), [x_t, layer.weight, layer.bias], grad))
    assert calls == {'layer_norm': 1}
    for a, b_ in zip(*results):
        np.testing.assert_allclose(a, b_, rtol=2e-5, atol=2e-5)


def test_gelu_matches_paddle_including_tails_and_non_finite(calls):
    x = np.concatenate([np.linspace(-30, 30, 6001), [-1e4, -88, -87, 1e-30, 88, 1e4]]).astype('float32')
    x_t, = _tensors(x)
    ours = _grads(GELU(), [x_t], paddle.ones_like(x_t))
    x_t, = _tensors(x)
    stock = _grads(F.gelu, [x_t], paddle.ones_like(x_t))
    assert calls == {'gelu': 1}
    for a, b in zip(ours, stock):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6)
    special = paddle.to_tensor([np.nan, np.inf, -np.inf], stop_gradient=False)
    out = GELU()(special).numpy()
    assert np.isnan(out[0]) and out[1] == np.inf and np.isnan(out[2]) == np.isnan(F.gelu(special).numpy()[2])


@pytest.mark.parametrize('batch,height,width,channels,kernel', [
    (2, 5, 7, 6, 3), (3, 4, 4, 8, 5), (1, 1, 3, 4, 3), (2, 9, 2, 3, 7)])
def test_depthwise_conv_on_tokens_matches_the_nchw_conv(batch, height, width, channels, kernel, calls):
    paddle.seed(0)
    conv = Conv2D(channels, channels, kernel, padding=kernel // 2, groups=channels)
    tokens = paddle.randn([batch, height * width, channels])
    grad = paddle.randn([batch, height * width, channels])

    def stock(x):
        image = x.transpose([0, 2, 1]).reshape([batch, channels, height, width])
        return F.conv2d(image, conv.weight, conv.bias, padding=kernel // 2,
                        groups=channels).flatten(2).transpose([0, 2, 1])
    results = []
    for fn in (lambda x: conv_tokens(conv, x, (height, width)), stock):
        x, = _tensors(tokens.numpy())
        results.append(_values_and_grads(fn(x), [x, conv.weight, conv.bias], grad))
    assert calls == {'depthwise_conv_tokens': 1}
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    with paddle.no_grad():      # inference takes the kernel too
        np.testing.assert_allclose(conv_tokens(conv, tokens, (height, width)).numpy(), results[1][0],
                                   rtol=1e-5, atol=1e-5)
    assert calls == {'depthwise_conv_tokens': 2}


@pytest.mark.parametrize('kwargs', [dict(stride=2, padding=1), dict(padding=0), dict(dilation=2, padding=2)])
def test_other_convs_on_tokens_take_paddles_path(kwargs, calls):
    conv = Conv2D(4, 4, 3, groups=4, **kwargs)
    tokens = paddle.randn([2, 36, 4])
    out = conv_tokens(conv, tokens, (6, 6))
    image = tokens.transpose([0, 2, 1]).reshape([2, 4, 6, 6])
    np.testing.assert_allclose(out.numpy(), conv(image).flatten(2).transpose([0, 2, 1]).numpy(), rtol=1e-6)
    assert 'depthwise_conv_tokens' not in calls          # the image path (Conv2D's own kernels)


def _peripheral_stock(dots, position, scale):
    dots = dots * scale
    content = paddle.exp(dots - dots.max(axis=-1, keepdim=True).detach())
    attn = content * position
    return attn / paddle.clip(attn.sum(axis=-1, keepdim=True), min=1e-12)


@pytest.mark.parametrize('position_scale,scale', [(1.0, 1.0), (1.0, 0.125), (1e-15, 0.5)])   # 1e-15: every
def test_peripheral_attention_matches_the_composite(position_scale, scale):                  # row sum clipped
    rng = np.random.default_rng(1)
    dots = (rng.standard_normal((3, 2, 7, 7)) * 4).astype('float32')
    position = (1 / (1 + np.exp(-3 * rng.standard_normal((1, 2, 7, 7)))) * position_scale).astype('float32')
    grad = paddle.to_tensor(rng.standard_normal((3, 2, 7, 7)).astype('float32'))
    ours = _grads(lambda d, p: fused.peripheral_attention(d, p, scale), _tensors(dots, position), grad)
    stock = _grads(lambda d, p: _peripheral_stock(d, p, scale), _tensors(dots, position), grad)
    for a, b in zip(ours, stock):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6 * np.abs(b).max())


@pytest.mark.parametrize('shape,scale', [((3, 2, 7, 7), 0.125), ((2, 1, 5, 730), 1.0), ((4, 1), 0.5)])
def test_scaled_softmax_matches_paddle_and_writes_over_its_input(shape, scale):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(shape) * 6).astype('float32')
    grad = paddle.to_tensor(rng.standard_normal(shape).astype('float32'))
    ours = _grads(lambda t: fused.scaled_softmax_(t * 1.0, scale), _tensors(x), grad)
    stock = _grads(lambda t: F.softmax(t * scale), _tensors(x), grad)
    for a, b in zip(ours, stock):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6 * np.abs(b).max())
    product = paddle.to_tensor(x)
    result = fused.scaled_softmax_(product, scale)
    assert result.data_ptr() == product.data_ptr()
    np.testing.assert_array_equal(product.numpy(), result.numpy())


def _saved_bytes(fn, *inputs):
    """The result of fn(*inputs) and the bytes of the distinct tensors autograd keeps for its backward."""
    kept = {}

    def pack(t):
        kept[t.data_ptr()] = t.numel().item() * t.element_size()
        return t
    with paddle.autograd.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*inputs)
    return out, sum(kept.values())


def _paddle_abs_clamp(x, low, high):
    return paddle.sign(x) * paddle.clip(paddle.abs(x), low, high)


def test_clamp_magnitude_matches_the_composite_and_keeps_only_its_input(calls):
    """Values and gradients at and beyond both bounds and at 0; the values of infinities and NaN
    (Paddle's composite gives a NaN gradient at an infinity: 0 here); one tensor kept, not four."""
    low, high = 1e-4, 1e4
    edges = np.array([0., -0., 1e-4, -1e-4, 1e4, -1e4, 5e-5, -2e4, 1e-30], 'float32')
    spread = np.random.default_rng(4).standard_normal(500) * 10 ** np.linspace(-6, 6, 500)
    x = np.concatenate([edges, spread]).astype('float32')
    grad = paddle.to_tensor(np.random.default_rng(5).standard_normal(x.shape).astype('float32'))
    ours = _grads(lambda t: clamp_magnitude(t, low, high), _tensors(x), grad)
    assert calls == {'abs_clamp': 1}
    stock = _grads(lambda t: _paddle_abs_clamp(t, low, high), _tensors(x), grad)
    for a, b in zip(ours, stock):
        np.testing.assert_array_equal(a, b)
    special = paddle.to_tensor([np.inf, -np.inf, np.nan])
    np.testing.assert_array_equal(clamp_magnitude(special, low, high).numpy(),
                                  _paddle_abs_clamp(special, low, high).numpy())
    x_t, = _tensors(x.reshape(-1, 1))
    _, ours_kept = _saved_bytes(lambda t: clamp_magnitude(t, low, high), x_t)
    _, stock_kept = _saved_bytes(lambda t: _paddle_abs_clamp(t, low, high), x_t)
    assert ours_kept == x.nbytes and stock_kept >= 3 * x.nbytes


def test_drop_path_scales_rows_like_paddles_ops_and_keeps_only_the_scales(monkeypatch, calls):
    """The same draws give the same branches and gradients (to the last bit of 1 / keep_prob);
    the kernel keeps B scales for the backward pass where Paddle's multiply keeps the branch."""
    x = np.random.default_rng(6).standard_normal((8, 5, 6)).astype('float32')
    grad = paddle.to_tensor(np.random.default_rng(7).standard_normal(x.shape).astype('float32'))
    results, kept = [], []
    for switch in ('1', '0'):
        monkeypatch.setenv('PADDLEVIT_FUSED_CPU_OPS', switch)
        paddle.seed(3)
        x_t, = _tensors(x)
        out, saved = _saved_bytes(lambda t: drop_path(t, 0.5, training=True), x_t)
        results.append(_values_and_grads(out, [x_t], grad))
        kept.append(saved)
    assert calls == {'scale_rows': 1}
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=0)
    dropped = np.abs(results[0][0]).reshape(8, -1).max(axis=1) == 0
    assert 0 < dropped.sum() < 8                    # seed 3 drops some rows and keeps others
    assert kept[0] == 8 * 4 and kept[1] >= x.nbytes


def test_gelu_then_linear_matches_the_two_layers_and_keeps_only_the_gelus_input(monkeypatch, calls):
    """An MLP's second half in one kernel: Paddle's values and gradients (x, weight, bias), with
    gelu(x) computed again in the backward pass instead of kept; a hooked layer runs as it is."""
    paddle.seed(8)
    act, fc = GELU(), Linear(24, 10)
    x = np.random.default_rng(8).standard_normal((3, 7, 24)).astype('float32') * 3
    grad = paddle.to_tensor(np.random.default_rng(9).standard_normal((3, 7, 10)).astype('float32'))
    results, kept = [], []
    for switch in ('1', '0'):
        monkeypatch.setenv('PADDLEVIT_FUSED_CPU_OPS', switch)
        x_t, = _tensors(x)
        out, saved = _saved_bytes(lambda t: gelu_linear(act, fc, t), x_t)
        results.append(_values_and_grads(out, [x_t, fc.weight, fc.bias], grad))
        kept.append(saved)
    assert calls == {'gelu_linear': 1}
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    weight_bytes = 24 * 10 * 4
    assert kept[0] == x.nbytes + weight_bytes and kept[1] >= 2 * x.nbytes + weight_bytes
    monkeypatch.setenv('PADDLEVIT_FUSED_CPU_OPS', '1')
    handle = act.register_forward_post_hook(lambda layer, inputs, output: None)
    gelu_linear(act, fc, paddle.to_tensor(x))
    handle.remove()
    assert calls == {'gelu_linear': 1, 'gelu': 1, 'linear': 1}


@pytest.mark.parametrize('shape, groups, epsilon', [((196, 12, 16, 16), 12, 1e-5), ((5, 3, 14, 14), 3, 1e-5),
                                                    ((2, 64, 9, 7), 32, 1e-6), ((3, 6, 10), 2, 1e-5), ((1, 4, 1, 1), 2, 1e-5)])
def test_group_norm_matches_paddle(shape, groups, epsilon, monkeypatch, calls):
    """Values and the three gradients: one group per channel (PerViT's position encoding), several
    channels per group (ViT-R50's stem), a 1-D map, a group of two single pixels."""
    rng = np.random.default_rng(10)
    x = (rng.standard_normal(shape) * 2 + 0.5).astype('float32')
    grad = paddle.to_tensor(rng.standard_normal(shape).astype('float32'))
    norm = GroupNorm(groups, shape[1], epsilon=epsilon)
    norm.weight.set_value(rng.standard_normal(shape[1]).astype('float32'))
    norm.bias.set_value(rng.standard_normal(shape[1]).astype('float32'))
    results = []
    for switch in ('1', '0'):
        monkeypatch.setenv('PADDLEVIT_FUSED_CPU_OPS', switch)
        x_t, = _tensors(x)
        results.append(_values_and_grads(norm(x_t), [x_t, norm.weight, norm.bias], grad))
    assert calls == {'group_norm': 1}
    for name, a, b in zip(('out', 'x', 'weight', 'bias'), *results):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-4 * max(1., np.abs(b).max()), err_msg=name)


def test_mlp_fuses_its_second_half_unless_dropout_is_drawn(calls):
    mlp = Mlp(16, 32, drop=0.1)
    x = paddle.randn([2, 5, 16])
    mlp.eval()
    mlp(x)
    assert calls == {'linear': 1, 'gelu_linear': 1}
    mlp.train()
    mlp(x)
    assert calls == {'linear': 3, 'gelu_linear': 1, 'gelu': 1}


def _sdpa(qkv):
    return F.scaled_dot_product_attention(*qkv.unbind(axis=2))


def _needs_gemm_kernels():
    if not fused.gemm_kernels_available():
        pytest.skip('this Paddle ships no BLAS to build the GEMM kernels against')


@pytest.mark.parametrize('shape', [(2, 9, 3, 3, 8), (3, 130, 3, 2, 16), (1, 1, 3, 1, 4), (2, 197, 3, 6, 64)])
def test_attention_kernel_matches_paddles_sdpa_values_and_gradients(shape, calls):
    """Query blocks of 64 with a partial last one, a single token, ViT-S's shape."""
    _needs_gemm_kernels()
    rng = np.random.default_rng(3)
    qkv = (rng.standard_normal(shape) * 4).astype('float32')
    grad = paddle.to_tensor(rng.standard_normal(shape[:2] + shape[3:]).astype('float32'))
    ours = _grads(multi_head_attention, _tensors(qkv), grad)
    assert calls == {'attention': 1}
    stock = _grads(_sdpa, _tensors(qkv), grad)
    for a, b in zip(ours, stock):     # dq of a single token is 0 up to the rounding of rowsum(do * o)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())
    with paddle.no_grad():
        np.testing.assert_allclose(multi_head_attention(paddle.to_tensor(qkv)).numpy(), stock[0],
                                   rtol=1e-5, atol=2e-6 * np.abs(stock[0]).max())
    assert calls == {'attention': 2}


def test_attention_dropout_in_training_takes_the_softmax_kernel(calls):
    """Dropout needs the whole score matrix: matmul, the fused softmax in place, dropout, matmul."""
    rng = np.random.default_rng(3)
    qkv = rng.standard_normal((2, 9, 3, 3, 8)).astype('float32')
    grad = paddle.to_tensor(rng.standard_normal((2, 9, 3, 8)).astype('float32'))
    _needs_gemm_kernels()
    multi_head_attention(paddle.to_tensor(qkv), attn_drop=0.5, training=False)     # no dropout in eval
    assert calls == {'attention': 1}
    paddle.seed(0)
    dropped = _grads(lambda t: multi_head_attention(t, attn_drop=0.5, training=True), _tensors(qkv), grad)
    assert calls == {'attention': 1, 'scaled_softmax_': 1}
    paddle.seed(0)
    q, k, v = (t.transpose([0, 2, 1, 3]) for t in paddle.to_tensor(qkv).unbind(axis=2))
    attn = F.dropout(F.softmax(paddle.matmul(q, k, transpose_y=True) * 8 ** -0.5), 0.5, training=True)
    np.testing.assert_allclose(dropped[0], paddle.matmul(attn, v).transpose([0, 2, 1, 3]).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_gemm_kernels_link_to_the_wheels_blas():
    compile_flags, _ = build.blas_flags()
    if not compile_flags:
        pytest.skip('this Paddle ships no BLAS')
    assert fused.gemm_kernels_available()
    library = build.library_path(build.build_directory())
    with open(library, 'rb') as f:
        assert b'libmklml_intel.so' in f.read()


def _without_gemm_kernels_where_unavailable(kernels):
    """The kernels a model takes where the wheel ships no BLAS: Paddle's dense conv, and
    attention's softmax kernel in place of the whole attention."""
    if fused.gemm_kernels_available():
        return kernels
    return {'scaled_softmax_' if k == 'attention' else k for k in kernels} - {'conv'}


@pytest.mark.parametrize('config,kernels', [
    (os.path.join(FIXTURES, 'vit_mini', 'vit_mini.yaml'), {'layer_norm', 'gelu_linear', 'conv', 'attention', 'linear'}),
    (os.path.join(CONFIGS, 'PiT', 'configs', 'pit_ti_224.yaml'),
     {'layer_norm', 'gelu_linear', 'conv', 'attention', 'linear', 'depthwise_conv_image'}),
    (os.path.join(FIXTURES, 'pervit_mini', 'pervit_mini.yaml'),
     {'layer_norm', 'gelu_linear', 'conv', 'depthwise_conv_tokens', 'peripheral_attention', 'linear', 'group_norm'}),
    pytest.param(os.path.join(CONFIGS, 'SPViT', 'configs', 'spvit_s_224.yaml'),   # full size: slow
                 {'layer_norm', 'gelu_linear', 'conv', 'depthwise_conv_tokens', 'attention', 'linear'}, marks=pytest.mark.slow),
    (os.path.join(FIXTURES, 'vvt_mini', 'vvt_mini.yaml'), {'layer_norm', 'gelu_linear', 'conv', 'depthwise_conv_tokens', 'linear', 'abs_clamp'})])
def test_models_give_the_same_gradients_with_and_without_the_kernels(config, kernels, monkeypatch, calls):
    kernels = _without_gemm_kernels_where_unavailable(kernels)
    paddle.seed(0)
    cfg, model = build_from_config(config)
    model.eval()                     # no dropout draws; gradients still flow
    images = paddle.randn([2, cfg.DATA.IMAGE_CHANNELS, cfg.DATA.IMAGE_SIZE, cfg.DATA.IMAGE_SIZE])
    results = []
    for switch in ('1', '0'):
        monkeypatch.setenv('PADDLEVIT_FUSED_CPU_OPS', switch)
        out = model(images)
        out = out if isinstance(out, paddle.Tensor) else out[0]
        (out * paddle.arange(out.shape[-1], dtype='float32')).sum().backward()
        results.append((out.numpy(), {n: p.grad.numpy() for n, p in model.named_parameters()
                                      if p.grad is not None}))
        model.clear_gradients()
    assert set(calls) == kernels, calls
    (out_a, grads_a), (out_b, grads_b) = results
    np.testing.assert_allclose(out_a, out_b, rtol=1e-4, atol=1e-5)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        scale = max(np.abs(grads_b[name]).max(), 1e-6)
        np.testing.assert_allclose(grads_a[name] / scale, grads_b[name] / scale, atol=1e-4, err_msg=name)


@pytest.mark.parametrize('config,kernels', [
    (os.path.join(FIXTURES, 'vit_mini', 'vit_mini.yaml'), {'layer_norm', 'gelu_linear', 'conv', 'attention', 'linear'}),
    (os.path.join(CONFIGS, 'PiT', 'configs', 'pit_ti_224.yaml'),
     {'layer_norm', 'gelu_linear', 'conv', 'attention', 'linear', 'depthwise_conv_image'}),
    (os.path.join(FIXTURES, 'pervit_mini', 'pervit_mini.yaml'),
     {'layer_norm', 'gelu_linear', 'conv', 'depthwise_conv_tokens', 'peripheral_attention', 'linear', 'group_norm'}),
    pytest.param(os.path.join(CONFIGS, 'SPViT', 'configs', 'spvit_s_224.yaml'),   # full size: slow
                 {'layer_norm', 'gelu_linear', 'conv', 'depthwise_conv_tokens', 'attention', 'linear'}, marks=pytest.mark.slow),
    (os.path.join(FIXTURES, 'vvt_mini', 'vvt_mini.yaml'), {'layer_norm', 'gelu_linear', 'conv', 'depthwise_conv_tokens', 'linear', 'abs_clamp'})])
def test_models_evaluate_the_same_with_and_without_the_kernels(config, kernels, monkeypatch, calls):
    kernels = _without_gemm_kernels_where_unavailable(kernels)
    paddle.seed(0)
    cfg, model = build_from_config(config)
    model.eval()
    images = paddle.randn([2, cfg.DATA.IMAGE_CHANNELS, cfg.DATA.IMAGE_SIZE, cfg.DATA.IMAGE_SIZE])
    logits = []
    for switch in ('1', '0'):
        monkeypatch.setenv('PADDLEVIT_FUSED_CPU_OPS', switch)
        with paddle.no_grad():
            out = model(images)
        logits.append((out if isinstance(out, paddle.Tensor) else out[0]).numpy())
    assert set(calls) == kernels, calls
    np.testing.assert_allclose(logits[0], logits[1], rtol=1e-4, atol=1e-5)


def test_traced_graphs_and_other_dtypes_keep_paddles_ops(calls):
    """A portable export must not need the library: to_static traces the stock ops outside
    `dispatch.kernels_in_graph()`; float64 takes them too."""
    net = nn.Sequential(LayerNorm(8), GELU())
    net.train()
    program = paddle.jit.to_static(net.forward, full_graph=True, input_spec=[
        paddle.static.InputSpec([None, 8], 'float32')]).concrete_program.main_program
    ops = [op.name() for op in program.global_block().ops]
    assert 'pd_op.layer_norm' in ops and 'pd_op.gelu' in ops and not any('fused' in o for o in ops), ops
    x = paddle.randn([3, 8], dtype='float64')
    x.stop_gradient = False
    net64 = nn.Sequential(LayerNorm(8), GELU())
    net64.to(dtype='float64')
    net64(x).sum().backward()
    assert calls == {}


def test_switched_off_or_failed_build_falls_back_with_one_warning(monkeypatch, caplog, calls):
    x = paddle.randn([2, 4])
    x.stop_gradient = False
    monkeypatch.setenv('PADDLEVIT_FUSED_CPU_OPS', '0')
    assert not dispatch.wanted(x)
    monkeypatch.delenv('PADDLEVIT_FUSED_CPU_OPS')

    def broken_build():
        raise RuntimeError('g++: command not found')
    monkeypatch.setattr(build, 'load_library', broken_build)
    monkeypatch.setitem(fused._state, 'loaded', None)
    with caplog.at_level(logging.WARNING, logger='engine.cpu.kernels'):
        layer = LayerNorm(4)
        for _ in range(2):
            layer(x).sum().backward()
    assert calls == {}
    warnings = [r for r in caplog.records if 'unavailable' in r.getMessage()]
    assert len(warnings) == 1 and 'g++: command not found' in warnings[0].getMessage()


def test_windows_runs_paddles_ops_without_a_build_or_a_warning(monkeypatch, caplog, calls):
    """No `fcntl` for the build's lock, no -march=native compiler: the kernels are not tried."""
    monkeypatch.setattr(dispatch, 'POSIX', False)
    monkeypatch.setitem(fused._state, 'loaded', None)
    monkeypatch.setattr(build, 'load_library', lambda: pytest.fail('a build was tried'))
    x = paddle.randn([2, 4])
    layer = LayerNorm(4)
    with caplog.at_level(logging.WARNING):
        out = layer(x)
    np.testing.assert_allclose(out.numpy(), F.layer_norm(x, 4, layer.weight, layer.bias).numpy(), rtol=1e-6)
    assert calls == {} and not caplog.records


def test_a_moved_custom_op_entry_point_falls_back_with_one_warning(monkeypatch, caplog):
    """The kernels are called through Paddle's private `_C_ops._run_custom_op`; if a
    release moves it, the first use warns once and Paddle's ops run instead."""
    monkeypatch.delattr(paddle._C_ops, '_run_custom_op')
    monkeypatch.setitem(fused._state, 'loaded', None)
    x = paddle.randn([3, 4])
    x.stop_gradient = False
    with caplog.at_level(logging.WARNING, logger='engine.cpu.kernels'):
        layer = LayerNorm(4)
        for _ in range(2):
            out = layer(x)
            out.sum().backward()
    np.testing.assert_allclose(out.numpy(), F.layer_norm(x, 4, layer.weight, layer.bias).numpy(), rtol=1e-6)
    warnings = [r for r in caplog.records if 'unavailable' in r.getMessage()]
    assert len(warnings) == 1 and '_run_custom_op' in warnings[0].getMessage()


@pytest.mark.slow
def test_cold_build_by_two_processes_at_once(tmp_path):
    """Two ranks starting together on a machine without the cache: one compiles
    (under the lock), the other waits and loads the result; both run the kernels."""
    # logging is set up after `import paddle`: Paddle 3.0's import sets the root logger to
    # WARNING (its distributed get_logger), which hid the 'compiling' line of both ranks
    script = ('import logging, sys; sys.path.insert(0, %r)\n'
              'from engine.cpu import kernels\n'
              'logging.basicConfig(level=logging.INFO, force=True)\n'
              'assert kernels.available(), "fell back"\n' % os.path.join(REPO, 'image_classification'))
    env = dict(os.environ, PADDLEVIT_KERNEL_DIR=str(tmp_path))
    ranks = [subprocess.Popen([sys.executable, '-c', script], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    logs = [rank.communicate(timeout=300)[0] for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], logs
    assert sum('compiling the fused CPU kernels' in log for log in logs) == 1, logs
    builds = [d for d in os.listdir(tmp_path) if os.path.isdir(tmp_path / d)]
    assert len(builds) == 1 and build.built_for(str(tmp_path / builds[0]), build.build_key())


def test_cache_key_tells_paddle_builds_python_abis_and_cpus_apart(monkeypatch, tmp_path):
    """A library built for another Paddle is not an error Python can catch: 3.3.1's loaded
    under 3.0.0 ended the process with "symbol lookup error".  So every Paddle build
    (version, commit: the CPU and GPU wheels of one release share a version; CUDA), Python
    ABI and CPU instruction set (-march=native) has its own build directory."""
    monkeypatch.setenv('PADDLEVIT_KERNEL_DIR', str(tmp_path))
    base = build.build_directory()
    assert build.build_directory() == base and os.path.dirname(base) == str(tmp_path)
    real_config_var = build.sysconfig.get_config_var
    changes = {
        'paddle version': lambda m: m.setattr(paddle, '__version__', paddle.__version__ + '.post1'),
        'paddle commit': lambda m: m.setattr(paddle.version, 'commit', 'f' * 40),
        'paddle cuda': lambda m: m.setattr(paddle.version, 'cuda', lambda: '12.6'),
        'python abi': lambda m: m.setattr(build.sysconfig, 'get_config_var', lambda name: (
            '.cpython-311t-x86_64-linux-gnu.so' if name == 'EXT_SUFFIX' else real_config_var(name))),
        'cpu flags': lambda m: m.setattr(build, 'cpu_identity', lambda: 'flags\t: fpu sse2 avx2'),
        'compiler flags': lambda m: m.setattr(build, 'CXX_FLAGS', build.CXX_FLAGS + ['-DNDEBUG']),
        'kernel isa': lambda m: m.setenv('PADDLEVIT_KERNEL_ISA', 'avx2'),
    }
    for what, change in changes.items():
        with monkeypatch.context() as m:
            change(m)
            assert build.build_directory() != base, what
    assert build.build_directory() == base


def test_kernel_isa_switch_picks_the_target_and_refuses_what_it_cannot_build(monkeypatch):
    """PADDLEVIT_KERNEL_ISA=avx2 holds the kernels to AVX2 + FMA (as oneDNN and MKL are held by
    their own variables); a value it does not know is the user's error, named with what is allowed,
    never a silent fallback to Paddle's slower ops."""
    for value, march in (('', '-march=native'), ('native', '-march=native'), (' AVX2 ', '-march=haswell')):
        monkeypatch.setenv('PADDLEVIT_KERNEL_ISA', value)
        flags = build.build_key()['flags'].split()
        assert march in flags and sum(f.startswith('-march=') for f in flags) == 1
    monkeypatch.setenv('PADDLEVIT_KERNEL_ISA', 'avx1024')
    with pytest.raises(settings.KernelIsaError, match=r"PADDLEVIT_KERNEL_ISA='avx1024'.*allowed: native, avx2"):
        build.build_key()
    monkeypatch.setattr(fused, '_state', {'loaded': None})
    with pytest.raises(settings.KernelIsaError):
        fused.available()


def test_a_bad_kernel_isa_ends_an_entry_point_with_its_message():
    script = ('import sys; sys.path[:0] = [{!r}]\n'
              'import engine; engine.prepare_process(); print("not reached")\n').format(
                  os.path.join(REPO, 'image_classification'))
    proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PADDLEVIT_KERNEL_ISA='sse9'))
    assert proc.returncode == 2 and 'not reached' not in proc.stdout
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip().splitlines()[-1]]     # one line
    assert "PADDLEVIT_KERNEL_ISA='sse9'" in proc.stderr and 'Traceback' not in proc.stderr


def test_cpu_identity_names_the_instruction_set_on_x86_and_arm(tmp_path):
    x86 = 'processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu sse2 avx2 avx512f\nbogomips\t: 4000\n'
    arm = 'processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd sve\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n'
    identities = {}
    for name, text in {'x86': x86, 'x86 without avx512': x86.replace(' avx512f', ''),
                       'arm': arm, 'arm without sve': arm.replace(' sve', '')}.items():
        (tmp_path / name).write_text(text)
        identities[name] = build.cpu_identity(str(tmp_path / name))
    assert len(set(identities.values())) == 4
    assert 'bogomips' not in identities['x86'] and 'BogoMIPS' not in identities['arm']   # varies at run time


@pytest.fixture
def fake_compiler(monkeypatch, tmp_path):
    """`load_library` on a faked CPU (`cpu`), with Paddle's compiler and registration faked:
    a "library" holds the CPU identity it was built for; returns the lists of what was
    compiled and what was registered (the identity each library read holds)."""
    monkeypatch.setenv('PADDLEVIT_KERNEL_DIR', str(tmp_path))
    cpu = {'identity': 'model name\t: Xeon\nflags\t\t: fpu sse2 avx2 avx512f'}
    compiled, registered = [], []

    def load(name, sources, extra_cxx_cflags, extra_ldflags, build_directory):
        os.makedirs(os.path.join(build_directory, name), exist_ok=True)
        with open(os.path.join(build_directory, name, name + '.so'), 'w') as f:
            f.write(cpu['identity'])
        compiled.append(cpu['identity'])

    def register(library):
        with open(library) as f:
            registered.append(f.read())
    from paddle.utils import cpp_extension
    monkeypatch.setattr(cpp_extension, 'load', load)
    monkeypatch.setattr(build, 'register', register)
    monkeypatch.setattr(build, 'cpu_identity', lambda: cpu['identity'])
    return cpu, compiled, registered


def test_a_cached_library_is_verified_before_it_is_loaded(fake_compiler):
    """Built once, then loaded from the cache; a library changed after its build (half
    written, replaced) does not match its manifest and is rebuilt, not loaded."""
    cpu, compiled, registered = fake_compiler
    build.load_library()
    build.load_library()
    assert compiled == registered[:1] and registered == [cpu['identity']] * 2
    with open(build.library_path(build.build_directory()), 'a') as f:
        f.write('x')
    build.load_library()
    assert len(compiled) == 2 and registered[-1] == cpu['identity']


def test_a_library_built_for_another_cpu_is_rebuilt_not_loaded(fake_compiler):
    """Nodes that share a home folder share the cache.  A library built with -march=native on
    an AVX-512 node, found by an AVX2 node under its own key (a copied cache, a build of an
    older version of this module without a manifest), is rebuilt for the AVX2 node."""
    cpu, compiled, registered = fake_compiler
    build.load_library()
    avx512 = build.build_directory()
    cpu['identity'] = cpu['identity'].replace(' avx512f', '')
    avx2 = build.build_directory()
    assert avx2 != avx512
    shutil.copytree(avx512, avx2)                           # the AVX-512 binary, where the AVX2 node looks
    build.load_library()
    assert registered == compiled == [compiled[0], cpu['identity']]
    os.remove(os.path.join(avx2, build.MANIFEST))           # an older build: a library without a manifest
    build.load_library()
    assert len(compiled) == 3 and registered[-1] == cpu['identity']


def test_paddles_private_entry_points_still_serve():
    """The kernels are registered and run through two private Paddle entry points (see
    `build.register` and `kernels._run`); with no fallback in the way, a Paddle release
    that moves either fails here, loudly."""
    build.load_library()
    fused._smoke_test()


@pytest.mark.slow
def test_a_wheel_without_blas_builds_the_other_kernels_and_falls_back(tmp_path):
    """Where Paddle's wheel ships no MKL, the GEMM kernels are left out of the build and
    attention and dense convolutions without gradients take Paddle's ops."""
    script = textwrap.dedent('''
        import sys; sys.path.insert(0, %r)
        import numpy as np, paddle, paddle.nn.functional as F
        from engine.cpu import build, kernels
        from engine.layers import Conv2D, multi_head_attention
        build.blas_flags = lambda: ([], [])
        assert kernels.available() and not kernels.gemm_kernels_available()
        qkv = paddle.randn([2, 70, 3, 2, 8])
        conv = Conv2D(3, 6, 4, stride=2, padding=1)
        x = paddle.randn([2, 3, 12, 12])
        with paddle.no_grad():
            np.testing.assert_allclose(multi_head_attention(qkv).numpy(),
                                       F.scaled_dot_product_attention(*qkv.unbind(2)).numpy(), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(conv(x).numpy(), F.conv2d(x, conv.weight, conv.bias, 2, 1).numpy(),
                                       rtol=1e-5, atol=1e-5)
        print('fell back')
    ''' % os.path.join(REPO, 'image_classification'))
    env = dict(os.environ, PADDLEVIT_KERNEL_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and 'fell back' in done.stdout, done.stdout + done.stderr


def test_results_do_not_depend_on_the_thread_count(monkeypatch):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((64, 96)).astype('float32')
    w, b = np.ones(96, 'float32'), np.zeros(96, 'float32')
    results = []
    for threads in (1, 3):
        monkeypatch.setattr(settings, 'threads', threads)
        results.append(_grads(lambda x_, w_, b_: fused.layer_norm(x_, w_, b_, 1e-6),
                              _tensors(x, w, b), paddle.to_tensor(x)))
    for a, b_ in zip(*results):
        np.testing.assert_allclose(a, b_, rtol=1e-5, atol=1e-5)
