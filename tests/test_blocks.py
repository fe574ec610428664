"""engine/blocks.py: PiT, ViT and SP-ViT run the one engine Attention / Block; its explicit
path exposes the attention probabilities; the init helper keeps each family's numbers;
the builders pass the timm-named constructor arguments (ViT honours DATA.IMAGE_CHANNELS).

Numerical parity of each family with its official model is the family tests' job
(test_pit / test_vit / test_spvit); key names and shapes are test_state_dict_keys'.
"""
import os

import numpy as np
import paddle
import pytest

from engine import attention_dispatch
from engine import blocks
from engine.families import build_from_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, 'image_classification')
FIXTURES = os.path.join(REPO, 'tests', 'fixtures')

# small models of the three families, 64 x 64 inputs; SP-ViT with one spatial-prior block
MODELS = {
    'PiT': ('PiT/configs/pit_ti_distilled_224.yaml',
            ['MODEL.BASE_DIMS', '[8, 8, 8]', 'MODEL.DEPTH', '[1, 2, 1]', 'MODEL.NUM_HEADS', '[2, 2, 4]']),
    'ViT': ('ViT/configs/vit_tiny_patch16_224.yaml',
            ['MODEL.EMBED_DIM', '32', 'MODEL.DEPTH', '2', 'MODEL.NUM_HEADS', '2', 'MODEL.MLP_DIM', '64']),
    'SPViT': ('SPViT/configs/spvit_s_224.yaml',
              ['MODEL.EMBED_DIM', '32', 'MODEL.DEPTH', '3', 'MODEL.NUM_HEADS', '2', 'MODEL.LOCAL_UP_TO_LAYER', '1',
               'TRAIN.TOKEN_LABEL.ENABLE', 'False']),
}
# (blocks, of which with the engine's Attention): SP-ViT's first block has its spatial-prior attention
BLOCKS = {'PiT': (4, 4), 'ViT': (2, 2), 'SPViT': (3, 2)}


def _mini(family, extra=()):
    cfg, opts = MODELS[family]
    _, model = build_from_config(os.path.join(CONFIGS, cfg),
                                 ['DATA.IMAGE_SIZE', '64', 'MODEL.NUM_CLASSES', '5'] + opts + list(extra))
    model.eval()
    return model


def _x(channels=3):
    return paddle.to_tensor(np.random.RandomState(0).randn(2, channels, 64, 64).astype('float32'))


@pytest.mark.parametrize('family', sorted(MODELS))
def test_every_block_is_the_engine_block_and_its_attention_goes_through_the_dispatch(family, monkeypatch):
    """Each family's blocks are engine Blocks, and a forward sends exactly one attention per
    engine Attention through `attention_dispatch` (a family with attention code of its own
    would not reach it)."""
    model = _mini(family)
    engine_blocks = [layer for layer in model.sublayers() if isinstance(layer, blocks.Block)]
    attentions = [layer.attn for layer in engine_blocks if type(layer.attn) is blocks.Attention]
    assert (len(engine_blocks), len(attentions)) == BLOCKS[family]
    calls = []
    dispatched = attention_dispatch.attention

    def counting(qkv, attn_drop=0., training=False):
        calls.append(tuple(qkv.shape))
        return dispatched(qkv, attn_drop, training)

    monkeypatch.setattr(attention_dispatch, 'attention', counting)
    with paddle.no_grad():
        model(_x())
    assert len(calls) == len(attentions)


@pytest.mark.parametrize('family', sorted(MODELS))
def test_explicit_path_gives_the_probabilities_and_the_same_output(family):
    """Within `explicit_attention()` every engine Attention forms its probabilities and passes them
    through `attn_drop`: the logits stay those of the dispatched kernels, a pre-hook on `attn_drop`
    sees one [B, heads, N, N] row-stochastic matrix per block, and outside it the kernels run again
    (the hook sees nothing on the CPU kernel path)."""
    model = _mini(family)
    x = _x()
    layers = [layer for layer in model.sublayers() if type(layer) is blocks.Attention]
    seen = []
    handles = [layer.attn_drop.register_forward_pre_hook(lambda layer, inputs: seen.append(inputs[0]))
               for layer in layers]
    with paddle.no_grad():
        plain = model(x).numpy()
        assert not seen
        with attention_dispatch.explicit_attention():
            explicit = model(x).numpy()
        maps = list(seen)
        model(x)
    for handle in handles:
        handle.remove()
    np.testing.assert_allclose(explicit, plain, rtol=1e-5, atol=1e-5)
    assert len(maps) == BLOCKS[family][1] == len(layers) and len(seen) == len(maps)
    for m, layer in zip(maps, layers):
        assert m.shape[:2] == [2, layer.num_heads] and m.shape[2] == m.shape[3]
        np.testing.assert_allclose(m.numpy().sum(-1), 1, atol=1e-5)


def test_vit_honours_image_channels():
    """DATA.IMAGE_CHANNELS reaches ViT's patch embedding (the plain one and the R50 hybrid's stem)."""
    from engine.families import load_family
    family = load_family('ViT')
    for cfg, conv in (('tests/fixtures/vit_mini/vit_mini.yaml', lambda m: m.patch_embed.proj),
                      ('tests/fixtures/vit_r50_mini/vit_r50_mini.yaml', lambda m: m.patch_embed.backbone.root.conv)):
        config = family.get_config(os.path.join(REPO, cfg))
        config.defrost()
        config.DATA.IMAGE_CHANNELS = 1      # the data pipeline decodes RGB (its config rule); the model takes any
        model = family.build_model(config)
        assert conv(model).weight.shape[1] == 1
        model.eval()
        with paddle.no_grad():
            assert model(_x(channels=1)).shape == [2, 10]


def test_init_weights_keeps_each_familys_numbers():
    """'torch_default' (PiT, ViT): U(+-1/sqrt(fan_in)) weight and bias for Linear and Conv2D;
    'trunc_normal' (SP-ViT, VVT): truncated normal std .02, zero bias, convs untouched;
    both: LayerNorm weight 1, bias 0."""
    paddle.seed(0)
    fc, conv, norm = paddle.nn.Linear(256, 512), paddle.nn.Conv2D(4, 8, 3), paddle.nn.LayerNorm(16)
    norm.weight.set_value(paddle.full([16], 3.))
    norm.bias.set_value(paddle.full([16], 3.))
    for layer in (fc, conv, norm):
        blocks.init_weights(layer, linear='torch_default')
    w, b = fc.weight.numpy(), fc.bias.numpy()
    assert 0.99 / 16 < np.abs(w).max() <= 1 / 16 and 0.9 / 16 < np.abs(b).max() <= 1 / 16
    assert 0.9 / 6 < np.abs(conv.weight.numpy()).max() <= 1 / 6              # fan_in 4 * 3 * 3
    assert (norm.weight.numpy() == 1).all() and (norm.bias.numpy() == 0).all()

    conv_before = conv.weight.numpy()
    norm.weight.set_value(paddle.full([16], 3.))
    for layer in (fc, conv, norm):
        blocks.init_weights(layer)
    w = fc.weight.numpy()
    assert abs(w.std() - 0.02) < 5e-4 and abs(w.mean()) < 5e-4        # cut at +-2 absolute: as timm, no cut at .02
    assert not fc.bias.numpy().any() and (norm.weight.numpy() == 1).all()
    np.testing.assert_array_equal(conv.weight.numpy(), conv_before)
    with pytest.raises(ValueError, match='linear init'):
        blocks.init_weights(fc, linear='xavier')


def test_block_residual_divisor_and_attention_projection_dropout():
    """`skip_lam` divides both branches; `attn_proj_drop` sets the dropout after the attention's
    projection apart from the MLP's (ViT-pytorch), and defaults to `proj_drop` (timm)."""
    paddle.seed(0)
    x = paddle.randn([2, 5, 8])
    plain = blocks.Block(8, 2, mlp_ratio=2.)
    halved = blocks.Block(8, 2, mlp_ratio=2., skip_lam=2.)
    halved.set_state_dict(plain.state_dict())
    plain.eval(), halved.eval()
    with paddle.no_grad():
        h = x + plain.attn(plain.norm1(x)) / 2
        expected = h + plain.mlp(plain.norm2(h)) / 2
        np.testing.assert_allclose(halved(x).numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    assert blocks.Block(8, 2, proj_drop=0.1).attn.proj_drop.p == 0.1
    vit_like = blocks.Block(8, 2, proj_drop=0.1, attn_drop=0.2, attn_proj_drop=0.2)
    assert (vit_like.attn.proj_drop.p, vit_like.attn.attn_drop.p, vit_like.mlp.drop.p) == (0.2, 0.2, 0.1)
