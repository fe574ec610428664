"""The side-layer neck of TokenLabeling's segmentation backbone (`use_side_layer=True`).

An isotropic transformer gives every tap at one stride (16); UperNet wants a
pyramid.  Each tap gets its own branch: a transposed conv (kernel = stride =
the scale, no bias) + BN + ReLU when it is upsampled, then a 1x1 conv (no bias)
+ BN + ReLU.  With scales 4, 2, 1, 1 the outputs are at strides 4, 8, 16, 16;
the fourth changes its channels (2048 in the recipe), the others keep theirs.
The neck takes whatever the backbone's `feature_info` says (channels, stride),
so it sits on any family; a hierarchical backbone (VVT) would use scales 1,1,1,1.
BatchNorm becomes SyncBatchNorm under multi-GPU training (train.py).  The
official side layers keep PyTorch's default init (`torch_default_init`).
"""
import paddle.nn as nn

from engine.layers import torch_default_init


def conv_bn_relu(in_channels, out_channels, kernel_size=1, padding=0):
    """MMCV's ConvModule with BN: conv (no bias, the BN has one) + BN + ReLU."""
    return nn.Sequential(nn.Conv2D(in_channels, out_channels, kernel_size, padding=padding, bias_attr=False),
                         nn.BatchNorm2D(out_channels), nn.ReLU())


def side_layer(in_channels, out_channels, scale):
    layers = []
    if scale > 1:
        layers += [nn.Conv2DTranspose(in_channels, in_channels, scale, stride=scale, bias_attr=False),
                   nn.BatchNorm2D(in_channels), nn.ReLU()]
    layers += list(conv_bn_relu(in_channels, out_channels))
    return nn.Sequential(*layers)


class SideLayerNeck(nn.Layer):
    """One side layer per backbone tap.  `channels`/`reductions`: of the taps; `scales`: upsampling
    of each; `last_channels`: output channels of the last tap.  `out_channels` / `out_strides` say
    what comes out."""

    def __init__(self, channels, reductions, scales=(4, 2, 1, 1), last_channels=2048):
        super().__init__()
        if not len(channels) == len(reductions) == len(scales):
            raise ValueError(f'{len(channels)} taps but {len(scales)} neck scales')
        self.out_channels = list(channels[:-1]) + [last_channels]
        self.out_strides = [r / s for r, s in zip(reductions, scales)]
        self.side_layers = nn.LayerList([side_layer(c, o, s)
                                         for c, o, s in zip(channels, self.out_channels, scales)])
        self.side_layers.apply(torch_default_init)

    def forward(self, features):
        return [layer(f) for layer, f in zip(self.side_layers, features)]
