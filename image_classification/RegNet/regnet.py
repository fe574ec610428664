"""RegNetY, Radosavovic et al., "Designing Network Design Spaces", CVPR 2020 (arXiv 2003.13678).

Here as the teacher of DeiT-style distillation: `regnety_160` (RegNetY-16GF,
83.6M parameters) is the model DeiT and PiT distilled from, and a small
RegNetY (`regnety_004`, RegNetY-400MF) lets distillation run on a CPU.

A RegNet is a stem (3x3 conv, stride 2) followed by four stages of residual
bottleneck blocks and a classifier on globally average-pooled features.  The
widths of all blocks come from four numbers (the "design space"):

    u_j = w0 + wa * j                    for block j = 0 .. depth-1 (linear)
    s_j = round(log(u_j / w0) / log(wm)) (the step of block j)
    w_j = round(w0 * wm ** s_j / 8) * 8  (quantised to multiples of 8)

Consecutive blocks with the same width form a stage.  Each stage's width is
then made divisible by its group count (group conv of width `group_w` per
group).  A Y block is conv1x1 -> grouped conv3x3 (stride 2 in a stage's first
block) -> squeeze-excitation -> conv1x1, each conv followed by BatchNorm (and
ReLU except the last), added to the (projected, in a stage's first block)
shortcut, then ReLU.  The squeeze-excitation's hidden width is
round(SE_RATIO * block input width), not of the bottleneck width.

Layout and numerics follow timm's `regnet.py` of the DeiT era (timm 0.3.x),
the layout of DeiT's teacher checkpoint `regnety_160-a5fe301d.pth`:
`stem.conv/bn`, `s{1-4}.b{j}.conv{1,2,3}.conv/bn`, `.se.fc1/fc2` (1x1 convs
with bias), `.downsample.conv/bn`, `head.fc`.  BatchNorm eps 1e-5, PyTorch's
momentum 0.1 (Paddle's 0.9).
"""
import math

import numpy as np
import paddle.nn as nn

from engine import features as feat
from engine.layers import DropPath, Linear

__all__ = ['RegNet', 'build_regnet', 'regnet_stage_specs']


def regnet_block_widths(w0, wa, wm, depth, q=8):
    """Per-block widths of the linear-then-quantised RegNet design space."""
    if not (wa >= 0 and w0 > 0 and wm > 1 and w0 % q == 0):
        raise ValueError(f'invalid RegNet parameters w0={w0}, wa={wa}, wm={wm} (need wa >= 0, '
                         f'w0 > 0 and a multiple of {q}, wm > 1)')
    widths_cont = np.arange(depth) * wa + w0
    steps = np.round(np.log(widths_cont / w0) / np.log(wm))
    widths = np.round(w0 * np.power(wm, steps) / q) * q
    return widths.astype(int).tolist()


def regnet_stage_specs(w0, wa, wm, depth, group_w, bottle_ratio=1.0):
    """[(width, depth, group_width)] of each stage, widths made compatible with the group width.

    A stage's bottleneck width is rounded to the nearest multiple of its group
    width (which itself may not exceed the bottleneck width).
    """
    widths, depths = np.unique(regnet_block_widths(w0, wa, wm, depth), return_counts=True)
    specs = []
    for width, stage_depth in zip(widths.tolist(), depths.tolist()):
        bottleneck = int(width * bottle_ratio)
        group = min(group_w, bottleneck)
        bottleneck = round(bottleneck / group) * group
        specs.append((int(bottleneck / bottle_ratio), stage_depth, group))
    return specs


class ConvBnAct(nn.Layer):
    """Conv (no bias, padding k//2) -> BatchNorm -> optional ReLU; names `conv`, `bn` as in timm."""

    def __init__(self, in_channels, out_channels, kernel_size=1, stride=1, groups=1, act=True):
        super().__init__()
        self.conv = nn.Conv2D(in_channels, out_channels, kernel_size, stride=stride,
                              padding=kernel_size // 2, groups=groups, bias_attr=False)
        self.bn = nn.BatchNorm2D(out_channels, momentum=0.9, epsilon=1e-5)
        self.act = nn.ReLU() if act else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class SqueezeExcite(nn.Layer):
    """x * sigmoid(fc2(relu(fc1(mean over H, W of x)))), fc1 / fc2 as 1x1 convs with bias."""

    def __init__(self, channels, hidden):
        super().__init__()
        self.fc1 = nn.Conv2D(channels, hidden, 1)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2D(hidden, channels, 1)

    def forward(self, x):
        s = x.mean(axis=[2, 3], keepdim=True)
        return x * nn.functional.sigmoid(self.fc2(self.act(self.fc1(s))))


class Bottleneck(nn.Layer):
    """RegNetY block: 1x1 -> grouped 3x3 -> SE -> 1x1, plus the (projected) shortcut, ReLU."""

    def __init__(self, in_channels, out_channels, stride, bottle_ratio, group_width, se_ratio, drop_path=0.):
        super().__init__()
        mid = round(out_channels * bottle_ratio)
        self.conv1 = ConvBnAct(in_channels, mid, 1)
        self.conv2 = ConvBnAct(mid, mid, 3, stride=stride, groups=mid // group_width)
        self.se = SqueezeExcite(mid, round(in_channels * se_ratio)) if se_ratio else None
        self.conv3 = ConvBnAct(mid, out_channels, 1, act=False)
        self.downsample = None
        if in_channels != out_channels or stride != 1:
            self.downsample = ConvBnAct(in_channels, out_channels, 1, stride=stride, act=False)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.act3 = nn.ReLU()

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.conv2(self.conv1(x))
        if self.se is not None:
            x = self.se(x)
        x = self.drop_path(self.conv3(x))
        return self.act3(x + shortcut)


class RegStage(nn.Layer):
    """Blocks `b1`..`bN` of one width; the first one strides and projects the shortcut."""

    def __init__(self, in_channels, out_channels, depth, bottle_ratio, group_width, se_ratio, drop_paths):
        super().__init__()
        self.names = [f'b{i + 1}' for i in range(depth)]
        for i, name in enumerate(self.names):
            self.add_sublayer(name, Bottleneck(in_channels if i == 0 else out_channels, out_channels,
                                               2 if i == 0 else 1, bottle_ratio, group_width, se_ratio,
                                               drop_paths[i]))

    def forward(self, x):
        for name in self.names:
            x = getattr(self, name)(x)
        return x


class ClassifierHead(nn.Layer):
    """Global average pool -> dropout -> `fc`."""

    def __init__(self, in_features, num_classes, drop_rate=0.):
        super().__init__()
        self.drop = nn.Dropout(drop_rate)
        self.fc = Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x):
        return self.fc(self.drop(x.mean(axis=[2, 3])))


class RegNet(nn.Layer):
    """RegNetX (se_ratio 0) / RegNetY with output stride 32."""

    CLASSIFIER = ('head.fc',)

    def __init__(self, w0, wa, wm, depth, group_w, se_ratio=0.25, bottle_ratio=1.0, stem_width=32,
                 in_channels=3, num_classes=1000, drop_rate=0., drop_path_rate=0.):
        super().__init__()
        self.num_classes = num_classes
        self.stem = ConvBnAct(in_channels, stem_width, 3, stride=2)
        specs = regnet_stage_specs(w0, wa, wm, depth, group_w, bottle_ratio)
        total = sum(d for _, d, _ in specs)
        rates = np.linspace(0, drop_path_rate, total).tolist()
        self.stage_names = []
        prev, start = stem_width, 0
        for i, (width, stage_depth, group) in enumerate(specs):
            name = f's{i + 1}'
            self.add_sublayer(name, RegStage(prev, width, stage_depth, bottle_ratio, group, se_ratio,
                                             rates[start:start + stage_depth]))
            self.stage_names.append(name)
            prev, start = width, start + stage_depth
        self.num_features = prev
        # one feature per stage; the stem and each stage's first block halve the map
        self.feature_info = [dict(module=name, num_chs=width, reduction=2 ** (i + 2))
                             for i, (name, (width, _, _)) in enumerate(zip(self.stage_names, specs))]
        self.head = ClassifierHead(prev, num_classes, drop_rate)
        self._init_weights()

    def _init_weights(self):
        """timm's RegNet init: He-normal (fan_out) convs, N(0, 0.01) Linear, last BN of each block zero."""
        for layer in self.sublayers():
            if isinstance(layer, nn.Conv2D):
                fan_out = layer.weight.shape[0] * int(np.prod(layer.weight.shape[2:]))   # as torch: groups ignored
                nn.initializer.Normal(0., math.sqrt(2.0 / fan_out))(layer.weight)
                if layer.bias is not None:
                    nn.initializer.Constant(0.)(layer.bias)
            elif isinstance(layer, nn.BatchNorm2D):
                nn.initializer.Constant(1.)(layer.weight)
                nn.initializer.Constant(0.)(layer.bias)
            elif isinstance(layer, nn.Linear):
                nn.initializer.Normal(0., 0.01)(layer.weight)
                nn.initializer.Constant(0.)(layer.bias)
        for layer in self.sublayers():
            if isinstance(layer, Bottleneck):
                nn.initializer.Constant(0.)(layer.conv3.bn.weight)

    def no_weight_decay(self):
        return set()

    def forward_features(self, x):
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x

    def forward_intermediates(self, x, indices=None, norm=False, output_fmt='NCHW', intermediates_only=False,
                              return_prefix_tokens=False):
        """Each chosen stage's output map (strides 4, 8, 16, 32), for dense heads (see
        `engine/features.py`).  Any input size, square or not (padded convs: ceil(S / stride)).
        A CNN has no final norm and no class token: `norm` is accepted for the common
        signature only and prefix tokens, when asked for, are empty [B, 0, C].  The global
        mean of the last map is what the head consumes.  Returns the list when
        `intermediates_only`, else (forward_features(x), list).
        """
        feat.check_output_format(output_fmt)
        chosen = feat.feature_indices(len(self.stage_names), indices)
        x = self.stem(x)
        last = chosen[-1] if intermediates_only else len(self.stage_names) - 1
        maps, prefixes = [], []
        for i in range(last + 1):
            x = getattr(self, self.stage_names[i])(x)
            if i in chosen:
                maps.append(feat.format_map(x, output_fmt))
                prefixes.append(feat.no_prefix(x.shape[0], x.shape[1], x.dtype))
        out = feat.pack(maps, prefixes, return_prefix_tokens)
        if intermediates_only:
            return out
        return x, out

    def forward(self, x):
        return self.head(self.forward_features(x))


def build_regnet(config):
    """RegNet from a config (MODEL.W0 / WA / WM / DEPTH / GROUP_W / SE_RATIO / ...)."""
    m = config.MODEL
    return RegNet(w0=m.W0, wa=m.WA, wm=m.WM, depth=m.DEPTH, group_w=m.GROUP_W, se_ratio=m.SE_RATIO,
                  bottle_ratio=m.BOTTLE_RATIO, stem_width=m.STEM_WIDTH, in_channels=config.DATA.IMAGE_CHANNELS,
                  num_classes=m.NUM_CLASSES, drop_rate=m.DROPOUT, drop_path_rate=m.DROPPATH)
