"""Training transforms that keep an image and its label map aligned, in the official order.

A horizontal flip flips the image and the label map together; RandAugment's
geometric ops (rotate, shear, translate) move the map with the image;
RandomResizedCrop records its crop as a box in label-map coordinates (x1, y1,
x2, y2 as fractions of the grid), cut out later on the device
(`targets.token_label_targets`).  Colour changes and random erasing touch the
image only.

Deliberate difference from the official code: the official crop box is passed to
RoIAlign as (top, left, bottom, right) where RoIAlign reads (x1, y1, x2, y2), so
the label crop is the transpose of the image crop; here the label crop is the
image crop (a test checks that a flipped image gets exactly flipped targets).
"""
import math
from typing import NamedTuple

import cv2
import numpy as np

from ..data import autoaugment as aug
from ..data import transforms as dtf
from .label_maps import LabelMap

__all__ = ['hflip_label_map', 'crop_box_in_label_map', 'geometric_op_matrix', 'affine_label_map',
           'LabelRandAugment', 'LabelAutoAugment', 'ImageWithLabelMap', 'TokenLabelTransform']


def hflip_label_map(label_map):
    """The label map of the horizontally flipped image (grid and region mirrored)."""
    top, left, height, width = label_map.region
    return LabelMap(label_map.scores[:, :, ::-1].copy(), label_map.indices[:, :, ::-1].copy(),
                    (top, 1.0 - left - width, height, width))


def crop_box_in_label_map(crop, image_size, region):
    """The image crop (top, left, height, width) in pixels of an image (width, height),
    as (x1, y1, x2, y2) fractions of the label map's grid covering `region`."""
    i, j, h, w = crop
    img_w, img_h = image_size
    r_top, r_left, r_h, r_w = region
    y1 = (i / img_h - r_top) / r_h
    x1 = (j / img_w - r_left) / r_w
    y2 = ((i + h) / img_h - r_top) / r_h
    x2 = ((j + w) / img_w - r_left) / r_w
    return np.array([x1, y1, x2, y2], dtype=np.float32)


_GEOMETRIC_OPS = ('Rotate', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')


def geometric_op_matrix(name, arg, width, height):
    """PIL's affine matrix (output -> input, pixel centres at +0.5) of a geometric
    RandAugment/AutoAugment op of `engine.data.autoaugment` on a width x height image."""
    if name == 'Rotate':
        cx, cy = width / 2.0, height / 2.0
        angle = -math.radians(arg)
        cos, sin = math.cos(angle), math.sin(angle)
        return (cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy)
    if name == 'ShearX':
        return (1, arg, 0, 0, 1, 0)
    if name == 'ShearY':
        return (1, 0, 0, arg, 1, 0)
    if name == 'TranslateXRel':
        return (1, 0, arg * width, 0, 1, 0)
    if name == 'TranslateYRel':
        return (1, 0, 0, 0, 1, arg * height)
    raise ValueError(f'{name} is not a geometric op')


def affine_label_map(label_map, matrix, image_size):
    """The label map of the image transformed by `matrix` (see `geometric_op_matrix`).

    Every grid cell takes the values of the cell under the point its centre comes
    from (nearest neighbour, as the official label RandAugment); cells that come from
    outside the grid get scores 0 (the official constant fill) and the nearest indices.
    """
    a, b, c, d, e, f = matrix
    img_w, img_h = image_size
    top, left, height, width = label_map.region
    k, gh, gw = label_map.scores.shape
    rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing='ij')
    u = (left + (cols + 0.5) / gw * width) * img_w          # cell centres in image pixels (PIL)
    v = (top + (rows + 0.5) / gh * height) * img_h
    u_in, v_in = a * u + b * v + c, d * u + e * v + f
    gx = (u_in / img_w - left) / width * gw                 # back to grid units (cell i spans [i, i+1))
    gy = (v_in / img_h - top) / height * gh
    inside = (gx >= 0) & (gx < gw) & (gy >= 0) & (gy < gh)
    src_r = np.clip(np.floor(gy), 0, gh - 1).astype(np.int64)
    src_c = np.clip(np.floor(gx), 0, gw - 1).astype(np.int64)
    scores = label_map.scores[:, src_r, src_c] * inside[None]
    return LabelMap(scores.astype(np.float32), label_map.indices[:, src_r, src_c], label_map.region)


class _LabelAwareAugment:
    """Mixin for `engine.data.autoaugment`'s RandAugment / AutoAugment: records the
    geometric ops it applies (name, argument, image size) so the label map can follow.

    `apply` makes the same random draws as the plain augmenter (its `draw`), then
    applies the op to the image with the argument it recorded.
    """

    def apply(self, img, name, prob, magnitude, rng):
        drawn = self.draw(name, prob, magnitude, rng)
        if drawn is None:
            return img
        op, arg, interpolation = drawn
        if name in _GEOMETRIC_OPS:
            self.applied.append((name, arg, img.shape[1], img.shape[0]))
        return op(img, arg, (self.fill, interpolation))

    def augment(self, img, label_map, rng):
        self.applied = []
        img = self(img, rng)
        for name, arg, width, height in self.applied:
            label_map = affine_label_map(label_map, geometric_op_matrix(name, arg, width, height),
                                         (width, height))
        return img, label_map


class LabelRandAugment(_LabelAwareAugment, aug.RandAugment):
    """RandAugment whose geometric ops move the label map with the image."""


class LabelAutoAugment(_LabelAwareAugment, aug.AutoAugment):
    """AutoAugment whose geometric ops move the label map with the image."""


class _RecordingCrop(dtf.RandomResizedCrop):
    """The shared RandomResizedCrop, remembering its crop (or taking a given one)."""
    forced = None
    last = None

    def params(self, height, width, rng):
        self.last = self.forced if self.forced is not None else super().params(height, width, rng)
        return self.last


class ImageWithLabelMap(NamedTuple):
    """What `TokenLabelDataset.load` returns: the decoded image and its label map."""
    image: np.ndarray           # HWC uint8 RGB
    label_map: LabelMap

    @property
    def shape(self):
        return self.image.shape


class TokenLabelTransform:
    """The training transform of an (image, label map) pair, in the official order
    (tlt/data/label_transforms_factory.py): horizontal flip of image and map together;
    RandAugment / AutoAugment on the whole image, its geometric ops applied to the map
    too (or colour jitter, image only); RandomResizedCrop of the image, recorded for
    the map as a box; normalisation and random erasing of the image alone.  The
    pieces are the shared pipeline's (`engine.data`), with the same TRAIN.* keys.

    `__call__(ImageWithLabelMap, rng)` -> (CHW float32 image, {'scores' [k, H, W] float32,
    'indices' [k, H, W] int64, 'box' [4] float32: the crop as (x1, y1, x2, y2) fractions of
    the label grid}).
    """

    def __init__(self, image_size, mean, std, interpolation='bicubic', auto_augment=False, rand_augment=True,
                 rand_augment_layers=2, rand_augment_magnitude=9, color_jitter=0.4, random_erase_prob=0.25,
                 random_erase_mode='pixel', random_erase_count=1, hflip=0.5):
        self.crop = _RecordingCrop(image_size, interpolation=interpolation)
        self.hflip = hflip
        self.augment = dtf.build_augmenter(mean, interpolation, auto_augment, rand_augment, rand_augment_layers,
                                           rand_augment_magnitude, color_jitter,
                                           auto_augment_cls=LabelAutoAugment, rand_augment_cls=LabelRandAugment)
        self.normalize = dtf.Normalize(mean, std)
        self.erase = dtf.RandomErasing(random_erase_prob, random_erase_mode, random_erase_count) \
            if random_erase_prob > 0 else None

    @classmethod
    def from_config(cls, config):
        data, train = config.DATA, config.TRAIN
        return cls(data.IMAGE_SIZE, data.MEAN, data.STD, interpolation=train.TRAIN_INTERPOLATION,
                   auto_augment=train.AUTO_AUGMENT, rand_augment=train.RAND_AUGMENT,
                   rand_augment_layers=train.RAND_AUGMENT_LAYERS,
                   rand_augment_magnitude=train.RAND_AUGMENT_MAGNITUDE, color_jitter=train.COLOR_JITTER or 0.0,
                   random_erase_prob=train.RANDOM_ERASE_PROB, random_erase_mode=train.RANDOM_ERASE_MODE,
                   random_erase_count=train.RANDOM_ERASE_COUNT)

    def __call__(self, sample, rng):
        flip = bool(self.hflip) and rng.random() < self.hflip
        return self.apply(sample.image, sample.label_map, rng, flip=flip)

    def apply(self, img, label_map, rng, flip=False, crop=None):
        """The transform with the flip decided and, optionally, the crop (top, left, h, w) given."""
        if flip:
            img, label_map = cv2.flip(img, 1), hflip_label_map(label_map)
        if isinstance(self.augment, _LabelAwareAugment):
            img, label_map = self.augment.augment(img, label_map, rng)
        elif self.augment is not None:
            img = self.augment(img, rng)
        height, width = img.shape[:2]
        self.crop.forced = crop
        img = self.crop(img, rng)
        box = crop_box_in_label_map(self.crop.last, (width, height), label_map.region)
        x = self.normalize(img)
        if self.erase is not None:
            x = self.erase(x, rng)
        return x, {'scores': label_map.scores.astype(np.float32),
                   'indices': label_map.indices.astype(np.int64), 'box': box}
