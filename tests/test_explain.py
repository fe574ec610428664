"""Class-specific relevance maps (engine/explain, tools/explain.py; issue #26).

The rules and maps are checked against their definitions computed another way:
each LRP rule of `engine.explain.lrp_rules` (closed forms in numpy) against the
reference's definition through Paddle's autograd on random inputs; the `gradient`
and `lrp` maps of a 2-block ViT against a re-implementation of that model in
plain Paddle ops whose attention matrices are explicit tensors (no hooks, no
engine rule), with the rules again by autograd.
"""
import os

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest
from PIL import Image

from conftest import REPO
from engine import attention_dispatch as dispatch
from engine.explain import ExplainError, aggregate, explain, lrp_rules as rules, supported_methods
from engine.explain.capture import Recorder, attention_layer_names, recording
from engine.families import build_from_config

from tools import make_explain_figures as figures
from tools.explain import main as tool_main

IC = os.path.join(REPO, 'image_classification')
VIT_DEMO = os.path.join(IC, 'ViT', 'configs', 'vit_demo_digits_32.yaml')
RNG = np.random.default_rng(0)


# ----------------------------------------------------------------- the rules' definitions (autograd)
def _t(a):
    return paddle.to_tensor(a, dtype='float64', stop_gradient=False)


def grad_times_input(f, x, relevance):
    """The reference's default rule: R_x = x * d<f(x), R / f(x)>/dx."""
    x = _t(x)
    y = f(x)
    (g,) = paddle.grad(y, [x], grad_outputs=[_t(rules.safe_divide(relevance, y.numpy()))])
    return x.numpy() * g.numpy()


def alpha_beta(f, x, relevance):
    """The reference's alpha 1 / beta 0 rule for a linear map f (its weight split by sign in f_pos / f_neg)."""
    f_pos, f_neg = f
    xp, xn = _t(np.maximum(x, 0)), _t(np.minimum(x, 0))
    z = f_pos(xp) + f_neg(xn)
    gp, gn = paddle.grad(z, [xp, xn], grad_outputs=[_t(rules.safe_divide(relevance, z.numpy()))])
    return xp.numpy() * gp.numpy() + xn.numpy() * gn.numpy()


def product_rule(a, b, relevance):
    """The reference's rule for Z = a @ b: each input times the gradient of <Z, R / Z>."""
    ta, tb = _t(a), _t(b)
    z = paddle.matmul(ta, tb)
    ga, gb = paddle.grad(z, [ta, tb], grad_outputs=[_t(rules.safe_divide(relevance, z.numpy()))])
    return a * ga.numpy(), b * gb.numpy()


def layer_norm_ops(t, gamma, beta, eps):
    """LayerNorm over the last axis in elementary ops.  Not `F.layer_norm`: in Paddle 3.3.1 on CPU its
    input gradient leaves the scale out (it equals the gradient with gamma = 1; measured against
    finite differences), so it cannot define a rule.  The engine's LayerNorm runs its own kernel."""
    centred = t - t.mean(-1, keepdim=True)
    return centred / paddle.sqrt((centred * centred).mean(-1, keepdim=True) + eps) * gamma + beta


def _split(w):
    return np.maximum(w, 0), np.minimum(w, 0)


def test_linear_rule_is_alpha_beta():
    x, w, r = RNG.normal(size=(5, 6)), RNG.normal(size=(6, 4)), RNG.normal(size=(5, 4))
    wp, wn = _split(w)
    expected = alpha_beta((lambda t: paddle.matmul(t, _t(wp)), lambda t: paddle.matmul(t, _t(wn))), x, r)
    np.testing.assert_allclose(rules.linear(x, w, r), expected, rtol=1e-9, atol=1e-12)


def test_depthwise_conv_rule_is_alpha_beta():
    x, w, r = RNG.normal(size=(3, 5, 4)), RNG.normal(size=(3, 1, 3, 3)), RNG.normal(size=(3, 5, 4))
    wp, wn = _split(w)
    conv = lambda weight: lambda t: F.conv2d(t[None], _t(weight), padding=1, groups=3)[0]   # noqa: E731
    np.testing.assert_allclose(rules.depthwise_conv(x, w, r), alpha_beta((conv(wp), conv(wn)), x, r),
                               rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize('layer', ['layer_norm', 'gelu', 'tanh', 'softmax'])
def test_gradient_times_input_rules(layer):
    x, r = RNG.normal(size=(4, 7)), RNG.normal(size=(4, 7))
    gamma, beta = RNG.normal(size=7), RNG.normal(size=7)
    ours, f = {
        'layer_norm': (rules.layer_norm(x, gamma, beta, 1e-6, r),
                       lambda t: layer_norm_ops(t, _t(gamma), _t(beta), 1e-6)),
        'gelu': (rules.gelu(x, r), F.gelu),
        'tanh': (rules.tanh(x, r), paddle.tanh),
        'softmax': (rules.softmax(x, r), lambda t: F.softmax(t, -1)),
    }[layer]
    np.testing.assert_allclose(ours, grad_times_input(f, x, r), rtol=1e-7, atol=1e-10)


def test_matmul_rule():
    a, b, r = RNG.normal(size=(2, 4, 3)), RNG.normal(size=(2, 3, 5)), RNG.normal(size=(2, 4, 5))
    for ours, expected in zip(rules.matmul(a, b, r), product_rule(a, b, r)):
        np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-12)


def test_add_rule_renormalises_at_the_residual():
    """z = a + b: the raw shares a R / z and b R / z, each rescaled to keep the total relevance,
    split by the magnitudes of the raw shares' sums."""
    a, b, r = RNG.normal(size=(3, 4)), RNG.normal(size=(3, 4)), RNG.normal(size=(3, 4))
    ra, rb = rules.add(a, b, r)
    raw_a, raw_b = a * r / (a + b), b * r / (a + b)
    share_a = abs(raw_a.sum()) / (abs(raw_a.sum()) + abs(raw_b.sum()))
    np.testing.assert_allclose(ra, raw_a * share_a * r.sum() / raw_a.sum(), rtol=1e-7)
    np.testing.assert_allclose(rb, raw_b * (1 - share_a) * r.sum() / raw_b.sum(), rtol=1e-7)
    np.testing.assert_allclose(ra.sum() + rb.sum(), r.sum(), rtol=1e-9)


def test_token_max_and_safe_divide():
    tokens = np.array([[1., 5.], [3., 2.]])
    np.testing.assert_array_equal(rules.token_max(tokens, np.array([0.7, -0.2])), [[0., -0.2], [0.7, 0.]])
    # 0 where the denominator is 0; elsewhere it is pushed 1e-9 away from 0 in its own sign
    np.testing.assert_allclose(rules.safe_divide(np.array([1., 2., 1.]), np.array([0., 4., -1e-12])),
                               [0., 2 / (4 + 1e-9), -1 / (1e-12 + 1e-9)], rtol=1e-12)


# ----------------------------------------------------------------- the attention switch and the hooks
def test_explicit_attention_makes_the_dispatch_form_the_probabilities():
    case = dispatch.Case('cpu', 'float32', None, 64, (3, 3), True, 0., True)
    assert dispatch.choose(case)[0] == dispatch.CPU_KERNELS
    assert dispatch.choose(case._replace(explicit=True))[0] == dispatch.MATH
    q = paddle.randn([1, 5, 2, 4])
    with dispatch.explicit_attention():
        with dispatch.explicit_attention():
            assert dispatch.describe(q, 0.).explicit
        assert dispatch.describe(q, 0.).explicit            # nesting: still inside the outer block
    assert not dispatch.describe(q, 0.).explicit


def _toy_vit(depth=2, classes=3, seed=0):
    paddle.seed(seed)
    _, model = build_from_config(VIT_DEMO, ['DATA.IMAGE_SIZE', '16', 'MODEL.PATCH_SIZE', '8', 'MODEL.EMBED_DIM', '8',
                                            'MODEL.DEPTH', str(depth), 'MODEL.NUM_HEADS', '2', 'MODEL.MLP_DIM', '16',
                                            'MODEL.NUM_CLASSES', str(classes)])
    rng = np.random.default_rng(seed)
    for p in model.parameters():           # the official init leaves biases ~0 and the tokens 0
        p.set_value(p.numpy() + 0.3 * rng.normal(size=p.shape).astype('float32'))
    model.eval()
    return model


def test_the_hooks_see_the_probabilities_only_on_the_explicit_path():
    model = _toy_vit()
    names = attention_layer_names(model)
    assert names == ['blocks.0.attn.attn_drop', 'blocks.1.attn.attn_drop']
    x = paddle.randn([1, 3, 16, 16])
    with recording(model, names) as rec:
        logits = model(x)
    a = rec[names[0]][1]
    assert a.shape == [1, 2, 5, 5] and not a.stop_gradient
    np.testing.assert_allclose(a.numpy().sum(-1), 1, rtol=1e-5)
    with Recorder(model, names) as plain:        # fused kernels (where built) never form A
        np.testing.assert_allclose(model(x).numpy(), logits.numpy(), atol=1e-5)
    assert dispatch.choose(dispatch.describe(paddle.randn([1, 5, 2, 4]), 0.))[0] != dispatch.MATH \
        or names[0] in plain
    with pytest.raises(KeyError, match='no_such'):
        Recorder(model, ['no_such'])


# ----------------------------------------------------------------- the whole maps, against plain Paddle
def _weights(layer):
    return {k: paddle.to_tensor(v.numpy().astype('float64')) for k, v in layer.state_dict().items()}


def reference_forward(model, image):
    """The toy ViT in plain float64 Paddle ops, every intermediate kept: (logit vector, steps) where
    steps holds, per block, the tensors the LRP definitions need."""
    w = _weights(model)
    p = model.patch_embed.proj
    x = F.conv2d(_t(image), w['patch_embed.proj.weight'], w['patch_embed.proj.bias'], stride=p._stride)
    x = paddle.concat([w['cls_token'], x.flatten(2).transpose([0, 2, 1])], 1) + w['pos_embed']
    blocks = []
    for i, block in enumerate(model.blocks):
        b = lambda k: w[f'blocks.{i}.{k}']     # noqa: E731
        s = {'x_in': x}
        heads, d = block.attn.num_heads, block.attn.head_dim
        s['n1'] = layer_norm_ops(x, b('norm1.weight'), b('norm1.bias'), 1e-6)
        qkv = (paddle.matmul(s['n1'], b('attn.qkv.weight')) + b('attn.qkv.bias'))
        q, k, v = qkv.reshape([1, -1, 3, heads, d]).transpose([2, 0, 3, 1, 4]).unbind(0)
        s['q'], s['k'], s['v'] = q[0], k[0], v[0]
        s['scores'] = paddle.matmul(s['q'], s['k'], transpose_y=True) * d ** -0.5
        s['A'] = F.softmax(s['scores'], -1)
        s['o'] = paddle.matmul(s['A'], s['v']).transpose([1, 0, 2]).reshape([1, -1, heads * d])
        s['attn_out'] = paddle.matmul(s['o'], b('attn.proj.weight')) + b('attn.proj.bias')
        x = x + s['attn_out']
        s['x_mid'] = x
        s['n2'] = layer_norm_ops(x, b('norm2.weight'), b('norm2.bias'), 1e-6)
        s['h'] = paddle.matmul(s['n2'], b('mlp.fc1.weight')) + b('mlp.fc1.bias')
        s['g'] = F.gelu(s['h'])
        s['mlp_out'] = paddle.matmul(s['g'], b('mlp.fc2.weight')) + b('mlp.fc2.bias')
        x = x + s['mlp_out']
        blocks.append(s)
    final = {'x': x, 'y': layer_norm_ops(x, w['norm.weight'], w['norm.bias'], 1e-6)}
    logits = paddle.matmul(final['y'][:, 0], w['head.weight']) + w['head.bias']
    return logits[0], blocks, final, w


def _linear_def(x, weight, r):
    wp, wn = _split(weight)
    return alpha_beta((lambda t: paddle.matmul(t, _t(wp)), lambda t: paddle.matmul(t, _t(wn))), x, r)


def _add_def(a, b, r):
    raw_a, raw_b = a * rules.safe_divide(r, a + b), b * rules.safe_divide(r, a + b)
    sa, sb = raw_a.sum(), raw_b.sum()
    return (raw_a * abs(sa) / (abs(sa) + abs(sb)) * r.sum() / sa, raw_b * abs(sb) / (abs(sa) + abs(sb)) * r.sum() / sb)


def reference_lrp(model, image, c):
    """R_A of each block by the reference's definitions, through `reference_forward`'s tensors."""
    _, blocks, final, w = reference_forward(model, image)
    n = lambda t: t.numpy()[0] if t.shape[0] == 1 else t.numpy()    # noqa: E731  (drop the batch axis)
    ln = lambda key: lambda t: layer_norm_ops(t, w[f'{key}.weight'], w[f'{key}.bias'], 1e-6)  # noqa: E731
    r_logits = np.eye(w['head.weight'].shape[1])[c]
    r = np.zeros(n(final['y']).shape)
    r[0] = _linear_def(n(final['y'])[0], w['head.weight'].numpy(), r_logits)
    r = grad_times_input(ln('norm'), n(final['x']), r)
    found = []
    for i in reversed(range(len(blocks))):
        s, key = blocks[i], f'blocks.{i}'
        r_skip, r_mlp = _add_def(n(s['x_mid']), n(s['mlp_out']), r)
        r_mlp = _linear_def(n(s['g']), w[f'{key}.mlp.fc2.weight'].numpy(), r_mlp)
        r_mlp = grad_times_input(F.gelu, n(s['h']), r_mlp)
        r_mlp = _linear_def(n(s['n2']), w[f'{key}.mlp.fc1.weight'].numpy(), r_mlp)
        r = r_skip + grad_times_input(ln(f'{key}.norm2'), n(s['x_mid']), r_mlp)
        r_skip, r_attn = _add_def(n(s['x_in']), n(s['attn_out']), r)
        r_o = _linear_def(n(s['o']), w[f'{key}.attn.proj.weight'].numpy(), r_attn)
        heads, tokens = s['A'].shape[0], s['A'].shape[1]
        r_o = r_o.reshape(tokens, heads, -1).transpose(1, 0, 2)
        r_a, r_v = (t / 2 for t in product_rule(n(s['A']), n(s['v']), r_o))
        found.append(r_a)
        r_scores = grad_times_input(lambda t: F.softmax(t, -1), n(s['scores']), r_a)
        r_q, r_kt = (t / 2 for t in product_rule(n(s['q']), n(s['k']).transpose(0, 2, 1), r_scores))
        as_tokens = lambda t: t.transpose(1, 0, 2).reshape(tokens, -1)   # noqa: E731
        r_qkv = np.concatenate([as_tokens(r_q), as_tokens(r_kt.transpose(0, 2, 1)), as_tokens(r_v)], -1)
        r_n1 = _linear_def(n(s['n1']), w[f'{key}.attn.qkv.weight'].numpy(), r_qkv)
        r = r_skip + grad_times_input(ln(f'{key}.norm1'), n(s['x_in']), r_n1)
    return found[::-1]


def _reference_gradients(model, image, c):
    logits, blocks, _, _ = reference_forward(model, image)
    grads = paddle.grad(logits[c], [s['A'] for s in blocks])
    return [s['A'].numpy() for s in blocks], [g.numpy() for g in grads]


def _by_hand_rollout(matrices, residual_renorm):
    """The maps' last step by the issue's words: per block the head mean of the clamped product;
    'gradient': R <- R + M R from R = I; 'lrp': identity added, rows renormalised, blocks multiplied."""
    joint = np.eye(matrices[0].shape[-1])
    for m in matrices:
        if residual_renorm:
            m = m + np.eye(m.shape[-1])
            joint = (m / m.sum(-1, keepdims=True)) @ joint
        else:
            joint = joint + m @ joint
    return joint[0, 1:].reshape(2, 2)


@pytest.mark.parametrize('c, fused', [(0, '1'), (2, '1'), (2, '0')], ids=['class0', 'class2', 'paddle_kernels'])
def test_gradient_and_lrp_maps_equal_a_by_hand_computation(c, fused, monkeypatch):
    """Also with the engine's CPU kernels off, where Paddle's own LayerNorm runs: its gradient
    through `paddle.grad` needs care (see `engine.explain.methods._gradients`)."""
    monkeypatch.setenv('PADDLEVIT_FUSED_CPU_OPS', fused)
    model = _toy_vit()
    image = RNG.normal(size=(1, 3, 16, 16)).astype('float32')
    attentions, gradients = _reference_gradients(model, image, c)
    expected = _by_hand_rollout([np.maximum(g * a, 0).mean(0) for g, a in zip(gradients, attentions)], False)
    np.testing.assert_allclose(explain(model, image, 'gradient', c).map, expected, rtol=2e-4, atol=1e-7)
    relevances = reference_lrp(model, image, c)
    expected = _by_hand_rollout([np.maximum(g * r, 0).mean(0) for g, r in zip(gradients, relevances)], True)
    np.testing.assert_allclose(explain(model, image, 'lrp', c).map, expected, rtol=2e-3, atol=1e-9)


def test_maps_differ_between_classes():
    model = _toy_vit()
    image = RNG.normal(size=(1, 3, 16, 16)).astype('float32')
    for method in ('gradient', 'lrp'):
        first, second = (explain(model, image, method, c).map for c in (0, 1))
        assert not np.allclose(first, second, rtol=1e-3, atol=0), method
    agnostic = [explain(model, image, 'rollout', c).map for c in (0, 1)]
    np.testing.assert_array_equal(*agnostic)


def test_rollout_of_uniform_attention():
    """Zero query and key weights make every attention row uniform (1/N): with the residual
    identity, each block is (U + I) / 2 and L blocks give 2^-L (I + (2^L - 1) U), so the class
    token reaches each patch with 2^-L (2^L - 1) / N."""
    model = _toy_vit()
    for block in model.blocks:
        for p in (block.attn.qkv.weight, block.attn.qkv.bias):
            value = p.numpy()
            value[..., :16] = 0                         # query and key parts of [in, q|k|v]
            p.set_value(value)
    image = RNG.normal(size=(1, 3, 16, 16)).astype('float32')
    np.testing.assert_allclose(explain(model, image, 'rollout').map, 0.25 * 3 / 5, rtol=1e-5)
    np.testing.assert_allclose(explain(model, image, 'attention').map, 1 / 5, rtol=1e-5)


def test_class_slot_embedding():
    m = np.arange(4.).reshape(2, 2)
    np.testing.assert_array_equal(aggregate.with_class_slot(m, 1.), [[1, 0, 0], [0, 0, 1], [0, 2, 3]])


# ----------------------------------------------------------------- every family
@pytest.mark.parametrize('family', sorted(figures.TOYS))
def test_every_family_runs_its_methods(family):
    model = figures.build_toy(family)
    images, _, _ = figures.synthetic_images(np.random.default_rng(1), 1, size=model.config.DATA.IMAGE_SIZE,
                                            with_object=True)
    x = figures.normalise(images, model.config)
    methods = supported_methods(model)
    assert ('lrp' in methods) == (family in ('ViT', 'SPViT')) and 'gradcam' in methods
    for method in methods:
        result = explain(model, x, method, class_index=1)
        assert result.class_index == 1 and result.map.ndim == 2 and np.isfinite(result.map).all()
        assert result.map.min() >= 0 and 0 < result.probability < 1
    if 'lrp' not in methods:
        with pytest.raises(ExplainError, match='available: gradcam'):
            explain(model, x, 'lrp')


def test_spvit_explains_the_eval_logit_or_the_class_head():
    model = figures.build_toy('SPViT')
    assert model.local_up_to_layer == 1 and len(attention_layer_names(model)) == 3
    model.aux_head.weight.set_value(model.aux_head.weight * 50)     # a token-label head that matters
    images, _, _ = figures.synthetic_images(np.random.default_rng(2), 1, with_object=True)
    x = figures.normalise(images, model.config)
    for method in ('gradient', 'lrp'):
        eval_map, head_map = (explain(model, x, method, 2, head).map for head in ('eval', 'class'))
        assert eval_map.shape == (8, 8) and not np.allclose(eval_map, head_map, rtol=1e-3)


@pytest.mark.slow
def test_the_map_of_a_trained_toy_falls_on_the_object():
    """A 2-block ViT learns the colour of the one object in 150 batches; on 12 held-out
    pictures the class-specific maps put most of their mass on the object's tokens (about 11%
    of the tokens) and peak there (measured: gradient 0.63 and 12 of 12, lrp 0.59 and 11 of 12)."""
    model = figures.train_toy(figures.build_toy('ViT'), 150)
    images, labels, masks = figures.synthetic_images(np.random.default_rng(99), 12, with_object=True)
    x = figures.normalise(images, model.config)
    for method in ('gradient', 'lrp'):
        maps = [explain(model, x[i:i + 1], method, int(labels[i])).map for i in range(len(x))]
        shares = [figures.mass_on_object(m, mask) for m, mask in zip(maps, masks)]
        peaks = [figures.object_tokens(mask, m.shape).reshape(-1)[m.argmax()] for m, mask in zip(maps, masks)]
        assert np.mean(shares) > 0.5 and sum(peaks) >= 10, (method, shares, peaks)


# ----------------------------------------------------------------- the tool
def test_tool_writes_a_picture_and_the_map_per_image(tmp_path):
    folder = tmp_path / 'images'
    folder.mkdir()
    images, _, _ = figures.synthetic_images(np.random.default_rng(3), 2, size=40, with_object=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f'picture{i}.png')
    (folder / 'notes.txt').write_text('not an image')
    names = tmp_path / 'names.txt'
    names.write_text(''.join(f'digit {i}\n' for i in range(10)))
    out = tmp_path / 'out'
    assert tool_main(['-cfg', VIT_DEMO, '--image', str(folder), '--method', 'gradient', '-class', '7',
                      '-class_names', str(names), '-output', str(out)]) == 0
    for i in range(2):
        relevance = np.load(out / f'picture{i}_gradient.npy')
        assert relevance.shape == (8, 8) and relevance.min() >= 0
        with Image.open(out / f'picture{i}_gradient.png') as picture:
            assert picture.format == 'PNG' and np.asarray(picture.convert('L')).std() > 10
    assert sorted(os.listdir(out)) == sorted(f'picture{i}_gradient.{e}' for i in range(2) for e in ('npy', 'png'))


def test_tool_refuses_what_it_cannot_do(tmp_path):
    from engine.errors import UserError
    (tmp_path / 'broken.png').write_bytes(b'not a png')
    pit = os.path.join(IC, 'PiT', 'configs', 'pit_demo_distilled_digits_32.yaml')
    for argv, message in (
            (['-cfg', VIT_DEMO, '--image', str(tmp_path / 'broken.png')], 'not a readable image'),
            (['-cfg', VIT_DEMO, '--image', str(tmp_path / 'missing')], 'no such file or folder'),
            (['-cfg', VIT_DEMO, '-class', '10'], 'the model has 10 classes'),
            (['-cfg', pit, '--method', 'lrp'], 'not available for PoolingTransformer models; available: gradcam')):
        with pytest.raises(UserError, match=message):
            tool_main(argv + ['-output', str(tmp_path / 'out')])


# ----------------------------------------------------------------- SP-ViT's own layers, against their definitions
@pytest.fixture()
def spvit_record():
    """(toy SP-ViT with perturbed weights and a token-label head that matters, its LRP walker, a recording)."""
    from engine.explain.lrp import TransformerLRP
    model = figures.build_toy('SPViT')
    for p in model.parameters():
        p.set_value(p.numpy() + 0.1 * RNG.normal(size=p.shape).astype('float32'))
    model.aux_head.weight.set_value(model.aux_head.weight * 20)
    walker = TransformerLRP(model)
    images, _, _ = figures.synthetic_images(np.random.default_rng(4), 1, with_object=True)
    with recording(model, walker.record_names()) as rec:
        model(paddle.to_tensor(figures.normalise(images, model.config)))
    return model, walker, rec


def test_spvit_attention_inputs_reproduce_the_recorded_probabilities(spvit_record):
    """The softmax input the LRP pass rebuilds (q k^T / sqrt(d), times the spatial prior in the
    SP block) gives back the probabilities the model formed."""
    model, walker, rec = spvit_record
    assert hasattr(model.blocks[0].attn, 'qk') and not hasattr(model.blocks[1].attn, 'qk')
    for i in range(len(model.blocks)):
        scores = walker.attention_inputs(rec, i)[3]
        softmax = np.exp(scores - scores.max(-1, keepdims=True))
        np.testing.assert_allclose(softmax / softmax.sum(-1, keepdims=True),
                                   rec[f'blocks.{i}.attn.attn_drop'][1].numpy()[0], rtol=1e-4, atol=1e-6)


def test_spvit_pos_block_relevance(spvit_record):
    """tokens + dwconv(tokens): the renormalised addition, then alpha-beta through the conv."""
    model, walker, rec = spvit_record
    i = 2                                                    # after the class token joined
    x_in, x_out = (t.numpy()[0].astype(np.float64) for t in (rec[f'blocks.{i}.pos_block'][0][0],
                                                             rec[f'blocks.{i}.pos_block'][1]))
    r = RNG.normal(size=x_in.shape)
    tokens = x_in[1:]
    r_conv, r_skip = _add_def(x_out[1:] - tokens, tokens, r[1:])
    weight = model.blocks[i].pos_block.proj.weight.numpy().astype(np.float64)
    image = tokens.T.reshape(-1, *model.grid)
    conv = lambda w: lambda t: F.conv2d(t[None], _t(w), padding=1, groups=w.shape[0])[0]   # noqa: E731
    r_tokens = alpha_beta((conv(np.maximum(weight, 0)), conv(np.minimum(weight, 0))), image,
                          r_conv.T.reshape(image.shape))
    expected = np.concatenate([r[:1], r_tokens.reshape(image.shape[0], -1).T + r_skip])
    np.testing.assert_allclose(walker.pos_block_relevance(rec, i, r), expected, rtol=1e-6, atol=1e-12)


def test_spvit_eval_logit_relevance(spvit_record):
    """head(cls) + 0.5 max_t aux_head(tokens): the renormalised addition, the maximum's share to
    its winning token, alpha-beta through both heads, then the final norm."""
    model, walker, rec = spvit_record
    c = 3
    w = {k: v.numpy().astype(np.float64) for k, v in model.state_dict().items()}
    tokens = rec['norm'][1].numpy()[0].astype(np.float64)
    cls_logits = tokens[0] @ w['head.weight'] + w['head.bias']
    aux = tokens[1:] @ w['aux_head.weight'] + w['aux_head.bias']
    r_cls, r_max = _add_def(cls_logits, 0.5 * aux.max(0), np.eye(len(cls_logits))[c])
    r = np.zeros_like(tokens)
    r[0] = _linear_def(tokens[0], w['head.weight'], r_cls)
    winner = aux[:, c].argmax()
    r[1 + winner] = _linear_def(tokens[1 + winner], w['aux_head.weight'], r_max * (np.arange(len(r_max)) == c))
    norm_in = rec['norm'][0][0].numpy()[0].astype(np.float64)
    expected = grad_times_input(lambda t: layer_norm_ops(t, _t(w['norm.weight']), _t(w['norm.bias']), 1e-5),
                                norm_in, r)
    np.testing.assert_allclose(walker.head_relevance(rec, c, 'eval'), expected, rtol=1e-6, atol=1e-12)
    only_class = walker.head_relevance(rec, c, 'class')
    assert not only_class[1:].any() and only_class[0].any()
