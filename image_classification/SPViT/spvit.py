"""SP-ViT: Learning 2D Spatial Priors for Vision Transformers (Zhou et al., BMVC 2022).

SP-ViT is LV-ViT (Token Labeling, Jiang et al. 2021) whose first
`local_up_to_layer` blocks use spatial-prior self-attention (SP-SA): the
query-key score of every head is multiplied by a learned function of the 2-D
offset between the two patches,

    prior_h(dx, dy) = w2_h . relu(W1 [dx, dy] + b1)_h + b2_h
    attn = softmax((q k^T / sqrt(d)) * prior)

(`W1` is a Linear(2, dim) whose output is split into heads, `w2_h` a
per-head vector).  The class token joins only after those blocks, so the SP
blocks and the position embedding see the patch grid alone.  The rest is
LV-ViT: a 4-layer convolutional patch embedding (three convs at stride 2, then
an 8x8 patch projection), residual branches scaled by 1 / skip_lam, a depthwise
3x3 convolution on the patch tokens after every block, and an auxiliary head
on the patch tokens trained with token labels.

Outputs
    eval:   head(cls) + 0.5 * max over patch tokens of aux_head(tokens)   [B, classes]
    train:  with `dense_training`, a `DenseOutput(cls_logits, aux_logits, box)`
            for the token-labeling loss (`engine.token_labeling`), MixToken
            applied in token space when `mix_token`; otherwise the eval-style
            logits, so a plain cross-entropy trains it.

The three official variants (tlt/models/spvit.py of ZhouYuxuanYX/SP-ViT):
    spvit_s  lvvit_s, local_up_to_layer=14   26,234,468 parameters at 224
    spvit_m  lvvit_m, local_up_to_layer=10   55,952,992
    spvit_l  lvvit_l, local_up_to_layer=22  150,205,520
The official `lvvit_l` builds its blocks from an explicit `order` list, a code
path that never turns on SP attention: the released SP-ViT-L has plain
attention in every block and differs from LV-ViT-L only by the class token
joining at block 22.  `sp_attention=False` reproduces that (configs/spvit_l_*).
"""
import functools
import math

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from engine import features as feat
from engine.blocks import Attention, Block, init_weights
from engine.optim import layer_id_of_blocks
from engine.recompute import GradCheckpointing, run_block
from engine.layers import (Conv2D, LayerNorm, Linear, add_position_embedding, conv_tokens, ones_, resize_pos_embed,
                           torch_default_init, trunc_normal_, zeros_)
from engine.token_labeling import DenseOutput, MixToken

__all__ = ['SPViT', 'build_spvit']


class ConvPatchEmbed(nn.Layer):
    """LV-ViT's patch embedding ('4_2'): conv7x7/2 + two conv3x3, each BN + ReLU,
    then a (patch/2)x(patch/2) projection at stride patch/2.  '4_2_128' widens
    the stem from 64 to 128 channels (SP-ViT-L)."""

    def __init__(self, patch_size=16, in_chans=3, embed_dim=384, stem_dim=64):
        super().__init__()
        self.patch_size = patch_size
        self.conv1 = Conv2D(in_chans, stem_dim, 7, stride=2, padding=3, bias_attr=False)
        self.bn1 = nn.BatchNorm2D(stem_dim, momentum=0.9, epsilon=1e-5)
        self.conv2 = Conv2D(stem_dim, stem_dim, 3, stride=1, padding=1, bias_attr=False)
        self.bn2 = nn.BatchNorm2D(stem_dim, momentum=0.9, epsilon=1e-5)
        self.conv3 = Conv2D(stem_dim, stem_dim, 3, stride=1, padding=1, bias_attr=False)
        self.bn3 = nn.BatchNorm2D(stem_dim, momentum=0.9, epsilon=1e-5)
        self.proj = Conv2D(stem_dim, embed_dim, patch_size // 2, stride=patch_size // 2)
        for conv in (self.conv1, self.conv2, self.conv3, self.proj):
            torch_default_init(conv)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.proj(x)   # [B, C, H/patch, W/patch]


def relative_offsets(grid):
    """Offsets between all pairs of patches of an (H, W) grid, row-major order.

    Returns (table, index): `table` [(2H-1)(2W-1), 2] float32 lists every
    distinct (dx, dy) = (col_j - col_i, row_j - row_i) once; `index` [N*N] int64
    gives, for query i and key j (flattened i*N + j), the row of `table`.
    """
    h, w = grid
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
    rows, cols = rows.reshape(-1), cols.reshape(-1)
    dy = rows[None, :] - rows[:, None]                 # [N, N]
    dx = cols[None, :] - cols[:, None]
    ys, xs = np.meshgrid(np.arange(-(h - 1), h), np.arange(-(w - 1), w), indexing='ij')
    table = np.stack([xs.reshape(-1), ys.reshape(-1)], axis=1).astype('float32')
    index = (dy + h - 1) * (2 * w - 1) + (dx + w - 1)
    return table, index.reshape(-1).astype('int64')


class SpatialPriorAttention(nn.Layer):
    """SP-SA: attention whose q.k scores are multiplied by a learned 2-D spatial prior.

    The official layer evaluates the prior MLP on all N x N offset pairs; it is
    a function of the offset alone, so here it is evaluated once per distinct
    offset ((2H-1)(2W-1) of them, 729 instead of 38,416 at 14x14) and gathered:
    the same numbers at a fraction of the cost.  The parameters do not depend on
    the image size: the prior is evaluated on whatever grid the input has (24x24
    at 384, 32x32 for a 512 segmentation crop, 21x32 for a 336x512 image), never
    as an N x N x dim tensor.  The offsets of the grid the model was built for are
    buffers (exported with it); those of other grids are made once per grid.
    """

    def __init__(self, dim, num_heads, grid, qkv_bias=False, qk_scale=None, attn_drop=0., proj_drop=0.):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        self.grid = tuple(grid)
        self.qk = Linear(dim, dim * 2, bias_attr=None if qkv_bias else False)
        self.v = Linear(dim, dim, bias_attr=None if qkv_bias else False)
        self.w1 = Linear(2, dim)       # offset (dx, dy) -> dim features, split into heads
        # per-head reduction of the relu'd features to one prior value (official layout [dim, 1])
        self.w2 = self.create_parameter([dim, 1], default_initializer=zeros_)
        self.b2 = self.create_parameter([num_heads], default_initializer=ones_)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        table, index = relative_offsets(self.grid)
        self.register_buffer('offset_table', paddle.to_tensor(table), persistable=False)
        self.register_buffer('offset_index', paddle.to_tensor(index), persistable=False)
        self._other_grids = {}   # grid -> (table, index) of grids met at run time
        self.input_grid = self.grid   # the grid of the tokens of the next call (PosConvBlock sets it)

    def _offsets(self, grid):
        if grid == self.grid:
            return self.offset_table, self.offset_index
        if grid not in self._other_grids:
            table, index = relative_offsets(grid)
            self._other_grids[grid] = (paddle.to_tensor(table), paddle.to_tensor(index))
        return self._other_grids[grid]

    def spatial_prior(self, grid=None):
        """[heads, N, N]: the multiplicative prior for query i, key j of the patch grid
        (`grid` (H, W), default the one the layer was built for)."""
        grid = tuple(grid or self.grid)
        table, index = self._offsets(grid)
        table = table.astype(self.w1.weight.dtype)      # float16 weights under AMP O2
        feats = F.relu(self.w1(table)).reshape([-1, self.num_heads, self.head_dim])
        prior = (feats * self.w2.reshape([self.num_heads, self.head_dim])).sum(-1) + self.b2  # [T, heads]
        n = grid[0] * grid[1]
        return paddle.gather(prior, index).transpose([1, 0]).reshape([self.num_heads, n, n])

    def forward(self, x):
        """`x` [B, N, C]: the tokens of the grid `self.input_grid` (set by `PosConvBlock.forward`;
        the built grid when the layer is called on its own)."""
        B, N, C = x.shape
        grid = self.input_grid
        if N != grid[0] * grid[1]:
            raise ValueError(f'spatial-prior attention on a {grid} grid of tokens got {N} tokens')
        qk = self.qk(x).reshape([B, N, 2, self.num_heads, self.head_dim]).transpose([2, 0, 3, 1, 4])
        q, k = qk[0], qk[1]                                                   # [B, heads, N, d]
        v = self.v(x).reshape([B, N, self.num_heads, self.head_dim]).transpose([0, 2, 1, 3])
        score = paddle.matmul(q, k, transpose_y=True) * self.scale
        attn = F.softmax(score * self.spatial_prior(grid), axis=-1)
        x = paddle.matmul(self.attn_drop(attn), v)                           # [B, heads, N, d]
        x = x.transpose([0, 2, 1, 3]).reshape([B, N, C])
        return self.proj_drop(self.proj(x))


class PosConv(nn.Layer):
    """Depthwise 3x3 convolution added to the patch tokens (CPVT's PEG); the class
    token, when present, passes unchanged."""

    def __init__(self, dim):
        super().__init__()
        self.proj = Conv2D(dim, dim, 3, stride=1, padding=1, groups=dim)
        torch_default_init(self.proj)

    def forward(self, x, grid, has_cls):
        cls, tokens = (x[:, :1], x[:, 1:]) if has_cls else (None, x)
        tokens = conv_tokens(self.proj, tokens, grid) + tokens
        return paddle.concat([cls, tokens], axis=1) if has_cls else tokens


class PosConvBlock(Block):
    """SP-ViT's block: the engine's pre-norm block (residual branches divided by `skip_lam`, as
    LV-ViT's), with spatial-prior attention when `spatial_prior`, then PosConv on the patch tokens
    when `pos_conv` (LV-ViT's own block has no PosConv)."""

    def __init__(self, dim, num_heads, grid, mlp_ratio=3., qkv_bias=False, qk_scale=None, drop=0., attn_drop=0.,
                 drop_path=0., skip_lam=1., spatial_prior=False, norm_layer=LayerNorm, pos_conv=True):
        attn_layer = functools.partial(SpatialPriorAttention, grid=grid, qk_scale=qk_scale) if spatial_prior \
            else Attention
        super().__init__(dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, proj_drop=drop, attn_drop=attn_drop,
                         drop_path=drop_path, norm_layer=norm_layer, attn_layer=attn_layer, skip_lam=skip_lam)
        self.pos_block = PosConv(dim) if pos_conv else None

    def forward(self, x, grid, has_cls):
        if isinstance(self.attn, SpatialPriorAttention):
            self.attn.input_grid = tuple(grid)   # the engine's Block calls attn(x) alone
        x = super().forward(x)
        return x if self.pos_block is None else self.pos_block(x, grid, has_cls)


class SPViT(GradCheckpointing, nn.Layer):
    """SP-ViT / LV-ViT.  Arguments follow the official `SP_ViT` class.

    Args:
        stem_dim: channels of the convolutional patch embedding (64 for '4_2', 128 for '4_2_128').
        skip_lam: residual branches are divided by this.
        local_up_to_layer: blocks before this index see patch tokens only (and use SP
            attention when `sp_attention`); the class token joins at this block.  0: the
            class token is there from the start, as in LV-ViT.
        sp_attention: SP attention in the blocks before `local_up_to_layer`.
        dense_training: training forward returns `DenseOutput` for token labeling.
        mix_token: MixToken in token space during dense training.
        pos_conv: PosConv after every block (SP-ViT); False gives LV-ViT's blocks.
    """

    CLASSIFIER = ('head', 'aux_head')

    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=384, depth=16,
                 num_heads=6, mlp_ratio=3., qkv_bias=False, qk_scale=None, drop_rate=0., attn_drop_rate=0.,
                 drop_path_rate=0., norm_layer=LayerNorm, stem_dim=64, skip_lam=2., local_up_to_layer=0,
                 sp_attention=True, dense_training=True, mix_token=True, mix_token_beta=1.0, pos_conv=True):
        super().__init__()
        if qk_scale is not None and qk_scale != (embed_dim // num_heads) ** -0.5:
            raise ValueError('qk_scale other than head_dim ** -0.5 is not supported')
        if not 0 <= local_up_to_layer < depth:
            raise ValueError(f'local_up_to_layer must be in [0, depth={depth}), got {local_up_to_layer}')
        if img_size % patch_size:
            raise ValueError(f'image size {img_size} is not a multiple of the patch size {patch_size}')
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.grad_checkpointing = False     # engine.recompute: TRAIN.RECOMPUTE
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.local_up_to_layer = local_up_to_layer
        self.dense_training = dense_training
        self.mix_token = MixToken(mix_token_beta) if (mix_token and dense_training) else None

        self.patch_embed = ConvPatchEmbed(patch_size, in_chans, embed_dim, stem_dim)
        num_patches = self.grid[0] * self.grid[1]
        self.cls_token = self.create_parameter([1, 1, embed_dim], default_initializer=trunc_normal_)
        # the class token has a position embedding only when it enters before the first block
        prefix = 1 if local_up_to_layer == 0 else 0
        self.pos_embed = self.create_parameter([1, prefix + num_patches, embed_dim],
                                               default_initializer=trunc_normal_)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = np.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.LayerList([
            PosConvBlock(embed_dim, num_heads, self.grid, mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate,
                         dpr[i], skip_lam, spatial_prior=sp_attention and i < local_up_to_layer,
                         norm_layer=norm_layer, pos_conv=pos_conv)
            for i in range(depth)])
        # every block's output is a feature (timm's per-block semantics); the stem's
        # 7x7 conv has stride 2 and the projection patch/2, so the grid is at stride `patch_size`
        self.feature_info = [dict(module=f'blocks.{i}', num_chs=embed_dim, reduction=patch_size)
                             for i in range(depth)]
        self.norm = norm_layer(embed_dim)
        self.head = Linear(embed_dim, num_classes)
        self.aux_head = Linear(embed_dim, num_classes)
        self.apply(init_weights)          # trunc-normal Linear, unit LayerNorm; convs keep their init above

    def no_weight_decay(self):
        return {'pos_embed', 'cls_token'}

    def num_layers(self):
        return len(self.blocks)

    def layer_id(self, name):
        """TRAIN.LAYER_DECAY (engine/optim.py): 0 embeddings, i + 1 block i (spatial-prior blocks and
        the class-token blocks after them, in order), then the norm, head and token-label head."""
        return layer_id_of_blocks(name, len(self.blocks), ('patch_embed', 'cls_token', 'pos_embed'))

    def forward_tokens(self, x):
        """Patch tokens [B, N, C] (position embedding not yet added) -> normed [B, 1 + N, C]."""
        cls = self.cls_token.expand([x.shape[0], -1, -1])
        if self.local_up_to_layer == 0:
            x = paddle.concat([cls, x], axis=1)
        x = self.pos_drop(add_position_embedding(x, self.pos_embed))
        for i, blk in enumerate(self.blocks):
            if i == self.local_up_to_layer and i > 0:
                x = paddle.concat([cls, x], axis=1)
            x = run_block(self, blk, x, grid=self.grid, has_cls=i >= self.local_up_to_layer)
        return self.norm(x)

    def forward_features(self, x):
        """All output tokens [B, 1 + N, C], class token first (no MixToken)."""
        return self.forward_tokens(self.patch_embed(x).flatten(2).transpose([0, 2, 1]))

    def pos_embed_for(self, grid):
        """The position embedding on a patch grid (H, W): the parameter itself on the built grid,
        else its grid part interpolated bicubically on every call (the class token's entry, when
        there is one, kept), as the official segmentation backbone does for any input size."""
        if tuple(grid) == self.grid:
            return self.pos_embed
        prefix = 1 if self.local_up_to_layer == 0 else 0
        patches = feat.tokens_to_map(self.pos_embed[:, prefix:], *self.grid)
        patches = F.interpolate(patches, size=list(grid), mode='bicubic', align_corners=False)
        return paddle.concat([self.pos_embed[:, :prefix], patches.flatten(2).transpose([0, 2, 1])], axis=1)

    def forward_intermediates(self, x, indices=None, norm=False, output_fmt='NCHW', intermediates_only=False,
                              return_prefix_tokens=False):
        """Block outputs as patch-grid maps, for dense heads (see `engine/features.py`).

        `norm` passes each chosen output through the final LayerNorm first.  The
        class token, once it has joined (block `local_up_to_layer` on), is dropped
        from the maps and, with `return_prefix_tokens`, returned beside each as
        [B, 1, C] ([B, 0, C] before it joins).  No MixToken.  Any image size is
        accepted (segmentation crops, scales, non-square images): the position
        embedding is interpolated to the input's grid (`pos_embed_for`) and the
        spatial priors are evaluated on it.  Returns the list when
        `intermediates_only`, else (forward_features(x), list).
        """
        feat.check_output_format(output_fmt)
        chosen = feat.feature_indices(len(self.blocks), indices)
        x = self.patch_embed(x)
        grid = tuple(x.shape[2:])
        x = x.flatten(2).transpose([0, 2, 1])
        cls = self.cls_token.expand([x.shape[0], -1, -1])
        if self.local_up_to_layer == 0:
            x = paddle.concat([cls, x], axis=1)
        x = self.pos_drop(add_position_embedding(x, self.pos_embed_for(grid)))
        last = chosen[-1] if intermediates_only else len(self.blocks) - 1
        maps, prefixes = [], []
        for i in range(last + 1):
            if i == self.local_up_to_layer and i > 0:
                x = paddle.concat([cls, x], axis=1)
            x = run_block(self, self.blocks[i], x, grid=grid, has_cls=i >= self.local_up_to_layer)
            if i in chosen:
                y = self.norm(x) if norm else x
                num_prefix = 1 if i >= self.local_up_to_layer else 0
                maps.append(feat.format_map(feat.tokens_to_map(y[:, num_prefix:], *grid), output_fmt))
                prefixes.append(y[:, :num_prefix])
        out = feat.pack(maps, prefixes, return_prefix_tokens)
        if intermediates_only:
            return out
        return self.norm(x), out

    def forward_dense(self, x):
        """(class logits [B, classes], per-token logits [B, N, classes])."""
        x = self.forward_features(x)
        return self.head(x[:, 0]), self.aux_head(x[:, 1:])

    def forward(self, x):
        if not (self.training and self.dense_training):
            cls_logits, aux_logits = self.forward_dense(x)
            return cls_logits + 0.5 * aux_logits.max(axis=1)
        x = self.patch_embed(x)                                   # [B, C, H, W]
        box = self.mix_token.sample(x.shape[2:]) if self.mix_token is not None else None
        if box is not None:
            x = MixToken.mix(x, box)        # the box of each image replaced by the batch-flipped image's
        x = self.forward_tokens(x.flatten(2).transpose([0, 2, 1]))
        cls_logits, aux_logits = self.head(x[:, 0]), self.aux_head(x[:, 1:])
        if box is not None:
            # put every token's prediction back on the image it came from, so the
            # per-token targets need no mixing (the official "recover the mixed part")
            aux_logits = MixToken.unmix_tokens(aux_logits, self.grid, box)
        return DenseOutput(cls_logits, aux_logits, box)

    def adapt_state_dict(self, state):
        """Resize `pos_embed` of a checkpoint for another image size, in place (bicubic,
        as the official fine-tuning's `load_state_dict`); the spatial-prior parameters
        (w1, w2, b2) are functions of the patch offset and fit any grid unchanged."""
        messages = []
        key = 'pos_embed'
        if key in state and tuple(state[key].shape) != tuple(self.pos_embed.shape):
            old = tuple(state[key].shape)
            prefix = 1 if self.local_up_to_layer == 0 else 0
            if old[1] - prefix <= 0 or math.isqrt(old[1] - prefix) ** 2 != old[1] - prefix:
                raise ValueError(f'{key} {old} does not hold {prefix} prefix token(s) and a square grid '
                                 f'(model expects {tuple(self.pos_embed.shape)})')
            state[key] = resize_pos_embed(state[key], self.grid, num_prefix_tokens=prefix)
            messages.append(f'{key} resized {old} -> {tuple(state[key].shape)} (bicubic, grid '
                            f'{math.isqrt(old[1] - prefix)}x{math.isqrt(old[1] - prefix)} -> '
                            f'{self.grid[0]}x{self.grid[1]})')
        return messages


PATCH_EMBED_STEMS = {'4_2': 64, '4_2_128': 128}


def build_spvit(config):
    """SP-ViT from a config (see SPViT/config.py for the keys)."""
    m = config.MODEL
    if m.PATCH_EMBED not in PATCH_EMBED_STEMS:
        raise ValueError(f'MODEL.PATCH_EMBED {m.PATCH_EMBED!r}: expected one of {sorted(PATCH_EMBED_STEMS)}')
    token_label = config.TRAIN.TOKEN_LABEL
    return SPViT(img_size=config.DATA.IMAGE_SIZE, patch_size=m.PATCH_SIZE,
                 in_chans=config.DATA.IMAGE_CHANNELS, num_classes=m.NUM_CLASSES, embed_dim=m.EMBED_DIM,
                 depth=m.DEPTH, num_heads=m.NUM_HEADS, mlp_ratio=m.MLP_RATIO, qkv_bias=m.QKV_BIAS,
                 qk_scale=m.QK_SCALE, drop_rate=m.DROPOUT, attn_drop_rate=m.ATTENTION_DROPOUT,
                 drop_path_rate=m.DROPPATH, stem_dim=PATCH_EMBED_STEMS[m.PATCH_EMBED], skip_lam=m.SKIP_LAM,
                 local_up_to_layer=m.LOCAL_UP_TO_LAYER, sp_attention=m.SP_ATTENTION,
                 dense_training=token_label.ENABLE, mix_token=token_label.MIX_TOKEN,
                 mix_token_beta=token_label.MIX_TOKEN_BETA, pos_conv=m.POS_CONV,
                 norm_layer=functools.partial(LayerNorm, epsilon=m.NORM_EPS))
