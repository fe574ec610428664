"""The transformer block PiT, ViT and SP-ViT share: one self-attention, one pre-norm block, one init.

The three official models (naver-ai/pit on timm's `Block`, ViT-pytorch, SP-ViT /
LV-ViT) compute the same block,

    x = x + drop_path(attn(norm1(x))) / skip_lam
    x = x + drop_path(mlp(norm2(x)))  / skip_lam
    attn(x) = proj_drop(proj(softmax(q k^T / sqrt(d)) v)),   q, k, v = split(qkv(x))

and differ only in numbers the constructors take: LayerNorm eps (1e-6 PiT and
ViT, 1e-5 SP-ViT), qkv bias (off in SP-ViT), the residual divisor (`skip_lam`,
LV-ViT's; 1 elsewhere), the dropout after the attention's projection
(ViT-pytorch applies the attention dropout rate there, timm the projection
dropout) and the attention layer itself (SP-ViT's spatial-prior blocks).  The
sub-layer names are timm's (`norm1`, `attn.qkv`, `attn.proj`, `drop_path`,
`norm2`, `mlp.fc1`, `mlp.fc2`), which every family's state dict, weight porter
and fixture uses.

PerViT's peripheral attention (no softmax: content x position, L1-normalised)
and VVT's vicinity attention (linear attention with feature reduction) are
different functions and keep their own layers.
"""
import paddle.nn as nn

from .layers import DropPath, LayerNorm, Linear, Mlp, init_vit_weights, multi_head_attention, torch_default_init

__all__ = ['Attention', 'Block', 'init_weights']


class Attention(nn.Layer):
    """Multi-head self-attention with one fused qkv projection (timm's layout [3, heads, head_dim]).

    A normal forward runs the kernel `engine.attention_dispatch` picks for the
    case (fused CPU kernels, flash / memory-efficient attention on GPU, plain
    ops elsewhere) and keeps nothing.

    The attention probabilities softmax(q k^T / sqrt(d)), [B, heads, N, N], are
    there to read on the plain path: within
    `engine.attention_dispatch.explicit_attention()` every attention takes it and
    passes them through its `attn_drop` sub-layer (a Dropout), where a forward
    pre-hook sees them with their autograd graph (or a post-hook in eval mode,
    where the Dropout is the identity).  `engine.explain.capture` does this for
    a whole model; no model keeps them otherwise.
    """

    def __init__(self, dim, num_heads=8, qkv_bias=True, attn_drop=0., proj_drop=0.):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'embed dim {dim} is not divisible by {num_heads} heads')
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = Linear(dim, dim * 3, bias_attr=None if qkv_bias else False)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
        qkv = self.qkv(x).reshape([0, 0, 3, self.num_heads, self.head_dim])
        x = multi_head_attention(qkv, self.attn_drop, self.training)   # A passes attn_drop on the plain path
        return self.proj_drop(self.proj(x.reshape([0, 0, self.dim])))


class Block(nn.Layer):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)), each branch
    through drop path and divided by `skip_lam`.

    Args (timm's names where timm has the argument):
        mlp_ratio: the MLP's hidden width is int(dim * mlp_ratio), unless `mlp_hidden_dim` is given
            (ViT's configs state the width itself).
        proj_drop: dropout after the MLP's layers and after the attention's projection.
        attn_proj_drop: the dropout after the attention's projection when it differs from
            `proj_drop` (ViT-pytorch uses its attention dropout rate there).
        norm_layer: builds norm1 and norm2 from the width.
        attn_layer: builds `attn` as attn_layer(dim, num_heads, qkv_bias=, attn_drop=, proj_drop=)
            (SP-ViT passes its spatial-prior attention for its first blocks).
        skip_lam: divisor of both residual branches (LV-ViT / SP-ViT; 1 elsewhere).
    """

    def __init__(self, dim, num_heads, mlp_ratio=4., qkv_bias=True, proj_drop=0., attn_drop=0., drop_path=0.,
                 norm_layer=LayerNorm, attn_layer=Attention, mlp_hidden_dim=None, attn_proj_drop=None,
                 skip_lam=1.):
        super().__init__()
        self.skip_lam = skip_lam
        self.norm1 = norm_layer(dim)
        self.attn = attn_layer(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop,
                               proj_drop=proj_drop if attn_proj_drop is None else attn_proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, mlp_hidden_dim or int(dim * mlp_ratio), drop=proj_drop)

    def forward(self, x):
        x = x + self._scaled(self.drop_path(self.attn(self.norm1(x))))
        return x + self._scaled(self.drop_path(self.mlp(self.norm2(x))))

    def _scaled(self, branch):
        return branch if self.skip_lam == 1 else branch / self.skip_lam


LINEAR_INITS = ('trunc_normal', 'torch_default')


def init_weights(layer, linear='trunc_normal'):
    """Initialise one layer as the official models do; use as `model.apply(init_weights)`.

    LayerNorm / GroupNorm: weight 1, bias 0.  `linear` says what the official
    code does with Linear layers:
        'trunc_normal'   timm / DeiT / LV-ViT: weight ~ truncated normal (std .02), bias 0;
                         convolutions are left to the caller.
        'torch_default'  leaves PyTorch's defaults (naver-ai/pit, ViT-pytorch), reproduced here
                         for Linear and Conv2D: U(+-1/sqrt(fan_in)) for weight and bias.
    """
    if linear not in LINEAR_INITS:
        raise ValueError(f'linear init {linear!r}: expected one of {LINEAR_INITS}')
    if linear == 'torch_default' and isinstance(layer, (nn.Linear, nn.Conv2D)):
        torch_default_init(layer)
    else:
        init_vit_weights(layer)
