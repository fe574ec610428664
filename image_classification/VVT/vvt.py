"""Vicinity Vision Transformer (VVT), Sun et al., TPAMI 2023 (arXiv 2206.10552).

A four-stage pyramid (overlapping patch embeddings with stride 4, 2, 2, 2) whose
blocks use *Vicinity Attention*: linear attention (ReLU feature maps) in which
the weight of key j for query i is scaled by the 2D Manhattan locality

    cos(a_i - a_j) + cos(b_i - b_j),   a = pi/2 * row / H,  b = pi/2 * col / W.

By cos(x - y) = cos x cos y + sin x sin y this factorises into four feature
maps per token, [q cos a, q sin a, q cos b, q sin b], so attention is
computed in time and memory linear in the number of tokens N: the keys are
summarised once into a (4d x d) matrix, never into an N x N one.

Two more pieces make up the Vicinity Attention Block:
- Feature Reduction Attention (FRA): q, k, v are projected to C / fr_ratio
  channels, which cuts the O(N d^2) cost of linear attention, and the output
  projection restores C channels.
- Feature Preserving Connection (FPC): channel weights computed from the
  block input (mean over tokens -> Linear -> ReLU -> Linear -> sigmoid) re-scale
  the attention output, out * (1 + w), to recover what the reduced features lost.

Numerics follow the official code (OpenNLPLab/Vicinity-Vision-Transformer,
`classification/vvt.py`): the intermediate results are clamped to magnitudes
in [1e-4, 1e4] keeping their sign, the normaliser has eps 1e-4, the blocks'
and stages' LayerNorms use eps 1e-6 while the patch embeddings' use 1e-5.
No parameter depends on the image size, so weights trained at 224 load at 384
unchanged.
"""
import math

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from engine import features as feat
from engine.blocks import init_weights
from engine.recompute import GradCheckpointing, run_block
from engine.layers import Conv2D, DropPath, GELU, LayerNorm, Linear, clamp_magnitude, conv_tokens, gelu_linear, zeros_

__all__ = ['VicinityVisionTransformer', 'build_vvt', 'vicinity_phases', 'vicinity_attention']

CLAMP_MIN, CLAMP_MAX = 1e-4, 1e4   # official `abs_clamp` bounds
NORMALIZER_EPS = 1e-4


def abs_clamp(t):
    """sign(t) * clip(|t|, 1e-4, 1e4): the official guard against tiny and huge values
    (`engine.layers.clamp_magnitude`: a fused kernel on CPU)."""
    return clamp_magnitude(t, CLAMP_MIN, CLAMP_MAX)


def vicinity_phases(height, width):
    """[H*W, 4] float32: cos a, sin a, cos b, sin b of each token (row-major),
    a = pi/2 * row / H and b = pi/2 * col / W."""
    c = math.pi / 2
    a = c * paddle.arange(height, dtype='float32') / height
    b = c * paddle.arange(width, dtype='float32') / width
    a = a.unsqueeze(1).expand([height, width])
    b = b.unsqueeze(0).expand([height, width])
    phases = paddle.stack([paddle.cos(a), paddle.sin(a), paddle.cos(b), paddle.sin(b)], axis=-1)
    return phases.reshape([height * width, 4])


def vicinity_attention(q, k, v, phases):
    """Vicinity Attention of [B, heads, N, d] tensors, result [B, heads, N, d].

    q and k must already be non-negative (ReLU feature maps).  `phases` is
    `vicinity_phases(H, W)`.  Equivalent to
        out_i = sum_j w_ij v_j / sum_j w_ij,  w_ij = q_i.k_j (cos(a_i - a_j) + cos(b_i - b_j)),
    but computed in O(N d^2) through the factorised feature maps.
    """
    # [B, h, N, 4d]: the four re-weighted copies side by side (one [N, 1] column each:
    # Paddle's CPU broadcast over a middle axis is several times slower than over the last)
    columns = [phases[:, f:f + 1] for f in range(4)]
    q4 = paddle.concat([q * c for c in columns], axis=-1)
    k4 = paddle.concat([k * c for c in columns], axis=-1)
    kv = abs_clamp(paddle.matmul(k4, v, transpose_x=True))                # [B, h, 4d, d]
    k_sum = k4.sum(axis=2, keepdim=True)                                  # [B, h, 1, 4d]
    # reciprocal, not `1. / t`: traced, a scalar over a tensor becomes `full_batch_size_like` + divide,
    # an op paddle2onnx 2.1.0 cannot convert (it aborted the ONNX export of every VVT)
    z = abs_clamp(paddle.reciprocal(paddle.matmul(q4, k_sum, transpose_y=True) + NORMALIZER_EPS))  # [B, h, N, 1]
    out = abs_clamp(paddle.matmul(q4, kv))                                # [B, h, N, d]
    return abs_clamp(out * z)


class VicinityAttention(nn.Layer):
    """Vicinity Attention with Feature Reduction (FRA) and the Feature Preserving Connection (FPC)."""

    def __init__(self, dim, num_heads, fr_ratio=2, se_ratio=1):
        super().__init__()
        if dim % num_heads or (dim // num_heads) % fr_ratio:
            raise ValueError(f'dim {dim} must split into {num_heads} heads divisible by fr_ratio {fr_ratio}')
        self.num_heads = num_heads
        self.head_dim = dim // num_heads // fr_ratio
        reduced = self.head_dim * num_heads
        self.qkv = Linear(dim, 3 * reduced)          # q, k, v projections, fused
        self.out_proj = Linear(reduced, dim)
        # FPC: channel weights from the block input ("se" in the official code)
        self.se_fc1 = Linear(dim, dim // se_ratio, bias_attr=False)
        self.se_fc2 = Linear(dim // se_ratio, dim, bias_attr=False)

    def forward(self, x, phases):
        batch, tokens, channels = x.shape
        weights = F.sigmoid(self.se_fc2(F.relu(self.se_fc1(x.mean(axis=1)))))   # [B, C]
        qkv = self.qkv(x).reshape([batch, tokens, 3, self.num_heads, self.head_dim])
        q, k, v = qkv.transpose([2, 0, 3, 1, 4]).unbind(0)                      # [B, h, N, d] each
        out = vicinity_attention(F.relu(q), F.relu(k), v, phases)
        out = out.transpose([0, 2, 1, 3]).reshape([batch, tokens, self.num_heads * self.head_dim])
        out = abs_clamp(self.out_proj(out))
        # [B, 1, C] expanded first: an explicit expand + same-shape multiply beat the broadcast 10x
        return abs_clamp(out * (1. + weights.unsqueeze(1)).expand([batch, tokens, channels]))


class ConvMlp(nn.Layer):
    """Linear -> 3x3 depthwise conv over the token grid -> GELU -> Linear (PVTv2's Mlp)."""

    def __init__(self, dim, hidden, drop=0.):
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.dwconv = Conv2D(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = GELU()
        self.fc2 = Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x, height, width):
        return gelu_linear(self.act, self.fc2, conv_tokens(self.dwconv, self.fc1(x), (height, width)), self.drop)


class Block(nn.Layer):
    """Pre-norm block: x + VicinityAttention(LN(x)), then x + ConvMlp(LN(x))."""

    def __init__(self, dim, num_heads, mlp_ratio, fr_ratio, se_ratio, drop=0., drop_path=0.):
        super().__init__()
        self.norm1 = LayerNorm(dim, epsilon=1e-6)
        self.attn = VicinityAttention(dim, num_heads, fr_ratio, se_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = LayerNorm(dim, epsilon=1e-6)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x, height, width, phases):
        x = x + self.drop_path(self.attn(self.norm1(x), phases))
        return x + self.drop_path(self.mlp(self.norm2(x), height, width))


class OverlapPatchEmbed(nn.Layer):
    """Strided conv with overlapping windows (k7 s4 or k3 s2), then LayerNorm (eps 1e-5)."""

    def __init__(self, in_channels, dim, patch_size, stride):
        super().__init__()
        self.proj = Conv2D(in_channels, dim, patch_size, stride=stride, padding=patch_size // 2)
        self.norm = LayerNorm(dim)   # the official uses the default eps here

    def forward(self, x):
        x = self.proj(x)
        height, width = x.shape[2], x.shape[3]
        return self.norm(x.flatten(2).transpose([0, 2, 1])), height, width


class Stage(nn.Layer):
    """Patch embedding, `depth` blocks, LayerNorm; tokens [B, H*W, C] out."""

    def __init__(self, in_channels, dim, depth, num_heads, mlp_ratio, fr_ratio, se_ratio,
                 patch_size, stride, drop, drop_paths):
        super().__init__()
        self.grad_checkpointing = False     # engine.recompute: TRAIN.RECOMPUTE
        self.patch_embed = OverlapPatchEmbed(in_channels, dim, patch_size, stride)
        self.blocks = nn.LayerList([
            Block(dim, num_heads, mlp_ratio, fr_ratio, se_ratio, drop, drop_paths[j])
            for j in range(depth)])
        self.norm = LayerNorm(dim, epsilon=1e-6)

    def forward(self, x):
        x, height, width = self.patch_embed(x)
        phases = vicinity_phases(height, width)     # shared by the stage's blocks
        for block in self.blocks:
            x = run_block(self, block, x, height=height, width=width, phases=phases)
        return self.norm(x), height, width


class VicinityVisionTransformer(GradCheckpointing, nn.Layer):
    """VVT: four stages, global average pooling, linear classifier."""

    CLASSIFIER = ('head',)

    def __init__(self, in_chans=3, num_classes=1000, embed_dims=(96, 160, 320, 512),
                 num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4), depths=(2, 2, 2, 2),
                 fr_ratios=(2, 2, 2, 2), se_ratio=1, drop_rate=0., drop_path_rate=0.):
        super().__init__()
        drop_paths = np.linspace(0, drop_path_rate, sum(depths)).tolist()   # linear stochastic-depth rule
        self.stages = nn.LayerList()
        start = 0
        for i, depth in enumerate(depths):
            self.stages.append(Stage(
                in_chans if i == 0 else embed_dims[i - 1], embed_dims[i], depth, num_heads[i],
                mlp_ratios[i], fr_ratios[i], se_ratio,
                patch_size=7 if i == 0 else 3, stride=4 if i == 0 else 2,
                drop=drop_rate, drop_paths=drop_paths[start:start + depth]))
            start += depth
        # one feature per stage (its normed output): patch-embedding strides 4, 2, 2, 2
        self.feature_info = [dict(module=f'stages.{i}', num_chs=embed_dims[i], reduction=4 * 2 ** i)
                             for i in range(len(depths))]
        self.head = Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(layer):
        init_weights(layer)                     # trunc-normal Linear, unit LayerNorm
        if isinstance(layer, nn.Conv2D):        # official: N(0, sqrt(2 / fan_out))
            out_channels, _, kh, kw = layer.weight.shape
            fan_out = kh * kw * out_channels // layer._groups
            nn.initializer.Normal(0., math.sqrt(2. / fan_out))(layer.weight)
            if layer.bias is not None:
                zeros_(layer.bias)

    def no_weight_decay(self):
        """Nothing beyond the 1-D parameters the engine already skips (no position embeddings)."""
        return set()

    def num_layers(self):
        return sum(len(stage.blocks) for stage in self.stages)

    def layer_id(self, name):
        """TRAIN.LAYER_DECAY (engine/optim.py): 0 the first patch embedding, then the blocks of all
        stages in order (1, 2, ...); a stage's downsampling patch embedding goes with its first
        block and its closing norm with the next stage's first block (the last one with the head)."""
        parts = name.split('.')
        first = [1]                                   # layer id of each stage's first block
        for stage in self.stages:
            first.append(first[-1] + len(stage.blocks))
        if parts[0] != 'stages':
            return first[-1]                          # head: num_layers + 1
        s = int(parts[1])
        if parts[2] == 'patch_embed':
            return 0 if s == 0 else first[s]
        if parts[2] == 'blocks':
            return first[s] + int(parts[3])
        return first[s + 1]                           # the stage's norm feeds the next stage

    def forward_features(self, x):
        for i, stage in enumerate(self.stages):
            x, height, width = stage(x)
            if i < len(self.stages) - 1:
                x = x.reshape([-1, height, width, x.shape[-1]]).transpose([0, 3, 1, 2])
        return x.mean(axis=1)

    def forward_intermediates(self, x, indices=None, norm=False, output_fmt='NCHW', intermediates_only=False,
                              return_prefix_tokens=False):
        """Each chosen stage's output map, for dense heads (see `engine/features.py`).

        Stage i runs at stride 4 * 2**i with `embed_dims[i]` channels; the padded
        patch convs give ceil(S / stride) maps for any input, square or not.  Each
        stage already ends with its own LayerNorm (the last one's is what the head
        pools), so `norm` has nothing to add and is accepted for the common
        signature only.  No class token: prefix tokens, when asked for, are empty
        [B, 0, C].  Returns the list when `intermediates_only`, else
        (forward_features(x), list).
        """
        feat.check_output_format(output_fmt)
        chosen = feat.feature_indices(len(self.stages), indices)
        last = chosen[-1] if intermediates_only else len(self.stages) - 1
        maps, prefixes = [], []
        for i in range(last + 1):
            tokens, height, width = self.stages[i](x)
            x = feat.tokens_to_map(tokens, height, width)
            if i in chosen:
                maps.append(feat.format_map(x, output_fmt))
                prefixes.append(feat.no_prefix(tokens.shape[0], tokens.shape[2], tokens.dtype))
        out = feat.pack(maps, prefixes, return_prefix_tokens)
        if intermediates_only:
            return out
        return tokens.mean(axis=1), out

    def forward(self, x):
        return self.head(self.forward_features(x))


def build_vvt(config):
    """The VVT variant described by `config.MODEL`."""
    m = config.MODEL
    return VicinityVisionTransformer(
        in_chans=config.DATA.IMAGE_CHANNELS,
        num_classes=m.NUM_CLASSES,
        embed_dims=m.EMBED_DIMS,
        num_heads=m.NUM_HEADS,
        mlp_ratios=m.MLP_RATIOS,
        depths=m.DEPTHS,
        fr_ratios=m.FR_RATIOS,
        se_ratio=m.SE_RATIO,
        drop_rate=m.DROPOUT,
        drop_path_rate=m.DROPPATH)
