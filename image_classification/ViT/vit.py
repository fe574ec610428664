"""Vision Transformer (Dosovitskiy et al., ICLR 2021) and its ResNet hybrid, in Paddle.

Numerically the model of ViT-pytorch (`models/modeling.py`, `modeling_resnet.py`):
pre-norm blocks with LayerNorm eps 1e-6, exact GELU, the class token's final
feature as the image representation (`classifier='token'`), the ResNetV2 stem
(weight-standardised convs + GroupNorm) for R50+ViT, and the same initialisation
(PyTorch's default Linear/Conv init, Xavier-uniform MLP weights with ~0 biases,
zero class token and position embedding).  Two deliberate differences in form,
none in value:

* query, key and value are one fused Linear (`attn.qkv`), so a block runs one
  matmul and Paddle's fused attention kernel; the weight porter concatenates the
  official q/k/v weights.
* the optional `pre_logits` layer (Linear + tanh) of Google's ImageNet-21k
  checkpoints, which ViT-pytorch ignores, is built when MODEL.REPRESENTATION_SIZE
  is set.

The blocks are `engine.blocks.Block` (shared with PiT and SP-ViT).  Attention
probabilities are not kept during a normal forward; `forward_attention`
reads them on the plain attention path (`engine.explain.capture`) for visualisation.
"""
import functools
import math

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from engine import features as feat
from engine.blocks import Block, init_weights
from engine.optim import layer_id_of_blocks
from engine.recompute import GradCheckpointing, run_block
from engine.layers import Conv2D, GroupNorm, LayerNorm, Linear, add_position_embedding, to_2tuple

__all__ = ['VisionTransformer', 'ResNetV2', 'build_vit', 'zoom_linear']


# ---------------------------------------------------------------- initialisation
def _init_mlp(mlp):
    """ViT-pytorch's `Mlp._init_weights`: Xavier-uniform weights, N(0, 1e-6) biases."""
    for fc in (mlp.fc1, mlp.fc2):
        nn.initializer.XavierUniform()(fc.weight)
        nn.initializer.Normal(std=1e-6)(fc.bias)


# ------------------------------------------------------------ ResNetV2 (hybrid)
class StdConv2D(nn.Conv2D):
    """Conv2D with weight standardisation: each filter is centred and scaled to unit
    (biased) variance, eps 1e-5, before the convolution (BiT / ViT-pytorch)."""

    def forward(self, x):
        w = self.weight
        mean = w.mean(axis=[1, 2, 3], keepdim=True)
        var = ((w - mean) ** 2).mean(axis=[1, 2, 3], keepdim=True)
        w = (w - mean) / paddle.sqrt(var + 1e-5)
        return F.conv2d(x, w, self.bias, self._stride, self._padding, self._dilation, self._groups,
                        self._data_format)


def _conv(cin, cout, kernel, stride=1):
    return StdConv2D(cin, cout, kernel, stride=stride, padding=kernel // 2, bias_attr=False)


class Bottleneck(nn.Layer):
    """ResNetV2 bottleneck as ViT-pytorch builds it (`PreActBottleneck`; despite the
    name the norms follow the convs): conv1x1-GN-ReLU, conv3x3(stride)-GN-ReLU,
    conv1x1-GN, plus the (projected) shortcut, then ReLU.  GroupNorm: 32 groups,
    eps 1e-6; the projection's GroupNorm has one group per channel and eps 1e-5."""

    def __init__(self, cin, cout, cmid, stride=1):
        super().__init__()
        self.gn1 = GroupNorm(32, cmid, epsilon=1e-6)
        self.conv1 = _conv(cin, cmid, 1)
        self.gn2 = GroupNorm(32, cmid, epsilon=1e-6)
        self.conv2 = _conv(cmid, cmid, 3, stride)
        self.gn3 = GroupNorm(32, cout, epsilon=1e-6)
        self.conv3 = _conv(cmid, cout, 1)
        self.relu = nn.ReLU()
        if stride != 1 or cin != cout:
            self.downsample = _conv(cin, cout, 1, stride)
            self.gn_proj = GroupNorm(cout, cout, epsilon=1e-5)
        else:
            self.downsample = None

    def forward(self, x):
        shortcut = x if self.downsample is None else self.gn_proj(self.downsample(x))
        y = self.relu(self.gn1(self.conv1(x)))
        y = self.relu(self.gn2(self.conv2(y)))
        y = self.gn3(self.conv3(y))
        return self.relu(shortcut + y)


class ResNetV2(nn.Layer):
    """The R50 stem of R50+ViT: root (7x7/2 conv, GN, ReLU, 3x3/2 max-pool without
    padding) and three stages of bottlenecks (`layers` units each, the first of
    stages 2 and 3 with stride 2): total stride 16, 1024 * width_factor channels.
    Sub-layer names follow ViT-pytorch (`root.conv`, `body.block1.unit1.gn1`, ...)."""

    def __init__(self, layers=(3, 4, 9), width_factor=1, in_chans=3):
        super().__init__()
        width = int(64 * width_factor)
        self.out_channels = width * 16
        self.root = nn.Sequential(
            ('conv', StdConv2D(in_chans, width, 7, stride=2, padding=3, bias_attr=False)),
            ('gn', GroupNorm(32, width, epsilon=1e-6)),
            ('relu', nn.ReLU()),
            ('pool', nn.MaxPool2D(kernel_size=3, stride=2, padding=0)))
        stages, cin = [], width
        for i, (units, mult) in enumerate(zip(layers, (1, 2, 4))):
            cmid, cout = width * mult, width * mult * 4
            blocks = [(f'unit{u + 1}', Bottleneck(cin if u == 0 else cout, cout, cmid,
                                                  stride=2 if (u == 0 and i > 0) else 1))
                      for u in range(units)]
            stages.append((f'block{i + 1}', nn.Sequential(*blocks)))
            cin = cout
        self.body = nn.Sequential(*stages)

    def forward(self, x):
        return self.body(self.root(x))


# ------------------------------------------------------------------ transformer
class PatchEmbed(nn.Layer):
    """Image -> [B, N, C] patch tokens: a patch_size-strided conv, after the ResNet
    stem for the hybrid (whose stride 16 leaves a patch_size // 16 conv)."""

    def __init__(self, img_size, patch_size, embed_dim, resnet_layers=(), resnet_width=1, in_chans=3):
        super().__init__()
        img_size, patch_size = to_2tuple(img_size), to_2tuple(patch_size)
        self.grid_size = (img_size[0] // patch_size[0], img_size[1] // patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        if resnet_layers:
            if patch_size[0] % 16 or patch_size[1] % 16:
                raise ValueError(f'hybrid ViT: MODEL.PATCH_SIZE {patch_size} must be a multiple of '
                                 f'the ResNet stride 16')
            self.backbone = ResNetV2(resnet_layers, resnet_width, in_chans)
            in_channels, kernel = self.backbone.out_channels, (patch_size[0] // 16, patch_size[1] // 16)
        else:
            self.backbone = None
            in_channels, kernel = in_chans, patch_size
        self.proj = Conv2D(in_channels, embed_dim, kernel, stride=kernel)

    def forward(self, x):
        if self.backbone is not None:
            x = self.backbone(x)
        x = self.proj(x)                                  # [B, C, h, w]
        return x.flatten(2).transpose([0, 2, 1])          # [B, h*w, C]


class VisionTransformer(GradCheckpointing, nn.Layer):
    """ViT: patch (or ResNet-feature) tokens, a class token, learned position
    embeddings, `depth` pre-norm blocks, a final LayerNorm and a linear head on the
    class token (through tanh(pre_logits) when `representation_size` is set)."""

    CLASSIFIER = ('head',)

    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=768, depth=12,
                 num_heads=12, mlp_dim=3072, representation_size=0, drop_rate=0., attn_drop_rate=0.,
                 drop_path_rate=0., norm_layer=functools.partial(LayerNorm, epsilon=1e-6), resnet_layers=(),
                 resnet_width=1, pos_embed_resize='zoom_linear', zero_head=False):
        super().__init__()
        if pos_embed_resize not in ('zoom_linear', 'bicubic'):
            raise ValueError(f'pos_embed_resize {pos_embed_resize!r}: expected zoom_linear or bicubic')
        self.num_classes = num_classes
        self.pos_embed_resize = pos_embed_resize
        self.grad_checkpointing = False     # engine.recompute: TRAIN.RECOMPUTE
        self.patch_embed = PatchEmbed(img_size, patch_size, embed_dim, resnet_layers, resnet_width, in_chans)
        self.cls_token = self.create_parameter([1, 1, embed_dim], default_initializer=nn.initializer.Constant(0.))
        self.pos_embed = self.create_parameter([1, self.patch_embed.num_patches + 1, embed_dim],
                                               default_initializer=nn.initializer.Constant(0.))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = np.linspace(0, drop_path_rate, depth) if depth > 1 else [drop_path_rate]
        # ViT-pytorch applies the attention dropout rate after the attention's output projection too
        self.blocks = nn.LayerList([
            Block(embed_dim, num_heads, mlp_hidden_dim=mlp_dim, proj_drop=drop_rate, attn_drop=attn_drop_rate,
                  attn_proj_drop=attn_drop_rate, drop_path=float(rates[i]), norm_layer=norm_layer)
            for i in range(depth)])
        self.norm = norm_layer(embed_dim)
        self.pre_logits = Linear(embed_dim, representation_size) if representation_size else None
        self.head = Linear(representation_size or embed_dim, num_classes)
        # every block's output is a feature (timm's per-block semantics), at the patch stride
        reduction = to_2tuple(patch_size)[0]
        self.feature_info = [dict(module=f'blocks.{i}', num_chs=embed_dim, reduction=reduction)
                             for i in range(depth)]

        self.apply(functools.partial(init_weights, linear='torch_default'))   # MLPs re-done below
        for block in self.blocks:
            _init_mlp(block.mlp)
        if zero_head:
            nn.initializer.Constant(0.)(self.head.weight)
            nn.initializer.Constant(0.)(self.head.bias)

    def no_weight_decay(self):
        return {'pos_embed', 'cls_token'}

    def num_layers(self):
        return len(self.blocks)

    def layer_id(self, name):
        """TRAIN.LAYER_DECAY (engine/optim.py): 0 embeddings (the R50 stem too), i + 1 block i, then the head."""
        return layer_id_of_blocks(name, len(self.blocks), ('patch_embed', 'cls_token', 'pos_embed'))

    def forward_features(self, x):
        """[B, in_chans, H, W] -> the class token's final feature [B, C] (before pre_logits)."""
        x = self.patch_embed(x)
        cls = self.cls_token.expand([x.shape[0], -1, -1])
        x = self.pos_drop(add_position_embedding(paddle.concat([cls, x], axis=1), self.pos_embed))
        for block in self.blocks:
            x = run_block(self, block, x)
        return self.norm(x)[:, 0]

    def forward_intermediates(self, x, indices=None, norm=False, output_fmt='NCHW', intermediates_only=False,
                              return_prefix_tokens=False):
        """Block outputs as patch-grid maps, for dense heads (see `engine/features.py`).

        `indices` chooses blocks (None: all, n: the last n, list: those); `norm`
        passes each chosen output through the final LayerNorm first (as the class
        token the head reads is normed); the class token is dropped from the maps
        and, with `return_prefix_tokens`, returned beside each as [B, 1, C].  The
        grid is the built one (`patch_embed.grid_size`): the position embedding
        is not resized on the fly, so only the built image size (square or not,
        as constructed) is accepted.  Returns the list when `intermediates_only`,
        else (forward_features(x), list).
        """
        feat.check_output_format(output_fmt)
        chosen = feat.feature_indices(len(self.blocks), indices)
        gh, gw = self.patch_embed.grid_size
        image_hw = x.shape[2:]
        x = self.patch_embed(x)
        if x.shape[1] != gh * gw:
            raise ValueError(f'ViT: a {image_hw[0]} x {image_hw[1]} input gives {x.shape[1]} patches; this model '
                             f'was built for a {gh} x {gw} grid (DATA.IMAGE_SIZE) and takes only images of '
                             f'that size')
        cls = self.cls_token.expand([x.shape[0], -1, -1])
        x = self.pos_drop(add_position_embedding(paddle.concat([cls, x], axis=1), self.pos_embed))
        last = chosen[-1] if intermediates_only else len(self.blocks) - 1
        maps, prefixes = [], []
        for i in range(last + 1):
            x = self.blocks[i](x)
            if i in chosen:
                y = self.norm(x) if norm else x
                maps.append(feat.format_map(feat.tokens_to_map(y[:, 1:], gh, gw), output_fmt))
                prefixes.append(y[:, :1])
        out = feat.pack(maps, prefixes, return_prefix_tokens)
        if intermediates_only:
            return out
        return self.norm(x)[:, 0], out

    def forward(self, x):
        x = self.forward_features(x)
        if self.pre_logits is not None:
            x = paddle.tanh(self.pre_logits(x))
        return self.head(x)

    def forward_attention(self, x):
        """(logits, [attention of each block, [B, heads, N, N]]), N = 1 + patches.

        The probabilities are formed explicitly for this call only (the plain attention
        path); the logits equal `forward(x)`'s.
        """
        from engine.explain.capture import attention_layer_names, recording
        names = attention_layer_names(self)
        with recording(self, names) as recorder:
            logits = self.forward(x)
        return logits, [recorder[name][1] for name in names]

    def adapt_state_dict(self, state):
        """Fit an image-size-dependent `state` to this model, in place; one message per change.

        `pos_embed` of another grid (a 384 checkpoint for a 224 model, ...) is resized
        with MODEL.POS_EMBED_RESIZE: 'zoom_linear' as Google's and ViT-pytorch's
        `load_from` do (scipy.ndimage.zoom, order=1), or 'bicubic' as timm/DeiT do.
        A `pre_logits` layer this model does not have is dropped, as ViT-pytorch does.
        """
        messages = []
        ours = self.pos_embed.shape
        if 'pos_embed' in state and tuple(state['pos_embed'].shape) != tuple(ours):
            old = state['pos_embed']
            if old.shape[-1] != ours[-1]:
                return messages      # another width: not ours to fix, the key check reports it
            state['pos_embed'] = resize_pos_embed(old, self.patch_embed.grid_size, self.pos_embed_resize)
            g_old = int(round(math.sqrt(old.shape[1] - 1)))
            gh, gw = self.patch_embed.grid_size
            messages.append(f'pos_embed resized from a {g_old}x{g_old} to a {gh}x{gw} grid '
                            f'({self.pos_embed_resize}; class token kept): shape {tuple(old.shape)} '
                            f'-> {tuple(state["pos_embed"].shape)}')
        if self.pre_logits is None:
            extra = sorted(k for k in state if k.startswith('pre_logits.'))
            for k in extra:
                del state[k]
            if extra:
                messages.append(f'dropped {", ".join(extra)}: this model has no pre-logits layer '
                                f'(MODEL.REPRESENTATION_SIZE is 0)')
        return messages


# ------------------------------------------------------- position-embedding resize
def _linear_axis(a, new, axis):
    """Resize `a` along `axis` to `new` samples by linear interpolation with the end
    points aligned (sample i of the result sits at i * (old - 1) / (new - 1))."""
    old = a.shape[axis]
    if old == new:
        return a
    if old == 1 or new == 1:
        return np.take(a, np.zeros(new, dtype=np.int64), axis=axis)
    pos = np.arange(new, dtype=np.float64) * (old - 1) / (new - 1)
    lo = np.clip(np.floor(pos).astype(np.int64), 0, old - 2)
    frac = pos - lo
    shape = [1] * a.ndim
    shape[axis] = new
    frac = frac.reshape(shape)
    return np.take(a, lo, axis=axis) * (1 - frac) + np.take(a, lo + 1, axis=axis) * frac


def zoom_linear(grid, new_hw):
    """[h, w, C] -> [new_h, new_w, C] as `scipy.ndimage.zoom(grid, (new_h/h, new_w/w, 1),
    order=1)` computes it (linear spline, corners aligned), in float64, without scipy."""
    out = np.asarray(grid, dtype=np.float64)
    out = _linear_axis(out, new_hw[0], 0)
    return _linear_axis(out, new_hw[1], 1)


def resize_pos_embed(pos_embed, new_grid, mode='zoom_linear'):
    """Resize a [1, 1 + h*w, C] position embedding (class token first) to `new_grid`."""
    pos_embed = np.asarray(pos_embed)
    if mode == 'bicubic':
        from engine.layers import resize_pos_embed as bicubic
        return bicubic(pos_embed, new_grid, num_prefix_tokens=1, mode='bicubic')
    cls, grid = pos_embed[:, :1], pos_embed[0, 1:]
    old = int(round(math.sqrt(grid.shape[0])))
    if old * old != grid.shape[0]:
        raise ValueError(f'position embedding grid of {grid.shape[0]} tokens is not square')
    new_grid = to_2tuple(new_grid)
    grid = zoom_linear(grid.reshape(old, old, -1), new_grid).reshape(1, new_grid[0] * new_grid[1], -1)
    return np.concatenate([cls, grid.astype(pos_embed.dtype)], axis=1)


def build_vit(config):
    """A VisionTransformer from a ViT config (see config.py for the keys)."""
    m = config.MODEL
    return VisionTransformer(
        img_size=config.DATA.IMAGE_SIZE, patch_size=m.PATCH_SIZE, in_chans=config.DATA.IMAGE_CHANNELS,
        num_classes=m.NUM_CLASSES, embed_dim=m.EMBED_DIM, depth=m.DEPTH, num_heads=m.NUM_HEADS,
        mlp_dim=m.MLP_DIM, representation_size=m.REPRESENTATION_SIZE, drop_rate=m.DROPOUT,
        attn_drop_rate=m.ATTENTION_DROPOUT, drop_path_rate=m.DROPPATH,
        resnet_layers=tuple(m.RESNET_LAYERS), resnet_width=m.RESNET_WIDTH,
        pos_embed_resize=m.POS_EMBED_RESIZE, zero_head=m.ZERO_HEAD)
