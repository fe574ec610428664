"""PerViT: Peripheral Vision Transformer (Min, Zhao, Luo, Cho; NeurIPS 2022, arXiv 2206.06801).

A convolutional stem turns the image into a 14 x 14 grid of tokens (224 input,
four stride-2 3x3 convs), and twelve blocks in four stages (2, 2, 6, 2) refine
it.  Each block is

    x = x + DropPath(MPA(LayerNorm(CPE(x))))              # CPE feeds attention only
    x = Shortcut(x) + DropPath(MLP(LayerNorm(x)))         # MLP (and Shortcut) change width at stage ends

Multi-head peripheral attention (MPA) mixes two attentions per head:

    content     Phi_c[q, k] = exp(q.k / sqrt(d) - max_k q.k / sqrt(d))
    position    Phi_p[q, k] = sigmoid(PPE_l(|p_k - p_q|))          in (0, 1), no softmax
    mixed       A[q, k]     = Phi_c * Phi_p / sum_k (Phi_c * Phi_p)  (L1 normalised, as the official code)

The peripheral position encoding (PPE) sees only Euclidean distances between
token positions (the grid spans [-1, 1] on each axis): a Linear(1 -> 4 * heads)
shared by all blocks embeds each distance, then per block two 3x3 convs +
GroupNorm (ReLU between, sigmoid after) map the distance map around each query
to one map per head.  The second GroupNorm's bias / weight are initialised from
(-5, 3) in the first block to (4, 0.01) in the last ("peripheral
initialisation"): early heads start local, late heads global.

Phi_p depends on the weights and on the token grid but never on the image, so
in eval mode it is computed once per grid and cached (the official code does
the same in `init_rpe`).  The cache is dropped by every training-mode forward,
by `train()`, `eval()`, `set_state_dict()` and by `state_dict()` (the door
through which EMA and similar code change weights in place); after changing
weights any other way while in eval mode, call `reset_position_attention()`.
Under `paddle.jit.to_static` nothing is cached (Phi_p is part of the graph).

The stem, the CPEs and the stage-change shortcuts keep PyTorch's default init
(`engine.layers.torch_default_init`), as the official model leaves them; Paddle's
own defaults differ.  Parameter names follow the official ones where they are clear; the renames
(`conv_layers` -> `stem`, `attn.activation` -> `attn.ppe`, `attn.to_qkv` ->
`attn.qkv`, `conv` -> `cpe`) are listed in `port_weights/pervit.py`.
"""
import math

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from engine import features as feat
from engine.optim import layer_id_of_blocks
from engine.recompute import GradCheckpointing, run_block
from engine.layers import (Conv2D, DropPath, GroupNorm, LayerNorm, Linear, Mlp, conv_tokens, linear,
                           peripheral_attention, torch_default_init, trunc_normal_, zeros_)

__all__ = ['PerViT', 'build_pervit', 'peripheral_distances']

STAGE_DEPTHS = (2, 2, 6, 2)
LAYER_NORM_EPS = 1e-6          # the official pervit_* builders: partial(nn.LayerNorm, eps=1e-6)
# peripheral initialisation of each block's last GroupNorm, first block -> last block
PERIPHERAL_BIAS = (-5.0, 4.0)      # where the sigmoid sits: small = local, large = global
PERIPHERAL_WEIGHT = (3.0, 0.01)    # how sharply it changes with distance


def _grid_coords(side, pad):
    """1-D token coordinates: `side` points spanning [-1, 1], extended by `pad` equal steps each way."""
    step = 2.0 / (side - 1)
    return -1.0 + step * np.arange(-pad, side + pad, dtype=np.float64)


def peripheral_distances(side, pad):
    """[N, side+2*pad, side+2*pad] distances from each of the N = side^2 query tokens
    to every position of the grid padded by `pad` tokens (the official OffsetGenerator).

    The two valid (unpadded) 3x3 convs of the PPE eat the padding, so their
    output is again a side x side map of keys per query.
    """
    c = _grid_coords(side, pad)
    ky, kx = np.meshgrid(c, c, indexing='ij')                       # keys on the padded grid
    q = c[pad:pad + side]
    qy, qx = np.meshgrid(q, q, indexing='ij')                       # queries on the real grid
    d = np.sqrt((ky[None] - qy.reshape(-1, 1, 1)) ** 2 + (kx[None] - qx.reshape(-1, 1, 1)) ** 2)
    return d.astype('float32')


class ConvBNReLU(nn.Layer):
    def __init__(self, in_chans, out_chans, stride):
        super().__init__()
        self.conv = Conv2D(in_chans, out_chans, 3, stride=stride, padding=1)
        self.bn = nn.BatchNorm2D(out_chans)
        self.act = nn.ReLU()
        torch_default_init(self.conv)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class ConvStem(nn.Layer):
    """Four stride-2 Conv3x3-BN-ReLU and a 1x1 conv: image -> tokens [B, H*W, C] and the grid (H, W)."""

    def __init__(self, in_chans, dims):
        super().__init__()
        chans = [in_chans] + list(dims)
        self.convs = nn.Sequential(*[ConvBNReLU(chans[i], chans[i + 1], stride=2) for i in range(len(dims))])
        self.proj = Conv2D(dims[-1], dims[-1], 1)
        torch_default_init(self.proj)

    def forward(self, x):
        x = self.proj(self.convs(x))
        grid = tuple(x.shape[2:])
        return x.flatten(2).transpose([0, 2, 1]), grid


class PeripheralPositionEncoding(nn.Layer):
    """Per block: distance maps around each query -> Phi_p [1, h, N, N] in (0, 1).

    The official module embeds every distance with the shared Linear(1 -> 4h),
    then runs conv1 (3x3, valid) - GroupNorm - ReLU - conv2 - GroupNorm - sigmoid
    on [N, 4h, side+4, side+4] maps.  This one computes the same function in a
    cheaper order.  The embedding is affine in one number, so conv1 of it is a
    one-channel conv of the distances themselves, with the embedding folded into
    its taps and bias; the patches of the fixed distances under that window are
    a constant (`distance_patches`), so conv1 is one GEMM; the rest runs as the
    official module does, channels first.  Paddle's CPU conv took 1.2 s a
    training step for the twelve PPEs of PerViT-T, conv1 as a GEMM and conv2 as
    a sum of one GEMM per tap on channels-last maps 0.39 s (PyTorch: 0.24 s);
    conv2 by the engine's dense conv (`engine.layers.Conv2D`: the fused CPU
    kernel, which differentiates without Paddle's one-thread unfold) took one
    PPE's forward + backward from 35-40 to 25-30 ms (paired, batch-free: the
    PPE reads no image); the parameters and their names are the official ones.

    The folded conv1 is written in a form Paddle Inference's oneDNN
    passes (3.3.1) handle in an exported model: its taps are built directly in
    the [k*k, 4h] layout the GEMM takes (transpose, then reshape) and its bias
    as vector @ matrix^T.  Built as reshape -> transpose feeding the GEMM (as
    `taps.t()` did), oneDNN fuses the pair into a `fused_matmul` that raises
    `dnnl::error` for a 4-D input, here at predictor creation since the whole
    PPE is constant-folded.  A matrix @ vector followed by an add is fused into
    one that adds only the first element of the addend (wrong values, no error;
    seen in a minimal graph, not in this one).  Both forms compute the same
    numbers in dygraph, at the same speed (paired, PerViT-T training step).
    """

    def __init__(self, num_heads, peripheral_init, kernel_size=3):
        super().__init__()
        hidden = num_heads * 4
        self.conv1 = Conv2D(hidden, hidden, kernel_size)        # valid convs: no padding
        self.gn1 = GroupNorm(hidden, hidden)
        self.conv2 = Conv2D(hidden, num_heads, kernel_size)
        self.gn2 = GroupNorm(num_heads, num_heads)
        for conv in (self.conv1, self.conv2):
            nn.initializer.Constant(0.02)(conv.weight)
            zeros_(conv.bias)
        bias, weight = peripheral_init
        nn.initializer.Constant(bias)(self.gn2.bias)
        nn.initializer.Constant(weight)(self.gn2.weight)

    def forward(self, distance_patches, embed):
        """`distance_patches` [N, s, s, k*k] from `distance_patches()`, `embed` the shared Linear(1 -> 4h)."""
        w1, b1 = self.conv1.weight, self.conv1.bias                  # [4h, 4h, k, k], [4h]
        k = w1.shape[-1]
        # taps[t, o] = sum_i w1[o, i, t] * embed.weight[i]; bias[o] = b1[o] + sum_i w1[o, i, :, :].sum() * embed.bias[i]
        taps = (w1 * embed.weight.reshape([1, -1, 1, 1])).sum(axis=1).transpose([1, 2, 0]).reshape([k * k, -1])
        bias = b1 + paddle.matmul(embed.bias, w1.sum(axis=[2, 3]), transpose_y=True)
        x = linear(distance_patches, taps, bias).transpose([0, 3, 1, 2])   # conv1: [N, 4h, s, s]
        x = F.relu(self.gn1(x))
        x = self.gn2(self.conv2(x))                                       # [N, h, side, side]
        x = x.reshape([x.shape[0], x.shape[1], -1]).transpose([1, 0, 2])  # [h, N queries, N keys]
        return F.sigmoid(x).unsqueeze(0)


def distance_patches(side, pad, k):
    """Patches of `peripheral_distances(side, pad)` under a valid k x k window:
    [N, side+2*pad-k+1, side+2*pad-k+1, k*k], taps in row-major order."""
    d = peripheral_distances(side, pad)
    s = d.shape[-1] - k + 1
    return np.stack([d[:, i:i + s, j:j + s] for i in range(k) for j in range(k)], axis=-1)


class MPA(nn.Layer):
    """Multi-head peripheral attention: content attention re-weighted by Phi_p, then L1-normalised."""

    def __init__(self, dim, num_heads, peripheral_init, proj_drop=0.):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.ppe = PeripheralPositionEncoding(num_heads, peripheral_init)
        self.qkv = Linear(dim, dim * 3, bias_attr=False)
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x, position_attn, return_attention=False):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape([B, N, 3, self.num_heads, C // self.num_heads]).transpose([2, 0, 3, 1, 4])
        q, k, v = qkv.unbind(0)                                      # [B, h, N, d]
        dots = paddle.matmul(q, k, transpose_y=True)
        if dots.dtype != paddle.float32:   # under AMP: exp and the L1 norm in fp32, as torch autocast does
            dots = dots.astype('float32')
        if position_attn.dtype != paddle.float32:
            position_attn = position_attn.astype('float32')
        attn = peripheral_attention(dots, position_attn, self.scale)   # softmax-like, re-weighted, L1-normalised
        out = paddle.matmul(attn, v).transpose([0, 2, 1, 3]).reshape([B, N, C])
        out = self.proj_drop(self.proj(out))
        return (out, attn) if return_attention else out


class CPE(nn.Layer):
    """Convolutional position encoding: depthwise 3x3 conv over the token grid."""

    def __init__(self, dim):
        super().__init__()
        self.proj = Conv2D(dim, dim, 3, padding=1, groups=dim)
        torch_default_init(self.proj)

    def forward(self, x, grid):
        return conv_tokens(self.proj, x, grid)


class Block(nn.Layer):
    def __init__(self, dim, next_dim, num_heads, peripheral_init, mlp_ratio=4., drop=0., drop_path=0.):
        super().__init__()
        self.cpe = CPE(dim)
        self.norm1 = LayerNorm(dim, epsilon=LAYER_NORM_EPS)
        self.attn = MPA(dim, num_heads, peripheral_init, proj_drop=drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = LayerNorm(dim, epsilon=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), next_dim, drop=drop)
        # at a stage end the MLP widens the tokens and the shortcut follows with a Linear
        self.res_path = Linear(dim, next_dim) if next_dim != dim else nn.Identity()
        for layer in (self.attn.qkv, self.attn.proj, self.mlp.fc1, self.mlp.fc2):
            trunc_normal_(layer.weight)
            if layer.bias is not None:
                zeros_(layer.bias)
        if next_dim != dim:
            torch_default_init(self.res_path)

    def forward(self, x, grid, position_attn, return_attention=False):
        a = self.attn(self.norm1(self.cpe(x, grid)), position_attn, return_attention)
        a, attn = a if return_attention else (a, None)
        x = x + self.drop_path(a)
        x = self.res_path(x) + self.drop_path(self.mlp(self.norm2(x)))
        return (x, attn) if return_attention else x


class PerViT(GradCheckpointing, nn.Layer):
    CLASSIFIER = ('head',)

    def __init__(self, img_size=224, in_chans=3, num_classes=1000, embed_dims=(128, 192, 224, 280),
                 stem_dims=(48, 64, 96, 128), num_heads=4, depths=STAGE_DEPTHS, mlp_ratio=4.,
                 drop_rate=0., drop_path_rate=0.):
        super().__init__()
        if len(embed_dims) != len(depths):
            raise ValueError(f'PerViT: {len(embed_dims)} EMBED_DIMS for {len(depths)} stages (DEPTHS)')
        if stem_dims[-1] != embed_dims[0]:
            raise ValueError(f'PerViT: the stem ends with {stem_dims[-1]} channels, '
                             f'the first stage needs {embed_dims[0]}')
        self.img_size = img_size
        self.grid_side = math.ceil(img_size / 16)   # four stride-2 convs with padding 1
        self.num_heads = num_heads
        self.pad = 2                      # two valid 3x3 convs in the PPE eat 2 tokens per side
        dims = [d for d, n in zip(embed_dims, depths) for _ in range(n)]
        dims.append(dims[-1])
        depth = len(dims) - 1
        self.depth = depth
        self.grad_checkpointing = False     # engine.recompute: TRAIN.RECOMPUTE

        self.stem = ConvStem(in_chans, stem_dims)
        self.rpe_proj = Linear(1, num_heads * 4)   # distance -> 4h features, shared by all blocks
        nn.initializer.Constant(-0.02)(self.rpe_proj.weight)
        zeros_(self.rpe_proj.bias)

        biases = np.linspace(*PERIPHERAL_BIAS, depth)
        weights = np.linspace(*PERIPHERAL_WEIGHT, depth)
        dpr = np.linspace(0, drop_path_rate, depth)
        self.blocks = nn.LayerList([
            Block(dims[i], dims[i + 1], num_heads, (float(biases[i]), float(weights[i])),
                  mlp_ratio=mlp_ratio, drop=drop_rate, drop_path=float(dpr[i]))
            for i in range(depth)])
        # one feature per stage, after its last block; that block's MLP already widens the tokens
        # to the next stage's width, so stage s has dims[end of s + 1] channels, all at stride 16
        ends = np.cumsum(depths) - 1
        self.stage_ends = [int(e) for e in ends]
        self.feature_info = [dict(module=f'blocks.{e}', num_chs=dims[e + 1], reduction=16) for e in self.stage_ends]

        self.norm = LayerNorm(dims[-1], epsilon=LAYER_NORM_EPS)
        self.head = Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            trunc_normal_(self.head.weight)
            zeros_(self.head.bias)

        self._distance_patches = {}     # side -> distance_patches() tensor (weight-free)
        self._position_cache = {}       # side -> list of Phi_p per block, eval mode only

    # ---- position-based attention -------------------------------------------------------
    def _check_grid(self, grid):
        if grid[0] != grid[1] or grid[0] < 2:
            raise ValueError(f'PerViT needs a square token grid of at least 2 x 2 (its peripheral '
                             f'position encoding is defined on one); the input gives a {grid[0]} x '
                             f'{grid[1]} grid (model built for {self.img_size} x {self.img_size} '
                             f'images, a {self.grid_side} x {self.grid_side} grid)')
        return grid[0]

    def position_attention(self, grid=None):
        """Phi_p of every block for a token grid (default: the built image size), each [1, h, N, N].

        Always computed from the current weights (no cache), with the gradient
        graph when gradients are enabled.
        """
        side = self._check_grid(grid or (self.grid_side, self.grid_side))
        k = self.blocks[0].attn.ppe.conv1.weight.shape[-1]
        if not paddle.in_dynamic_mode():        # tracing: a tensor made here belongs to this program
            patches = paddle.to_tensor(distance_patches(side, self.pad, k))
        else:
            if side not in self._distance_patches:
                self._distance_patches[side] = paddle.to_tensor(distance_patches(side, self.pad, k))
            patches = self._distance_patches[side]
        return [blk.attn.ppe(patches, self.rpe_proj) for blk in self.blocks]

    def _position_attention_for(self, grid):
        if self.training:
            self._position_cache.clear()
            return self.position_attention(grid)
        if not paddle.in_dynamic_mode():        # tracing (to_static): part of the graph, not cached
            return self.position_attention(grid)
        side = self._check_grid(grid)
        if side not in self._position_cache:
            with paddle.no_grad():
                phis = self.position_attention(grid)
                self._position_cache[side] = [p.detach().astype('float32') for p in phis]
        return self._position_cache[side]

    def reset_position_attention(self):
        """Forget the cached eval-mode Phi_p (call after changing weights in place in eval mode)."""
        self._position_cache.clear()

    def train(self, mode=True):
        self.reset_position_attention()
        # Paddle 3.0's Layer.train() takes no `mode` and returns None (3.1+: train(mode) -> self)
        super().train() if mode else super().eval()
        return self

    def eval(self):
        self.reset_position_attention()
        return super().eval()

    def set_state_dict(self, state_dict, *args, **kwargs):
        self.reset_position_attention()
        return super().set_state_dict(state_dict, *args, **kwargs)

    set_dict = set_state_dict
    load_dict = set_state_dict

    def state_dict(self, *args, **kwargs):
        self.reset_position_attention()    # the caller may change the returned tensors in place
        return super().state_dict(*args, **kwargs)

    # ---- forward -----------------------------------------------------------------------
    def forward_features(self, x, return_attention=False):
        x, grid = self.stem(x)
        position = self._position_attention_for(grid)
        attentions = []
        for blk, phi in zip(self.blocks, position):
            if return_attention:
                x, attn = blk(x, grid, phi, return_attention=True)
                attentions.append(attn)
            else:
                x = run_block(self, blk, x, grid, phi)
        x = self.norm(x).mean(axis=1)
        return (x, attentions) if return_attention else x

    def forward_intermediates(self, x, indices=None, norm=False, output_fmt='NCHW', intermediates_only=False,
                              return_prefix_tokens=False):
        """Each chosen stage's token map (after its last block), for dense heads (see `engine/features.py`).

        PerViT is isotropic in space (the stem's stride 16 grid throughout) and
        hierarchical in width only.  No class token: the prefix tokens, when
        asked for, are empty [B, 0, C].  `norm=True` applies the final LayerNorm
        to the last stage only (the only one of its width); the mean over that
        normed map is `forward_features(x)`.  Any square input whose grid is at
        least 2 x 2 (17 px and up) works, as for `forward` (the peripheral encoding
        is built per grid); non-square inputs are refused, as by `forward`.  Returns the list when `intermediates_only`,
        else (forward_features(x), list).
        """
        feat.check_output_format(output_fmt)
        chosen = [self.stage_ends[s] for s in feat.feature_indices(len(self.stage_ends), indices)]
        x, grid = self.stem(x)
        position = self._position_attention_for(grid)
        last = chosen[-1] if intermediates_only else len(self.blocks) - 1
        maps, prefixes = [], []
        for i in range(last + 1):
            x = self.blocks[i](x, grid, position[i])
            if i in chosen:
                y = self.norm(x) if norm and i == len(self.blocks) - 1 else x
                maps.append(feat.format_map(feat.tokens_to_map(y, *grid), output_fmt))
                prefixes.append(feat.no_prefix(y.shape[0], y.shape[2], y.dtype))
        out = feat.pack(maps, prefixes, return_prefix_tokens)
        if intermediates_only:
            return out
        return self.norm(x).mean(axis=1), out

    def forward(self, x):
        return self.head(self.forward_features(x))

    def forward_attention(self, x):
        """(logits, [mixed attention [B, h, N, N] of every block]) for images x."""
        x, attentions = self.forward_features(x, return_attention=True)
        return self.head(x), attentions

    def no_weight_decay(self):
        # The official optimizer (timm create_optimizer) decays every tensor with more than one
        # dimension and defines no exceptions; the engine already skips the 1-D ones.
        return set()

    def num_layers(self):
        return len(self.blocks)

    def layer_id(self, name):
        """TRAIN.LAYER_DECAY (engine/optim.py): 0 the conv stem and the distance projection every
        block's position encoding reads, i + 1 block i (a stage's widening shortcut is in its last
        block), then the norm and head."""
        return layer_id_of_blocks(name, len(self.blocks), ('stem', 'rpe_proj'))


def build_pervit(config):
    if config.MODEL.ATTENTION_DROPOUT:
        raise ValueError('PerViT has no attention dropout (the official MPA ignores attn_drop); '
                         'set MODEL.ATTENTION_DROPOUT to 0')
    return PerViT(img_size=config.DATA.IMAGE_SIZE,
                  in_chans=config.DATA.IMAGE_CHANNELS,
                  num_classes=config.MODEL.NUM_CLASSES,
                  embed_dims=tuple(config.MODEL.EMBED_DIMS),
                  stem_dims=tuple(config.MODEL.STEM_DIMS),
                  num_heads=config.MODEL.NUM_HEADS,
                  depths=tuple(config.MODEL.DEPTHS),
                  mlp_ratio=config.MODEL.MLP_RATIO,
                  drop_rate=config.MODEL.DROPOUT,
                  drop_path_rate=config.MODEL.DROPPATH)
