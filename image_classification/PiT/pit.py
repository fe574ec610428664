"""Pooling-based Vision Transformer (PiT), Heo et al., ICCV 2021 (arXiv 2103.16302).

A ViT whose token grid shrinks as the network deepens, like a CNN's feature
map: three stages of transformer blocks, and between two stages a pooling
layer that halves the grid and doubles the channels.

    image --conv(patch, stride)--> [B, C0, H, W] + pos_embed (a [1, C0, H, W] map)
    stage s: flatten the map to H*W tokens, prepend the class token(s), run the
             blocks, split the class token(s) off and fold the rest back to a map
    pool:    map   -> depthwise-multiplier conv, kernel 3, stride 2 (C -> 2C)
             class -> Linear (C -> 2C)
    head:    LayerNorm(eps 1e-6) on the class token(s), then Linear

The distilled variant (`MODEL.DISTILLED: True`) carries a second token that a
teacher supervises (DeiT): it has two classifiers, `head` on the class token
and `head_dist` on the distillation token.  In training mode it returns the
tuple (class logits, distillation logits); in eval mode their mean.

The architecture and parameter names follow naver-ai/pit `pit.py`
(`PoolingTransformer`, `DistilledPoolingTransformer`), so the official
checkpoints map one to one (see `port_weights/pit.py`).  Numerics match it:
timm `Block`s (here the engine's, `engine.blocks`) with qkv bias and LayerNorm
eps 1e-6, the position embedding added to the patch map before any token is
prepended, drop-path rate
`DROPPATH * i / total_blocks` for block i.  The official code initialises only
pos_embed / cls_token (truncated normal, std .02) and the LayerNorms; every
Linear and Conv keeps PyTorch's default init, which is reproduced here.
"""
import functools
import math

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from engine import features as feat
from engine.blocks import Block, init_weights
from engine.recompute import GradCheckpointing, run_block
from engine.layers import Conv2D, LayerNorm, Linear, add_position_embedding, trunc_normal_

__all__ = ['PoolingTransformer', 'build_pit', 'patch_grid']

LN_EPS = 1e-6


def patch_grid(image_size, patch_size, stride):
    """Side of the patch-embedding map: floor((S - patch) / stride) + 1 (no padding)."""
    return math.floor((image_size - patch_size) / stride + 1)


class Transformer(nn.Layer):
    """One PiT stage: the map's tokens and the class token(s) go through `depth` blocks."""

    def __init__(self, dim, depth, num_heads, mlp_ratio, norm_layer, drop=0., attn_drop=0., drop_path=()):
        super().__init__()
        self.grad_checkpointing = False     # engine.recompute: TRAIN.RECOMPUTE
        self.blocks = nn.LayerList([
            Block(dim, num_heads, mlp_ratio, proj_drop=drop, attn_drop=attn_drop, drop_path=drop_path[i],
                  norm_layer=norm_layer) for i in range(depth)])

    def forward(self, x, cls_tokens):
        b, c, h, w = x.shape
        num_prefix = cls_tokens.shape[1]
        x = paddle.concat([cls_tokens, x.flatten(2).transpose([0, 2, 1])], axis=1)   # [B, T + HW, C]
        for blk in self.blocks:
            x = run_block(self, blk, x)
        cls_tokens = x[:, :num_prefix]
        x = x[:, num_prefix:].transpose([0, 2, 1]).reshape([b, c, h, w])
        return x, cls_tokens


class ConvHeadPooling(nn.Layer):
    """Halve the map with a depthwise conv (each channel -> out/in channels) and widen the class tokens."""

    def __init__(self, in_dim, out_dim, stride=2):
        super().__init__()
        self.conv = Conv2D(in_dim, out_dim, kernel_size=stride + 1, stride=stride,
                           padding=stride // 2, groups=in_dim)
        self.fc = Linear(in_dim, out_dim)

    def forward(self, x, cls_tokens):
        return self.conv(x), self.fc(cls_tokens)


class ConvEmbedding(nn.Layer):
    """Patch embedding: one conv, kernel `patch_size`, stride `stride`, no padding."""

    def __init__(self, in_channels, out_channels, patch_size, stride):
        super().__init__()
        self.conv = Conv2D(in_channels, out_channels, kernel_size=patch_size, stride=stride, padding=0)

    def forward(self, x):
        return self.conv(x)


class PoolingTransformer(GradCheckpointing, nn.Layer):
    """PiT; with `distilled=True` the DeiT-style distilled model (two tokens, two heads)."""

    CLASSIFIER = ('head', 'head_dist')

    def __init__(self, img_size=224, patch_size=16, stride=8, base_dims=(48, 48, 48), depth=(2, 6, 4),
                 num_heads=(3, 6, 12), mlp_ratio=4.0, num_classes=1000, in_chans=3, distilled=False,
                 drop_rate=0., attn_drop_rate=0., drop_path_rate=0.,
                 norm_layer=functools.partial(LayerNorm, epsilon=LN_EPS)):
        super().__init__()
        if not (len(base_dims) == len(depth) == len(num_heads)):
            raise ValueError(f'BASE_DIMS {base_dims}, DEPTH {depth} and NUM_HEADS {num_heads} '
                             f'must have one entry per stage')
        self.num_classes = num_classes
        self.distilled = distilled
        self.num_tokens = 2 if distilled else 1
        dims = [b * h for b, h in zip(base_dims, num_heads)]
        self.embed_dim = dims[-1]
        self.grid = patch_grid(img_size, patch_size, stride)

        self.patch_embed = ConvEmbedding(in_chans, dims[0], patch_size, stride)
        self.pos_embed = self.create_parameter([1, dims[0], self.grid, self.grid], default_initializer=trunc_normal_)
        self.cls_token = self.create_parameter([1, self.num_tokens, dims[0]], default_initializer=trunc_normal_)
        self.pos_drop = nn.Dropout(drop_rate)

        total = sum(depth)
        rates = [drop_path_rate * i / total for i in range(total)]   # official: i / total, not linspace
        self.transformers = nn.LayerList()
        self.pools = nn.LayerList()
        start = 0
        for s in range(len(depth)):
            self.transformers.append(Transformer(dims[s], depth[s], num_heads[s], mlp_ratio, norm_layer, drop_rate,
                                                 attn_drop_rate, rates[start:start + depth[s]]))
            start += depth[s]
            if s < len(depth) - 1:
                self.pools.append(ConvHeadPooling(dims[s], dims[s + 1], stride=2))

        # one feature per stage: the token map after its blocks (before the pooling)
        self.feature_info = [dict(module=f'transformers.{s}', num_chs=dims[s], reduction=stride * 2 ** s)
                             for s in range(len(depth))]

        self.norm = norm_layer(self.embed_dim)
        self.head = Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if distilled:
            self.head_dist = Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(functools.partial(init_weights, linear='torch_default'))

    def no_weight_decay(self):
        return {'pos_embed', 'cls_token'}

    def num_layers(self):
        return sum(len(t.blocks) for t in self.transformers)

    def layer_id(self, name):
        """TRAIN.LAYER_DECAY (engine/optim.py): 0 embeddings, then the blocks of all stages in order
        (1, 2, ...), each pooling layer with the first block of the stage it feeds, then the head(s)."""
        parts = name.split('.')
        if parts[0] in ('patch_embed', 'cls_token', 'pos_embed'):
            return 0
        first = [1]                                   # layer id of each stage's first block
        for t in self.transformers:
            first.append(first[-1] + len(t.blocks))
        if parts[0] == 'transformers':
            return first[int(parts[1])] + int(parts[3])
        if parts[0] == 'pools':
            return first[int(parts[1]) + 1]
        return first[-1]                              # norm, head, head_dist: num_layers + 1

    def forward_features(self, x):
        """The normalised class token(s), [B, num_tokens, C]."""
        x = self.pos_drop(add_position_embedding(self.patch_embed(x), self.pos_embed))
        cls_tokens = self.cls_token.expand([x.shape[0], -1, -1])
        for transformer, pool in zip(self.transformers, self.pools):
            x, cls_tokens = pool(*transformer(x, cls_tokens))
        _, cls_tokens = self.transformers[-1](x, cls_tokens)
        return self.norm(cls_tokens)

    def forward_intermediates(self, x, indices=None, norm=False, output_fmt='NCHW', intermediates_only=False,
                              return_prefix_tokens=False):
        """Each chosen stage's token map after its blocks, for dense heads (see `engine/features.py`).

        Stage s runs at stride `stride * 2**s` (8, 16, 32 for the official models;
        the unpadded patch conv makes a 224 input a 27 x 27, 14 x 14, 7 x 7 pyramid)
        with `dims[s]` channels.  The class (and distillation) token(s) are split
        off: with `return_prefix_tokens` each map comes with them, [B, T, C].  PiT's
        only final norm acts on those tokens, never on a map, so `norm=True` norms
        the last stage's prefix tokens alone (then equal to `forward_features(x)`).
        The position embedding is a fixed map, so only the built image size is
        accepted.  Returns the list when `intermediates_only`, else
        (forward_features(x), list).
        """
        feat.check_output_format(output_fmt)
        num_stages = len(self.transformers)
        chosen = feat.feature_indices(num_stages, indices)
        image_hw = x.shape[2:]
        x = self.patch_embed(x)
        feat.check_grid('PiT', x.shape[2:], (self.grid, self.grid), image_hw)
        x = self.pos_drop(add_position_embedding(x, self.pos_embed))
        cls_tokens = self.cls_token.expand([x.shape[0], -1, -1])
        last = chosen[-1] if intermediates_only else num_stages - 1
        maps, prefixes = [], []
        for s in range(last + 1):
            x, cls_tokens = self.transformers[s](x, cls_tokens)
            if s in chosen:
                maps.append(feat.format_map(x, output_fmt))
                prefixes.append(self.norm(cls_tokens) if norm and s == num_stages - 1 else cls_tokens)
            if s < num_stages - 1:
                x, cls_tokens = self.pools[s](x, cls_tokens)
        out = feat.pack(maps, prefixes, return_prefix_tokens)
        if intermediates_only:
            return out
        return self.norm(cls_tokens), out

    def forward(self, x):
        tokens = self.forward_features(x)
        logits = self.head(tokens[:, 0])
        if not self.distilled:
            return logits
        logits_dist = self.head_dist(tokens[:, 1])
        if self.training:
            return logits, logits_dist
        return (logits + logits_dist) / 2

    def adapt_state_dict(self, state):
        """Resize `pos_embed` (a [1, C, h, w] map) to this model's grid, bicubic; in place."""
        messages = []
        pos = state.get('pos_embed')
        target = [1, self.pos_embed.shape[1], self.grid, self.grid]
        if pos is not None and list(pos.shape) != target and pos.ndim == 4 and pos.shape[1] == target[1]:
            img = paddle.to_tensor(np.asarray(pos, dtype='float32'))
            img = F.interpolate(img, size=[self.grid, self.grid], mode='bicubic', align_corners=False)
            state['pos_embed'] = img.numpy().astype(pos.dtype)
            messages.append(f'pos_embed resized {tuple(pos.shape)} -> {tuple(target)} (bicubic) '
                            f'for a {self.grid}x{self.grid} patch grid')
        return messages


def build_pit(config):
    """PiT (or distilled PiT, when MODEL.DISTILLED) from a config."""
    m = config.MODEL
    return PoolingTransformer(
        img_size=config.DATA.IMAGE_SIZE,
        patch_size=m.PATCH_SIZE,
        stride=m.STRIDE,
        base_dims=list(m.BASE_DIMS),
        depth=list(m.DEPTH),
        num_heads=list(m.NUM_HEADS),
        mlp_ratio=m.MLP_RATIO,
        num_classes=m.NUM_CLASSES,
        in_chans=config.DATA.IMAGE_CHANNELS,
        distilled=m.DISTILLED,
        drop_rate=m.DROPOUT,
        attn_drop_rate=m.ATTENTION_DROPOUT,
        drop_path_rate=m.DROPPATH,
    )
