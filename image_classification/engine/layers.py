"""Building blocks shared by more than one model family.

Only blocks that at least two families use live here; a block that one family
alone needs stays in that family's model file.  Initialisers mirror the PyTorch
defaults the official models rely on (truncated normal std=.02 for Linear,
zeros for biases, ones/zeros for norms) so a freshly built model trains like
the original.
"""
import collections.abc
import math

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from . import attention_dispatch
from .cpu import dispatch as cpu

trunc_normal_ = nn.initializer.TruncatedNormal(std=.02)
zeros_ = nn.initializer.Constant(value=0.)
ones_ = nn.initializer.Constant(value=1.)


def to_2tuple(x):
    """`x` if it is already a pair, else `(x, x)`."""
    if isinstance(x, collections.abc.Iterable) and not isinstance(x, str):
        return tuple(x)
    return (x, x)


# On CPU, Paddle adds a bias by broadcasting and reduces its gradient with a sum
# over every other axis, a kernel that ran 20-30x slower than a GEMM doing the
# same sum (74 ms against 2.4 ms for a ViT-S MLP activation at batch 32; the
# 3x3 stem conv of PerViT with its bias took 516 ms to train a batch of 32, 63 ms
# without, and 144 ms against 24 ms for inference alone).  The helpers below add
# the bias as products with a ones vector, so that both passes are GEMMs; the
# sums are the same, the result equal.  The layers use them in dygraph on CPU
# (Linear only where the fused kernel, which adds the bias in place, is not
# available); a traced graph (to_static, export) keeps the plain op + add,
# which Paddle Inference fuses into its conv / fc kernels.

def gemm_bias_wanted(bias):
    """Whether `bias` should be added by GEMM now: there is one, in dygraph, on CPU."""
    return bias is not None and paddle.in_dynamic_mode() and paddle.get_device() == 'cpu'


def add_bias_last_axis(out, bias):
    """out + bias over the last axis, as ones[rows, 1] @ bias[1, C] (gradient: ones^T @ grad)."""
    rows = out.reshape([-1, out.shape[-1]])
    rows = rows + paddle.matmul(paddle.ones_like(rows[:, :1]), bias.unsqueeze(0))
    return rows.reshape(out.shape)


def add_bias_channels(out, bias):
    """out + bias over axis 1 of [N, C, ...] (channels first), as two rank-1 GEMMs."""
    images = out.reshape([out.shape[0], -1])                                   # [N, C * HW]
    per_pixel = paddle.ones_like(images[:1, :images.shape[1] // bias.shape[0]])  # [1, HW]
    per_image = paddle.matmul(bias.unsqueeze(1), per_pixel).reshape([1, -1])     # [1, C * HW]
    images = images + paddle.matmul(paddle.ones_like(images[:, :1]), per_image)
    return images.reshape(out.shape)


def linear(x, weight, bias=None):
    """`F.linear`: x @ weight [in, out] + bias over the last axis of `x`.  On CPU in
    dygraph the bias is added in place by the fused kernel of `engine.cpu` (float32),
    or by `add_bias_last_axis` where that is unavailable."""
    if bias is not None and cpu.wanted(x, weight, bias):
        return cpu.kernels().linear(x, weight, bias)
    if gemm_bias_wanted(bias):
        return add_bias_last_axis(paddle.matmul(x, weight), bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """`nn.Linear` (same parameters, same names) that runs faster on CPU: there, in
    dygraph, the bias is added by GEMM (see above); elsewhere it is `F.linear`."""

    def forward(self, x):
        return linear(x, self.weight, self.bias)


class Conv2D(nn.Conv2D):
    """`nn.Conv2D` (same parameters, same names) that runs faster on CPU: there, in
    dygraph and channels first, a depthwise conv (groups = input channels, any
    channel multiplier, stride and symmetric padding) runs a fused kernel of
    `engine.cpu`, so does a dense one (groups 1; with gradients too: Paddle's
    backward unfolds each image on one thread), and any other adds its bias by
    GEMM (see above).  A traced graph keeps the plain op, except inside
    `engine.cpu.dispatch.kernels_in_graph()`, where it records the fused kernel."""

    def forward(self, x):
        if self._data_format != 'NCHW' or self._padding_mode != 'zeros':
            return super().forward(x)
        padding = _symmetric_padding(self)
        if padding is not None and list(self._dilation) == [1, 1] and cpu.wanted(x, self.weight):
            depthwise = 1 < self._groups == x.shape[1] and self.weight.shape[1] == 1
            if depthwise or (self._groups == 1 and cpu.gemm_kernels_available()):
                kernels = cpu.kernels()
                kernel = kernels.depthwise_conv_image if depthwise else kernels.conv
                bias = self.bias if self.bias is not None else paddle.zeros([self._out_channels], x.dtype)
                return kernel(x, self.weight, bias, self._stride, padding)
        if not gemm_bias_wanted(self.bias):
            return super().forward(x)
        out = F.conv2d(x, self.weight, None, stride=self._stride, padding=self._padding,
                       dilation=self._dilation, groups=self._groups)
        return add_bias_channels(out, self.bias)


class LayerNorm(nn.LayerNorm):
    """`nn.LayerNorm` (same parameters, same names) that runs faster on CPU: there,
    in dygraph, it runs the fused kernel of `engine.cpu` (4x Paddle's with gradients)."""

    def forward(self, x):
        if len(self._normalized_shape) == 1 and cpu.wanted(x, self.weight, self.bias):
            return cpu.kernels().layer_norm(x, self.weight, self.bias, self._epsilon)
        return super().forward(x)


class GroupNorm(nn.GroupNorm):
    """`nn.GroupNorm` (same parameters, same names) that runs faster on CPU: there, in dygraph,
    channels first with a weight and a bias, it runs the fused kernel of `engine.cpu`
    (PerViT's position encoding: Paddle's took 100 ms of a PerViT-T training step at batch 1)."""

    def forward(self, x):
        if (self._data_format == 'NCHW' and self.weight is not None and self.bias is not None
                and cpu.wanted(x, self.weight, self.bias)):
            return cpu.kernels().group_norm(x, self.weight, self.bias, self._epsilon, self._num_groups)
        return super().forward(x)


class GELU(nn.GELU):
    """`nn.GELU` that runs faster on CPU: there, in dygraph, the exact (erf) form runs
    the fused kernel of `engine.cpu` (2x Paddle's forward: 13 against 25 ms on
    PiT-S's stage-1 MLP, 7 against 15 on stage 2)."""

    def forward(self, x):
        if not self._approximate and cpu.wanted(x):
            return cpu.kernels().gelu(x)
        return super().forward(x)


def _hooked(layer):
    """Whether `layer` has forward hooks (Paddle keeps them in these two dicts), which a fused
    kernel running in its place would skip."""
    return bool(getattr(layer, '_forward_pre_hooks', None) or getattr(layer, '_forward_post_hooks', None))


def gelu_linear(act, linear, x, drop=None):
    """`linear(act(x))`, the second half of a transformer MLP, for the layers `act` and `linear`;
    with the MLP's dropout layer `drop`, its whole tail, `drop(linear(drop(act(x))))`.

    With an exact `GELU` and a `Linear` with bias, on CPU (dygraph, or an export with the kernels),
    float32, and no dropout drawn (eval, or rate 0), one fused kernel of `engine.cpu` computes it
    and keeps only `x` for the backward pass, computing GELU again there; the two layers run as two
    ops keep both `x` (GELU's gradient needs it) and act(x) (the Linear's weight gradient does): one
    hidden activation less per MLP (ViT-S at batch 32: 37 MB a block).  The same values.  Where
    either layer has a forward hook (the explanation tools read act's output), or anything else,
    the layers run as they are."""
    if drop is not None and drop.training and drop.p > 0:
        return drop(linear(drop(act(x))))
    if (type(act) is GELU and not act._approximate and isinstance(linear, nn.Linear) and linear.bias is not None
            and not _hooked(act) and not _hooked(linear) and cpu.wanted(x, linear.weight, linear.bias)):
        return cpu.kernels().gelu_linear(x, linear.weight, linear.bias)
    return linear(act(x))


def conv_tokens(conv, tokens, grid):
    """`conv` applied to tokens [B, H*W, C] seen as an image over `grid` (H, W), the
    result again as tokens.  A 'same' depthwise conv (stride 1, odd k, padding
    k // 2, with bias) runs on the tokens directly on CPU (`engine.cpu`);
    otherwise the tokens go to NCHW and back."""
    C = tokens.shape[-1]
    if (conv._groups == C == conv.weight.shape[0] and conv.bias is not None and conv._data_format == 'NCHW'
            and conv._padding_mode == 'zeros' and _is_same_conv(conv)
            and cpu.wanted(tokens, conv.weight, conv.bias)):
        return cpu.kernels().depthwise_conv_tokens(tokens, conv.weight, conv.bias, grid)
    image = tokens.transpose([0, 2, 1]).reshape([-1, C, grid[0], grid[1]])
    return conv(image).flatten(2).transpose([0, 2, 1])


def _is_same_conv(conv):
    """Whether `conv` keeps the grid: odd square kernel, stride 1, no dilation, padding k // 2."""
    k, pad = conv.weight.shape[-1], conv._padding
    pads = [pad] if isinstance(pad, int) else list(pad)
    return (k % 2 == 1 and conv.weight.shape[-2] == k and list(conv._stride) == [1, 1]
            and list(conv._dilation) == [1, 1] and (str(pad).lower() == 'same' or pads == [k // 2] * len(pads)))


def _symmetric_padding(conv):
    """`conv`'s zero padding as (h, w) when it pads both sides of each axis alike and is
    given as numbers; None for 'same' / 'valid' strings and asymmetric forms."""
    pad = conv._padding
    if isinstance(pad, int):
        return (pad, pad)
    if isinstance(pad, (list, tuple)) and len(pad) == 2 and all(isinstance(p, int) for p in pad):
        return tuple(pad)
    return None


def add_position_embedding(x, pos_embed):
    """x + pos_embed, where pos_embed has batch size 1.

    Paddle's CPU add broadcasting over the batch axis ran 10x slower than a
    same-shape add (PiT-S's position embedding at batch 32: 26 ms against 2.7
    for inference, 68 against 10 with gradients), so in dygraph on CPU the
    embedding is expanded to the batch first; elsewhere the plain broadcast.
    """
    if paddle.in_dynamic_mode() and x.place.is_cpu_place():
        return x + pos_embed.expand(x.shape)
    return x + pos_embed


def init_vit_weights(layer):
    """timm/DeiT initialisation: trunc-normal Linear, unit LayerNorm."""
    if isinstance(layer, nn.Linear):
        trunc_normal_(layer.weight)
        if layer.bias is not None:
            zeros_(layer.bias)
    elif isinstance(layer, (nn.LayerNorm, nn.GroupNorm)):
        if layer.weight is not None:
            ones_(layer.weight)
        if layer.bias is not None:
            zeros_(layer.bias)


def torch_default_init(layer):
    """PyTorch's default Linear / Conv init, which many official models keep:
    weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform, a=sqrt(5))."""
    if isinstance(layer, nn.Linear):
        fan_in = layer.weight.shape[0]                        # Paddle Linear weight: [in, out]
    elif isinstance(layer, (nn.Conv2D, nn.Conv2DTranspose)):
        fan_in = int(np.prod(layer.weight.shape[1:]))         # [out, in / groups, kh, kw]; transposed [in, out / groups, ...]
    else:
        return
    bound = 1.0 / math.sqrt(fan_in)
    nn.initializer.Uniform(-bound, bound)(layer.weight)
    if layer.bias is not None:
        nn.initializer.Uniform(-bound, bound)(layer.bias)


def drop_path(x, drop_prob=0., training=False):
    """Stochastic depth per sample: zero whole residual branches, rescale the rest.

    On CPU in dygraph (float32) a fused kernel of `engine.cpu` applies the per-sample
    scale and keeps only the B scales for the backward pass, as PyTorch does; Paddle's
    multiply keeps the whole scaled branch (ViT-S at batch 32: 9.2 MB per drop path,
    203 MB over its 22 drop paths).  The scale is mask / keep_prob, so a kept branch may
    differ from x / keep_prob in the last bit."""
    if drop_prob == 0. or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = paddle.floor(keep_prob + paddle.rand(shape, dtype=x.dtype))
    if cpu.wanted(x):
        return cpu.kernels().scale_rows(x, mask.reshape([-1]) / keep_prob)
    return x / keep_prob * mask


class DropPath(nn.Layer):
    """Stochastic depth (Huang et al. 2016) as a layer, identity at eval."""

    def __init__(self, drop_prob=0.):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self):
        return f'drop_prob={self.drop_prob}'


class Mlp(nn.Layer):
    """Transformer feed-forward: Linear -> GELU -> Dropout -> Linear -> Dropout.

    Sub-layer names `fc1`/`fc2` match timm and most official repos, which keeps
    the weight-porting key maps one-to-one.
    """

    def __init__(self, in_features, hidden_features=None, out_features=None,
                 act_layer=GELU, drop=0.):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return gelu_linear(self.act, self.fc2, self.fc1(x), self.drop)


def multi_head_attention(qkv, attn_drop=0., training=False):
    """softmax(q k^T / sqrt(d)) v of a packed qkv projection [B, N, 3, heads, d] (timm's
    layout of the fused qkv Linear), result [B, N, heads, d].

    The kernel is chosen by `engine.attention_dispatch` from the dtype, device,
    compute capability, head size and Paddle version, so no case reaches a kernel
    that does not exist for it.  On CPU in dygraph (float32) one fused kernel reads
    q, k and v in place and never holds more than a 64-query block of scores,
    forward or backward (PyTorch's CPU flash attention does the same): PiT-S's
    stage 1 (N = 730) takes 132 ms unfused without gradients (PyTorch 114, here
    102-110) and 358 ms with them (here 324), and keeps no [B, heads, N, N] matrix
    for the backward pass.  With attention dropout in training, or a Paddle without
    MKL, the softmax, with the scale taken in, runs a fused kernel in place over the
    q k^T product.  On GPU: flash attention, Paddle's memory-efficient kernel, or
    the plain math, whichever exists for the case.
    """
    return attention_dispatch.attention(qkv, attn_drop, training)


def peripheral_attention(dots, position, scale):
    """PerViT's attention weights from the content scores `dots` = q k^T [B, h, N, N] and the
    peripheral position weights `position` [1, h, N, N] (both float32): the rows of
    exp(scale * dots) * position, L1-normalised (F.normalize(p=1) of the official code; the
    terms are positive, so |.| is not needed; the sum is clipped at 1e-12).

    On CPU in dygraph one fused kernel computes it (16 ms against Paddle's 198 for a block,
    with gradients); elsewhere the same with Paddle's ops.  The row max subtracted there
    only keeps exp in range: the normalisation cancels it, so its exact gradient is zero and
    it is detached (Paddle's max backward cost 65% of a training step).
    """
    if cpu.wanted(dots, position):
        return cpu.kernels().peripheral_attention(dots, position, scale)
    dots = dots * scale
    attn = paddle.exp(dots - dots.max(axis=-1, keepdim=True).detach()) * position
    return attn / paddle.clip(attn.sum(axis=-1, keepdim=True), min=1e-12)


def clamp_magnitude(x, low, high):
    """sign(x) * clip(|x|, low, high): magnitudes held to [low, high], signs kept (VVT's guard).

    On CPU in dygraph (float32) one fused kernel computes it and keeps only `x` for the
    backward pass; Paddle's abs, clip, sign and multiply keep four tensors the size of
    `x` (147 MB per clamp in VVT-tiny's stage 1 at batch 32, which clamps each
    attention output several times).  Same values and gradient (zero where x is 0 or
    its magnitude is clipped)."""
    if cpu.wanted(x):
        return cpu.kernels().abs_clamp(x, low, high)
    return paddle.sign(x) * paddle.clip(paddle.abs(x), low, high)


def resize_pos_embed(pos_embed, new_grid, num_prefix_tokens=1, mode='bicubic'):
    """Resize a [1, prefix + H*W, C] position embedding to `new_grid` (h, w).

    The prefix tokens (class / distillation) are kept as they are; the grid part
    is reshaped to an image and interpolated (bicubic, align_corners=False, as
    timm and DeiT fine-tuning do).  Works on numpy arrays so checkpoints can be
    adapted before a model is built.
    """
    pos_embed = np.asarray(pos_embed)
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old = int(math.sqrt(grid.shape[1]))
    if old * old != grid.shape[1]:
        raise ValueError(f'position embedding grid of {grid.shape[1]} tokens is not square')
    new_grid = to_2tuple(new_grid)
    if (old, old) == tuple(new_grid):
        return pos_embed
    dim = grid.shape[-1]
    img = paddle.to_tensor(grid.reshape(1, old, old, dim).transpose(0, 3, 1, 2).astype('float32'))
    img = F.interpolate(img, size=list(new_grid), mode=mode, align_corners=False)
    grid = img.numpy().transpose(0, 2, 3, 1).reshape(1, -1, dim)
    return np.concatenate([prefix, grid.astype(pos_embed.dtype)], axis=1)
