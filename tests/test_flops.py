"""engine/flops.py and tools/flops.py: MACs counted by hand, the published ViT figures, parameters as PyTorch counts them."""
import os

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
import pytest

from conftest import REPO, TINY_CFG
from engine.layers import Mlp, multi_head_attention
from engine import flops
from tools import flops as flops_tool



class HandCounted(nn.Layer):
    """Every kind of product the counter must see, on a 1 x 3 x 16 x 16 input."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2D(3, 8, 4, stride=4)                 # -> [1, 8, 4, 4]
        self.dw = nn.Conv2D(8, 8, 3, padding=1, groups=8)        # depthwise
        self.grouped = nn.Conv2D(8, 8, 1, groups=2)
        self.bn = nn.BatchNorm2D(8)
        self.norm = nn.LayerNorm(8)
        self.qkv = nn.Linear(8, 24)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = self.bn(self.grouped(self.dw(self.stem(x))))
        t = x.flatten(2).transpose([0, 2, 1])                    # [1, 16, 8]
        qkv = self.qkv(self.norm(t)).reshape([0, 0, 3, 2, 4])   # [1, 16, 3, 2, 4]
        q, k, v = qkv.unbind(2)
        a = multi_head_attention(qkv)                            # fused softmax attention
        s = paddle.matmul(q.transpose([0, 2, 1, 3]), k.transpose([0, 2, 1, 3]), transpose_y=True)
        e = paddle.einsum('bnc,bmc->bnm', t, t)
        b = paddle.bmm(t.transpose([0, 2, 1]), t)                # [1, 8, 8]
        y = F.gelu(a.reshape([0, 0, 8])).mean(1) + s.mean() + e.mean() + b.mean()
        return self.head(y)


EXPECTED_LAYERS = {                  # products with a weight: Conv and Linear layers
    'stem': 8 * 4 * 4 * (3 * 4 * 4),
    'dw': 8 * 4 * 4 * (1 * 3 * 3),
    'grouped': 8 * 4 * 4 * (4 * 1 * 1),
    'qkv': 16 * 24 * 8,
    'head': 10 * 8,
}
EXPECTED_ACTIVATION_PRODUCTS = {     # products of two activations
    'attention q k^T': 2 * 16 * 16 * 4,
    'attention attn v': 2 * 16 * 16 * 4,
    'matmul q k^T': 2 * 16 * 16 * 4,
    'einsum bnc,bmc->bnm': 16 * 16 * 8,
    'bmm': 8 * 8 * 16,
}


def test_hand_counted_macs():
    model = HandCounted()
    layers = sum(EXPECTED_LAYERS.values())
    assert flops.count_flops(model, 16) == layers + sum(EXPECTED_ACTIVATION_PRODUCTS.values())
    assert flops.count_flops(model, 16, layers_only=True) == layers
    by_op = flops.flops_by_op(model, 16)
    assert by_op['pd_op.conv2d'] == EXPECTED_LAYERS['stem'] + EXPECTED_LAYERS['grouped']
    assert by_op['pd_op.depthwise_conv2d'] == EXPECTED_LAYERS['dw']
    assert by_op['pd_op.einsum'] == EXPECTED_ACTIVATION_PRODUCTS['einsum bnc,bmc->bnm']
    assert by_op['pd_op.bmm'] == EXPECTED_ACTIVATION_PRODUCTS['bmm']


def test_model_left_as_it_was():
    model = HandCounted()
    model.train()
    x = paddle.randn([2, 3, 16, 16])
    model.eval()
    before = model(x).numpy()
    model.train()
    model.bn.eval()                       # e.g. frozen BatchNorm while fine-tuning
    flops.count_flops(model, 16)
    assert model.training and model.stem.training and not model.bn.training
    model.eval()
    np.testing.assert_array_equal(model(x).numpy(), before)


def test_params_exclude_batchnorm_running_statistics():
    model = HandCounted()
    expected = (8 * 3 * 16 + 8) + (8 * 9 + 8) + (8 * 4 + 8) + (8 + 8) + (8 + 8) + (8 * 24 + 24) + (8 * 10 + 10)
    assert flops.count_params(model) == expected
    assert sum(int(np.prod(p.shape)) for p in model.parameters()) == expected + 16   # _mean, _variance


class WeightsComputedInForward(nn.Layer):
    """A standardised conv weight and a transposed Linear weight are still weights; a
    product of parameters alone (a position bias) is work done once, not per image."""

    def __init__(self):
        super().__init__()
        self.conv_weight = self.create_parameter([8, 3, 4, 4])
        self.linear_weight = self.create_parameter([5, 8])      # torch layout, used transposed
        self.table = self.create_parameter([6, 3])

    def forward(self, x):
        w = self.conv_weight
        w = (w - w.mean(axis=[1, 2, 3], keepdim=True)) / (w.std(axis=[1, 2, 3], keepdim=True) + 1e-5)
        x = F.conv2d(x, w, stride=4).flatten(2).mean(2)            # [1, 8]
        bias = paddle.matmul(self.table, self.table, transpose_y=True)   # [6, 6], image-independent
        return paddle.matmul(x, self.linear_weight, transpose_y=True) + bias.mean()


@pytest.mark.filterwarnings("ignore:Tensor do not have 'place' interface")   # F.conv2d while traced
def test_products_with_computed_weights_and_without_the_image():
    model = WeightsComputedInForward()
    layers = 8 * 4 * 4 * (3 * 4 * 4) + 5 * 8
    assert flops.count_flops(model, 16) == layers
    assert flops.count_flops(model, 16, layers_only=True) == layers
    kinds = {kind: macs for _, macs, kind in flops.op_costs(model, 16) if kind == 'constant'}
    assert kinds == {'constant': 6 * 6 * 3}


class _FakeOp:
    def __init__(self, name):
        self._name = name

    def name(self):
        return self._name


@pytest.mark.parametrize('name', ['pd_op.fused_gemm_epilogue', 'pd_op.conv2d_fusion', 'pd_op.fc',
                                  'pd_op.flash_attn_unpadded'])
def test_unknown_multiplying_op_is_an_error(name):
    with pytest.raises(NotImplementedError, match=name):
        flops._op_macs(_FakeOp(name))


@pytest.mark.parametrize('name', ['pd_op.softmax', 'pd_op.layer_norm', 'pd_op.bilinear_interp',
                                  'pd_op.add'])
def test_elementwise_ops_count_zero(name):
    assert flops._op_macs(_FakeOp(name)) == 0


class _Block(nn.Layer):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, epsilon=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, epsilon=1e-6)
        self.mlp = Mlp(dim, 4 * dim)

    def forward(self, x):
        c = x.shape[-1]
        qkv = self.qkv(self.norm1(x)).reshape([0, 0, 3, self.heads, c // self.heads])
        x = x + self.proj(multi_head_attention(qkv).reshape([0, 0, c]))
        return x + self.mlp(self.norm2(x))


class _ViT(nn.Layer):
    """DeiT/ViT with patch 16 at 224: the models whose FLOPs every paper quotes."""

    def __init__(self, dim, depth, heads):
        super().__init__()
        self.patch_embed = nn.Conv2D(3, dim, 16, stride=16)
        self.cls_token = self.create_parameter([1, 1, dim])
        self.pos_embed = self.create_parameter([1, 197, dim])
        self.blocks = nn.LayerList([_Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, epsilon=1e-6)
        self.head = nn.Linear(dim, 1000)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose([0, 2, 1])
        x = paddle.concat([self.cls_token.expand([x.shape[0], -1, -1]), x], axis=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


@pytest.mark.parametrize('dim, heads, params, gflops', [
    (384, 6, 22_050_664, 4.6),      # DeiT-S / ViT-S/16 (DeiT paper, timm)
    (768, 12, 86_567_656, 17.6),    # ViT-B/16 (DeiT paper, timm)
])
@pytest.mark.slow
def test_vit_matches_published(dim, heads, params, gflops):
    model = _ViT(dim, 12, heads)
    n = 197
    per_block = n * dim * 3 * dim + 2 * n * n * dim + n * dim * dim + 2 * n * dim * 4 * dim
    expected = 196 * dim * 3 * 16 * 16 + 12 * per_block + dim * 1000
    assert flops.count_params(model) == params
    count = flops.count_flops(model, 224)
    assert count == expected
    assert round(count / 1e9, 1) == gflops


@pytest.fixture
def tiny_cfg(tiny_family):
    return TINY_CFG


def test_cli_prints_params_and_flops(tiny_cfg, capsys):
    from engine.families import build_from_config
    _, model = build_from_config(tiny_cfg)
    flops_tool.main(['-cfg', tiny_cfg, '-image_size', '64'])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith('tinynet_32  image 64  ')
    assert f'params {flops.count_params(model):,} ' in line
    assert f'FLOPs {flops.count_flops(model, 64) / 1e9:.2f}G' in line
    assert f'layers-only {flops.count_flops(model, 64, layers_only=True) / 1e9:.2f}G' in line


# Published FLOPs of family configs, in the convention of the table they come from:
# 'all' = every product (FLOPs), 'layers' = Conv and Linear layers only (layers-only).
# The smallest variant of each family, to keep the suite fast; tools/flops.py prints
# the rest.  A config that does not exist (yet) is skipped.
PUBLISHED = [
    ('PiT/configs/pit_ti_224.yaml', 'all', 0.71),              # official PiT README
    ('PiT/configs/pit_ti_224.yaml', 'layers', 0.5),            # PaddleViT's PiT README
    ('PerViT/configs/pervit_tiny_224.yaml', 'layers', 1.6),    # PerViT paper (ptflops)
    ('ViT/configs/vit_small_patch16_224.yaml', 'all', 4.6),    # DeiT paper / timm
    ('RegNet/configs/regnety_400mf.yaml', 'all', 0.4),         # RegNet paper
]


_TRACED = {}


@pytest.mark.parametrize('cfg, convention, gflops', PUBLISHED)
@pytest.mark.slow
def test_family_config_matches_published(cfg, convention, gflops):
    from engine.families import build_from_config
    path = os.path.join(REPO, 'image_classification', cfg)
    if not os.path.isfile(path):
        pytest.skip(f'{cfg} does not exist')
    if cfg not in _TRACED:        # one trace per config for both conventions
        config, model = build_from_config(path)
        _TRACED[cfg] = flops.op_costs(model, config.DATA.IMAGE_SIZE)
    count = sum(flops.by_op(_TRACED[cfg], layers_only=(convention == 'layers')).values())
    assert abs(count / 1e9 - gflops) <= 0.06, f'{cfg}: {count / 1e9:.3f}G, published {gflops}G'
