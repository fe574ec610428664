"""Soft targets of a batch, built on the device from its cropped label maps, and their batch mixing.

The top-k maps are scattered into dense [C, H, W] maps, the crop box is cut out
with RoIAlign (bilinear, `label_size` x `label_size` cells for the tokens plus
one cell over the whole box for the class token), softmax over classes, then
label smoothing -- the official `get_labelmaps_with_coords`.  A sample without
token labels gets its (smoothed) one-hot class for the class token and every
token.
"""
from dataclasses import dataclass

import paddle
import paddle.nn.functional as F
from paddle.vision.ops import roi_align

from ..data.mixup import build_mixup, mix_with_flipped, smooth_one_hot

__all__ = ['TokenLabelTargets', 'one_hot_targets', 'token_label_targets', 'TokenLabelMixup']


@dataclass
class TokenLabelTargets:
    """Soft targets for one batch; `dense` None means "the class target at every token"."""
    cls: object                   # [B, classes]
    dense: object = None          # [B, N, classes] or None


def _smooth(p, smoothing, num_classes):
    off = smoothing / num_classes
    return p * (1. - smoothing + off) + off     # the official on/off values (sum 1 + smoothing / C)


def one_hot_targets(labels, num_classes, smoothing=0.0):
    """[B, classes] one-hot targets of integer labels, label-smoothed (1 - s + s/C on the label)."""
    return smooth_one_hot(labels, num_classes, smoothing).astype('float32')


def token_label_targets(scores, indices, boxes, num_classes, label_size, smoothing=0.0):
    """Class and per-token soft targets of a batch from its cropped top-k label maps.

    scores [B, k, H, W] float, indices [B, k, H, W] int, boxes [B, 4] (x1, y1, x2, y2)
    as fractions of the H x W grid.  Returns TokenLabelTargets(cls [B, C],
    dense [B, label_size**2, C]); tokens in row-major order of the patch grid.
    """
    B, k, H, W = scores.shape
    dense = paddle.zeros([B, num_classes, H, W], dtype='float32')
    dense = paddle.put_along_axis(dense, indices.astype('int64'), scores.astype('float32'), axis=1)
    # RoIAlign in pixel units of the grid; aligned=False with the -0.5 shift, as the
    # official (torchvision) call: a cell centre sits at integer + 0.5
    scale = paddle.to_tensor([W, H, W, H], dtype='float32')
    px_boxes = boxes.astype('float32') * scale - 0.5
    boxes_num = paddle.full([B], 1, dtype='int32')
    tokens = roi_align(dense, px_boxes, boxes_num, label_size, spatial_scale=1.0, sampling_ratio=-1,
                       aligned=False)                                   # [B, C, S, S]
    whole = roi_align(dense, px_boxes, boxes_num, 1, spatial_scale=1.0, sampling_ratio=-1,
                      aligned=False)                                    # [B, C, 1, 1]
    cls = F.softmax(whole.reshape([B, num_classes]), axis=1)
    tokens = F.softmax(tokens.reshape([B, num_classes, label_size * label_size]), axis=1)
    return TokenLabelTargets(_smooth(cls, smoothing, num_classes),
                             _smooth(tokens.transpose([0, 2, 1]), smoothing, num_classes))


class TokenLabelMixup:
    """Builds the soft targets of a batch and, when Mixup / CutMix are on, mixes it.

    Called as `(images, targets) -> (images, TokenLabelTargets)` by the training
    loop.  `targets` is either an int label tensor (no label-map files: the class
    target is used at every token) or `[labels, {'scores', 'indices', 'box'}]` from
    `TokenLabelDataset`.  Mixup / CutMix are the shared `engine.data.Mixup` in
    'batch' mode (`draw_batch`, `mix_images`), as the official TokenLabelMixup:
    the flipped batch is blended or pasted and every target, class and tokens
    alike, mixed by the same lam.  (The official recipes leave them off;
    MixToken, inside the model, is the mixing.)
    """

    def __init__(self, num_classes, label_size, smoothing=0.1, mixup=None):
        if mixup is not None and mixup.mode != 'batch':
            raise ValueError(f"token labeling mixes whole batches: TRAIN.MIXUP_MODE must be 'batch', "
                             f"got {mixup.mode!r}")
        self.num_classes, self.label_size, self.smoothing = num_classes, label_size, smoothing
        self.mixup = mixup

    @classmethod
    def from_config(cls, config, label_size):
        return cls(config.MODEL.NUM_CLASSES, label_size, config.TRAIN.SMOOTHING, build_mixup(config))

    def targets(self, targets):
        if isinstance(targets, (list, tuple)):
            _labels, maps = targets
            return token_label_targets(maps['scores'], maps['indices'], maps['box'], self.num_classes,
                                       self.label_size, self.smoothing)
        return TokenLabelTargets(one_hot_targets(targets, self.num_classes, self.smoothing), None)

    def __call__(self, images, targets):
        t = self.targets(targets)
        if self.mixup is None:
            return images, t
        lam, box = self.mixup.draw_batch(images.shape[-2], images.shape[-1])
        images = self.mixup.mix_images(images, lam, box)
        if lam == 1.0:
            return images, t
        dense = None if t.dense is None else mix_with_flipped(t.dense, lam)
        return images, TokenLabelTargets(mix_with_flipped(t.cls, lam), dense)
