"""forward_intermediates / feature_info of every family (issue #18 item 6: features for dense tasks).

Tiny random models of each family (built from their constructors, seconds in
total).  For each: the maps agree with `feature_info` (channels; reduction =
input side / map side) at the built size and at the other sizes the family
accepts; the final features equal `forward_features` and what the head
consumes (checked through the existing `forward` with the head(s) replaced by
identities); `indices` picks blocks / stages as timm does; class tokens never
appear in a map.
"""
import sys

import numpy as np
import paddle
import paddle.nn as nn
import pytest

from engine.families import load_family


def _module(family):
    return sys.modules[load_family(family).build_model.__module__]


def _vit(**kw):
    args = dict(img_size=32, patch_size=8, num_classes=5, embed_dim=32, depth=3, num_heads=2, mlp_dim=64)
    args.update(kw)
    return _module('ViT').VisionTransformer(**args)


def _vit_hybrid(**kw):
    args = dict(img_size=32, patch_size=16, num_classes=5, embed_dim=32, depth=2, num_heads=2, mlp_dim=64,
                resnet_layers=(1, 1, 1), resnet_width=0.5)
    args.update(kw)
    return _module('ViT').VisionTransformer(**args)


def _pit(**kw):
    args = dict(img_size=64, patch_size=8, stride=8, base_dims=(8, 8, 8), depth=(1, 2, 1), num_heads=(1, 2, 4),
                num_classes=5)
    args.update(kw)
    return _module('PiT').PoolingTransformer(**args)


def _pervit(**kw):
    args = dict(img_size=64, num_classes=5, embed_dims=(16, 24, 32, 40), stem_dims=(8, 8, 8, 16), num_heads=2,
                depths=(1, 1, 2, 1), mlp_ratio=2.)
    args.update(kw)
    return _module('PerViT').PerViT(**args)


def _spvit(**kw):
    args = dict(img_size=32, patch_size=16, num_classes=5, embed_dim=32, depth=3, num_heads=2, stem_dim=16,
                local_up_to_layer=2, dense_training=False)
    args.update(kw)
    return _module('SPViT').SPViT(**args)


def _vvt(**kw):
    args = dict(num_classes=5, embed_dims=(8, 16, 24, 32), num_heads=(1, 2, 3, 4), mlp_ratios=(2, 2, 2, 2),
                depths=(1, 1, 1, 1))
    args.update(kw)
    return _module('VVT').VicinityVisionTransformer(**args)


def _regnet(**kw):
    # the parity fixture's RegNetY (4 stages of 12, 24, 36, 60 channels)
    args = dict(w0=16, wa=12, wm=1.5, depth=5, group_w=12, se_ratio=0.25, stem_width=8, num_classes=5)
    args.update(kw)
    return _module('RegNet').RegNet(**args)


def _pooled_vit(model, x):
    """The class token of the last block, normed: what ViT's head reads."""
    (_, prefix), = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True,
                                                return_prefix_tokens=True)
    return prefix[:, 0]


def _pooled_pit(model, x):
    (_, prefix), = model.forward_intermediates(x, indices=[-1], norm=True, intermediates_only=True,
                                                return_prefix_tokens=True)
    return prefix


def _pooled_mean(norm):
    def pooled(model, x):
        last, = model.forward_intermediates(x, indices=1, norm=norm, intermediates_only=True)
        return last.mean(axis=[2, 3])
    return pooled


def _pooled_spvit(model, x):
    """Normed class token + patch tokens of the last block, rebuilt into the [B, 1 + N, C] sequence."""
    (last, prefix), = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True,
                                                   return_prefix_tokens=True)
    return paddle.concat([prefix, last.flatten(2).transpose([0, 2, 1])], axis=1)


def _forward_with_identity_head(model, x):
    """What `forward` hands its classifier, read through `forward` with identity heads."""
    for name in model.CLASSIFIER:
        owner, _, attr = name.rpartition('.')
        setattr(getattr(model, owner) if owner else model, attr, nn.Identity())
    return model(x)


# name, builder, built size, other sizes the family accepts, sizes it refuses, pooled(model, x)
CASES = {
    'vit': (_vit, (32, 32), [], [(40, 40)], _pooled_vit),
    'vit_hybrid': (_vit_hybrid, (32, 32), [], [(64, 64)], _pooled_vit),
    'pit': (_pit, (64, 64), [], [(72, 72)], _pooled_pit),
    'pervit': (_pervit, (64, 64), [(48, 48)], [(64, 48)], _pooled_mean(True)),
    'spvit': (_spvit, (32, 32), [], [], _pooled_spvit),   # any size: tests/test_segmentation.py
    'vvt': (_vvt, (64, 64), [(64, 96), (96, 32)], [], _pooled_mean(False)),
    'regnet': (_regnet, (64, 64), [(64, 96), (96, 32)], [], _pooled_mean(False)),
}


@pytest.fixture(scope='module')
def models():
    paddle.seed(0)
    built = {}
    for name, (builder, *_rest) in CASES.items():
        model = builder()
        model.eval()
        built[name] = model
    return built


def _image(hw, batch=2, seed=0):
    return paddle.to_tensor(np.random.RandomState(seed).randn(batch, 3, *hw).astype('float32'))


@pytest.mark.parametrize('name', CASES)
def test_maps_agree_with_feature_info(models, name):
    model = models[name]
    _, built, others, _, _ = CASES[name]
    info = model.feature_info
    assert info and all(set(d) == {'module', 'num_chs', 'reduction'} for d in info)
    modules = dict(model.named_sublayers())
    assert all(d['module'] in modules for d in info), [d['module'] for d in info]
    for hw in [built] + others:
        with paddle.no_grad():
            maps = model.forward_intermediates(_image(hw), intermediates_only=True)
        assert len(maps) == len(info)
        for m, d in zip(maps, info):
            assert m.shape[:2] == [2, d['num_chs']], (hw, m.shape, d)
            # every size here is a multiple of the reduction, so input / map side is exact
            assert [hw[0] / m.shape[2], hw[1] / m.shape[3]] == [d['reduction']] * 2, (hw, m.shape, d)


@pytest.mark.parametrize('name', [n for n in CASES if CASES[n][3]])
def test_sizes_the_family_cannot_take_are_refused(models, name):
    model = models[name]
    for hw in CASES[name][3]:
        with pytest.raises(ValueError, match='built for'), paddle.no_grad():
            model.forward_intermediates(_image(hw), intermediates_only=True)


@pytest.mark.parametrize('name', CASES)
def test_final_features_are_the_classifier_input(models, name):
    model = models[name]
    _, built, others, _, pooled = CASES[name]
    for hw in [built] + others[:1]:
        x = _image(hw, seed=1)
        with paddle.no_grad():
            final, maps = model.forward_intermediates(x)
            reference = model.forward_features(x)
            rebuilt = pooled(model, x)
        np.testing.assert_array_equal(final.numpy(), reference.numpy())
        assert len(maps) == len(model.feature_info)
        if reference.ndim == 4:                   # a CNN's forward_features is its last map itself
            np.testing.assert_array_equal(maps[-1].numpy(), reference.numpy())
            reference = reference.mean(axis=[2, 3])
        np.testing.assert_allclose(rebuilt.numpy(), reference.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', ['vit', 'vit_hybrid', 'pit', 'pervit', 'vvt', 'regnet'])
def test_pooled_last_map_is_what_the_head_consumes(name):
    """The existing forward, its head(s) replaced by identities, returns what the maps pool to."""
    paddle.seed(1)
    builder, built, _, _, pooled = CASES[name]
    model = builder()
    model.eval()
    x = _image(built, seed=2)
    with paddle.no_grad():
        rebuilt = pooled(model, x)
        head_input = _forward_with_identity_head(model, x)
    if name == 'pit':
        rebuilt = rebuilt[:, 0]                   # the class token (the model is not distilled)
    np.testing.assert_allclose(head_input.numpy(), rebuilt.numpy(), rtol=1e-5, atol=1e-5)


def test_spvit_maps_drop_the_class_token_and_rebuild_the_eval_logits():
    """SP-ViT eval logits = head(cls) + 0.5 * max_tokens aux_head(tokens), from the last map and its token."""
    paddle.seed(2)
    model = _spvit()
    model.eval()
    x = _image((32, 32), seed=3)
    with paddle.no_grad():
        outs = model.forward_intermediates(x, norm=True, intermediates_only=True, return_prefix_tokens=True)
        last, cls = outs[-1]
        tokens = last.flatten(2).transpose([0, 2, 1])
        logits = model.head(cls[:, 0]) + 0.5 * model.aux_head(tokens).max(axis=1)
        np.testing.assert_allclose(logits.numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)
    # the class token joins at block local_up_to_layer = 2: no prefix before, one after
    assert [p.shape[1] for _, p in outs] == [0, 0, 1]
    assert all(m.shape[2:] == [2, 2] for m, _ in outs)


def test_pit_distilled_pyramid_and_prefix_tokens():
    """The official layout (patch 16, stride 8: an unpadded conv) gives floor((S - 16) / 8) + 1, then
    ceil halvings; both tokens come back with every stage and are the normed tokens at the end."""
    paddle.seed(3)
    pit = _module('PiT')
    model = _pit(patch_size=16, stride=8, distilled=True)
    model.eval()
    x = _image((64, 64), seed=4)
    with paddle.no_grad():
        final, outs = model.forward_intermediates(x, norm=True, return_prefix_tokens=True)
        reference = model.forward_features(x)
    side = pit.patch_grid(64, 16, 8)
    assert side == 7
    assert [m.shape[2:] for m, _ in outs] == [[7, 7], [4, 4], [2, 2]]
    assert [p.shape[1] for _, p in outs] == [2, 2, 2]
    np.testing.assert_array_equal(final.numpy(), reference.numpy())
    np.testing.assert_allclose(outs[-1][1].numpy(), reference.numpy(), rtol=1e-6, atol=1e-6)


def test_vit_non_square_model_gives_non_square_maps():
    """A ViT built for a non-square size (its position embedding then fits that grid) maps it."""
    paddle.seed(4)
    model = _vit(img_size=(32, 48))
    model.eval()
    x = _image((32, 48), seed=5)
    with paddle.no_grad():
        final, maps = model.forward_intermediates(x)
        np.testing.assert_array_equal(final.numpy(), model.forward_features(x).numpy())
    assert [m.shape for m in maps] == [[2, 32, 4, 6]] * 3


def test_maps_are_the_block_tokens_in_row_major_order(models):
    """A map's pixel (r, c) is patch token 1 + r * W + c of the block output (class token first)."""
    model = models['vit']
    x = _image((32, 32), seed=6)
    captured = []
    hook = model.blocks[1].register_forward_post_hook(lambda layer, inp, out: captured.append(out))
    try:
        with paddle.no_grad():
            m, = model.forward_intermediates(x, indices=[1], intermediates_only=True)
    finally:
        hook.remove()
    tokens = captured[0].numpy()
    np.testing.assert_array_equal(m.numpy()[:, :, 2, 3], tokens[:, 1 + 2 * 4 + 3])


@pytest.mark.parametrize('name', CASES)
def test_indices_select_as_timm(models, name):
    model = models[name]
    built = CASES[name][1]
    n = len(model.feature_info)
    x = _image(built, seed=7)
    with paddle.no_grad():
        every = [m.numpy() for m in model.forward_intermediates(x, intermediates_only=True)]
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        picked = model.forward_intermediates(x, indices=[-1, 0, 0], intermediates_only=True)
        first = model.forward_intermediates(x, indices=[0], intermediates_only=True)
        nlc = model.forward_intermediates(x, indices=[-1], output_fmt='NLC', intermediates_only=True)
    assert len(every) == n
    assert len(last2) == 2
    for got, want in zip(last2, every[-2:]):
        np.testing.assert_array_equal(got.numpy(), want)
    # a list: those positions once each, negative from the end, in network order
    assert len(picked) == 2
    np.testing.assert_array_equal(picked[0].numpy(), every[0])
    np.testing.assert_array_equal(picked[1].numpy(), every[-1])
    # stopping early after the first feature changes nothing
    np.testing.assert_array_equal(first[0].numpy(), every[0])
    b, c, h, w = every[-1].shape
    np.testing.assert_array_equal(nlc[0].numpy(), every[-1].reshape(b, c, h * w).transpose(0, 2, 1))
    for bad in (0, n + 1, [n], [-n - 1], [], [1.0]):
        with pytest.raises(ValueError, match='indices'):
            model.forward_intermediates(x, indices=bad)
    with pytest.raises(ValueError, match='output_fmt'):
        model.forward_intermediates(x, output_fmt='NHWC')


@pytest.mark.slow
def test_feature_info_of_reference_variants():
    """The tables in the family READMEs, built from the real configs (no forward run)."""
    expected = {
        'ViT/configs/vit_small_patch16_224.yaml': [(384, 16)] * 12,
        'PiT/configs/pit_s_224.yaml': [(144, 8), (288, 16), (576, 32)],
        'PerViT/configs/pervit_tiny_224.yaml': [(192, 16), (224, 16), (280, 16), (280, 16)],
        'SPViT/configs/spvit_s_224.yaml': [(384, 16)] * 16,
        'VVT/configs/vvt_tiny_224.yaml': [(96, 4), (160, 8), (320, 16), (512, 32)],
        'RegNet/configs/regnety_400mf.yaml': [(48, 4), (104, 8), (208, 16), (440, 32)],
    }
    import os
    from engine.families import build_from_config
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'image_classification')
    for cfg, table in expected.items():
        _, model = build_from_config(os.path.join(root, cfg))
        assert [(d['num_chs'], d['reduction']) for d in model.feature_info] == table, cfg
