"""UperNet's decode head (UPerHead) and the auxiliary FCNHead, as in MMSegmentation 0.x.

UPerHead (Xiao et al., "Unified Perceptual Parsing", 2018): a pyramid pooling
module (PPM) on the deepest input (adaptive average pools at `pool_scales`,
each a 1x1 ConvModule, upsampled back and concatenated with the input, then a
3x3 ConvModule), 1x1 lateral ConvModules on the other inputs, a top-down path
adding each upsampled coarser level to the finer one, a 3x3 ConvModule on each
level but the PPM's, every level upsampled to the finest and concatenated, a 3x3
ConvModule, then dropout (2-D, whole channels) and a 1x1 classifier.
FCNHead: `num_convs` 3x3 ConvModules, dropout, 1x1 classifier.
Upsampling is bilinear, `align_corners=False` (the recipe's setting).
Initialisation as MMCV's: ConvModule convs kaiming-normal (fan_out, ReLU gain),
BN weight 1 / bias 0, the classifier normal(0, 0.01) with bias 0.
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .neck import conv_bn_relu


def resize(x, size):
    return F.interpolate(x, size=list(size), mode='bilinear', align_corners=False)


def mmcv_init(layer):
    """MMCV's ConvModule init for the convs of a head (module doc); BN keeps Paddle's 1 / 0."""
    if isinstance(layer, nn.Conv2D):
        # kaiming normal over fan_out (= out_channels x kernel area); Paddle < 3.1 has no `mode`,
        # but takes the fan itself
        out_channels, _, kh, kw = layer.weight.shape
        nn.initializer.KaimingNormal(fan_in=out_channels * kh * kw, nonlinearity='relu')(layer.weight)
        if layer.bias is not None:
            nn.initializer.Constant(0.0)(layer.bias)


class ClassifierHead(nn.Layer):
    """Dropout2D + 1x1 conv to the classes (MMSegmentation's `cls_seg`)."""

    def __init__(self, channels, num_classes, dropout):
        super().__init__()
        self.dropout = nn.Dropout2D(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2D(channels, num_classes, 1)
        nn.initializer.Normal(0.0, 0.01)(self.conv_seg.weight)
        nn.initializer.Constant(0.0)(self.conv_seg.bias)

    def forward(self, x):
        return self.conv_seg(self.dropout(x))


class UPerHead(nn.Layer):
    def __init__(self, in_channels, channels, num_classes, pool_scales=(1, 2, 3, 6), dropout=0.1):
        super().__init__()
        self.pool_scales = list(pool_scales)
        self.psp_modules = nn.LayerList([conv_bn_relu(in_channels[-1], channels) for _ in self.pool_scales])
        self.bottleneck = conv_bn_relu(in_channels[-1] + len(self.pool_scales) * channels, channels, 3, 1)
        self.lateral_convs = nn.LayerList([conv_bn_relu(c, channels) for c in in_channels[:-1]])
        self.fpn_convs = nn.LayerList([conv_bn_relu(channels, channels, 3, 1) for _ in in_channels[:-1]])
        self.fpn_bottleneck = conv_bn_relu(len(in_channels) * channels, channels, 3, 1)
        self.apply(mmcv_init)
        self.cls = ClassifierHead(channels, num_classes, dropout)

    def psp_forward(self, x):
        pooled = [resize(conv(F.adaptive_avg_pool2d(x, scale)), x.shape[2:])
                  for scale, conv in zip(self.pool_scales, self.psp_modules)]
        return self.bottleneck(paddle.concat([x] + pooled, axis=1))

    def forward(self, inputs):
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs[:-1])] + [self.psp_forward(inputs[-1])]
        for i in range(len(laterals) - 1, 0, -1):   # top-down
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        size = outs[0].shape[2:]
        outs = [outs[0]] + [resize(x, size) for x in outs[1:]]
        return self.cls(self.fpn_bottleneck(paddle.concat(outs, axis=1)))


class FCNHead(nn.Layer):
    def __init__(self, in_channels, channels, num_classes, num_convs=1, dropout=0.1):
        super().__init__()
        self.convs = nn.Sequential(*[conv_bn_relu(in_channels if i == 0 else channels, channels, 3, 1)
                                     for i in range(num_convs)])
        self.apply(mmcv_init)
        self.cls = ClassifierHead(channels, num_classes, dropout)

    def forward(self, x):
        return self.cls(self.convs(x))
