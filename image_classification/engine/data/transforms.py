"""Train and eval transforms: HWC uint8 RGB array -> CHW float32 normalised array.

Train (DeiT recipe, TRAIN.* keys): RandomResizedCrop to DATA.IMAGE_SIZE (area
scale TRAIN.CROP_SCALE, default 0.08-1, aspect 3/4-4/3,
TRAIN.TRAIN_INTERPOLATION), horizontal flip with probability TRAIN.HFLIP_PROB,
then AutoAugment (ImageNet policy) if TRAIN.AUTO_AUGMENT, else RandAugment
(TRAIN.RAND_AUGMENT_LAYERS / _MAGNITUDE, std 0.5, increasing ops) if
TRAIN.RAND_AUGMENT, else ColorJitter(TRAIN.COLOR_JITTER) (timm disables colour
jitter when an auto-augment policy is on); normalisation with DATA.MEAN /
DATA.STD; RandomErasing (TRAIN.RANDOM_ERASE_PROB / _MODE / _COUNT) on the
normalised array.  All of it runs on uint8 arrays with OpenCV and lookup
tables, and the float conversion happens once, at normalisation.  The crop is
resized with OpenCV's kernel of the configured name; when it shrinks by 2x or
more (large photos, small IMAGE_SIZE), INTER_AREA is used to avoid aliasing.

Eval (DATA.EVAL_RESIZE 'shorter', the default): resize the short side to
floor(IMAGE_SIZE / CROP_PCT) with DATA.INTERPOLATION, centre-crop IMAGE_SIZE,
normalise (DeiT, timm and most PyTorch models).  DATA.EVAL_RESIZE 'squash':
resize the whole image to IMAGE_SIZE x IMAGE_SIZE, aspect not kept, no crop,
CROP_PCT unused -- how Google's ViT (`tf.image.resize` to the crop size in
vit_jax/input_pipeline.py) and ViT-pytorch (`transforms.Resize((s, s))`)
evaluate, so what their weights were fine-tuned and measured on.  The resize is
PIL's, as in the official (timm / torchvision) evaluation, because published
accuracies depend on that filter; sizes and crop offsets follow torchvision's
rounding (tested equal to paddle.vision.transforms' Resize + CenterCrop).
"""
import math

import cv2
import numpy as np
from PIL import Image

from ..config import ConfigError
from . import autoaugment as aa
from .autoaugment import AutoAugment, RandAugment

__all__ = ['RandomResizedCrop', 'ColorJitter', 'Normalize', 'RandomErasing', 'TrainTransform',
           'EvalTransform', 'build_transform', 'eval_resize_size', 'eval_resize_shape',
           'describe_eval_transform', 'EVAL_RESIZE_MODES']

_CV2 = {'nearest': cv2.INTER_NEAREST, 'bilinear': cv2.INTER_LINEAR, 'bicubic': cv2.INTER_CUBIC,
        'lanczos': cv2.INTER_LANCZOS4, 'area': cv2.INTER_AREA, 'box': cv2.INTER_AREA}
_PIL = {'nearest': Image.NEAREST, 'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC,
        'lanczos': Image.LANCZOS, 'box': Image.BOX, 'hamming': Image.HAMMING}


def _check_interpolation(name, table, key):
    if name not in table and name != 'random':
        raise ValueError(f'{key}: unknown interpolation {name!r}; one of {sorted(table)}'
                         + (" or 'random'" if table is _CV2 else ''))


def resize(img, width, height, interpolation=cv2.INTER_CUBIC):
    """cv2.resize, switching to INTER_AREA when shrinking 2x or more in either direction."""
    src_h, src_w = img.shape[:2]
    if (src_w, src_h) == (width, height):
        return img
    if src_w >= 2 * width or src_h >= 2 * height:
        interpolation = cv2.INTER_AREA
    return cv2.resize(img, (width, height), interpolation=interpolation)


class RandomResizedCrop:
    """A random crop of random area fraction (`scale`) and aspect ratio (`ratio`), resized to `size`.

    The crop is drawn as torchvision does: 10 tries at a box that fits, then
    a centre crop clamped to the ratio range.
    """

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation='bicubic'):
        _check_interpolation(interpolation, _CV2, 'TRAIN.TRAIN_INTERPOLATION')
        self.size = size
        self.scale = scale
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        self.ratio = ratio
        self.interpolation = interpolation

    def params(self, height, width, rng):
        """(top, left, crop_height, crop_width)."""
        area = height * width
        for _ in range(10):
            target_area = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*self.log_ratio))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            h, w = height, int(round(height * self.ratio[1]))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, img, rng):
        top, left, h, w = self.params(img.shape[0], img.shape[1], rng)
        interpolation = self.interpolation
        if interpolation == 'random':
            interpolation = ('bilinear', 'bicubic')[int(rng.integers(2))]
        return resize(img[top:top + h, left:left + w], self.size, self.size, _CV2[interpolation])


class ColorJitter:
    """Brightness, contrast and saturation factors drawn from [1 - j, 1 + j], applied in random
    order (torchvision's ColorJitter without hue)."""

    def __init__(self, brightness=0.4, contrast=0.4, saturation=0.4):
        self.ops = [(fn, j) for fn, j in ((aa.brightness, brightness), (aa.contrast, contrast),
                                          (aa.color, saturation)) if j]

    def __call__(self, img, rng):
        for i in rng.permutation(len(self.ops)):
            fn, j = self.ops[i]
            img = fn(img, rng.uniform(max(0.0, 1.0 - j), 1.0 + j))
        return img


class Normalize:
    """HWC uint8 RGB -> CHW float32, (x / 255 - mean) / std, in one pass per channel."""

    def __init__(self, mean, std):
        mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        self.scale = (1.0 / (255.0 * std)).astype(np.float32)
        self.shift = (-mean / std).astype(np.float32)

    def __call__(self, img):
        out = np.empty((3,) + img.shape[:2], np.float32)
        for c, plane in enumerate(cv2.split(img)):
            np.multiply(plane, self.scale[c], out=out[c], dtype=np.float32, casting='unsafe')
            out[c] += self.shift[c]
        return out


class RandomErasing:
    """With probability `prob`, erase 1..`max_count` random boxes (2%-33% of the area in all, aspect
    0.3-3.3) of a normalised CHW array: 'pixel' fills each value with N(0, 1), 'rand' one N(0, 1)
    value per channel, 'const' zeros (timm's RandomErasing)."""

    def __init__(self, prob=0.25, mode='pixel', max_count=1, min_area=0.02, max_area=1 / 3,
                 min_aspect=0.3):
        if mode not in ('pixel', 'rand', 'const'):
            raise ValueError(f"TRAIN.RANDOM_ERASE_MODE: {mode!r} is not one of 'pixel', 'rand', 'const'")
        self.prob, self.mode, self.max_count = prob, mode, max(1, max_count)
        self.min_area, self.max_area = min_area, max_area
        self.log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))

    def __call__(self, x, rng):
        if rng.random() > self.prob:
            return x
        channels, height, width = x.shape
        area = height * width
        count = 1 if self.max_count == 1 else int(rng.integers(1, self.max_count + 1))
        for _ in range(count):
            for _attempt in range(10):
                target = rng.uniform(self.min_area, self.max_area) * area / count
                aspect = math.exp(rng.uniform(*self.log_aspect))
                h = int(round(math.sqrt(target * aspect)))
                w = int(round(math.sqrt(target / aspect)))
                if w < width and h < height:
                    top = int(rng.integers(0, height - h + 1))
                    left = int(rng.integers(0, width - w + 1))
                    if self.mode == 'pixel':
                        x[:, top:top + h, left:left + w] = rng.standard_normal((channels, h, w), np.float32)
                    elif self.mode == 'rand':
                        x[:, top:top + h, left:left + w] = rng.standard_normal((channels, 1, 1), np.float32)
                    else:
                        x[:, top:top + h, left:left + w] = 0.0
                    break
        return x



def build_augmenter(mean, interpolation, auto_augment, rand_augment, rand_augment_layers,
                    rand_augment_magnitude, color_jitter, auto_augment_cls=AutoAugment,
                    rand_augment_cls=RandAugment):
    """DeiT's choice of photometric/geometric augmentation: AutoAugment, else RandAugment
    (std 0.5), else ColorJitter, else None.  Ops that shift pixels fill with the mean colour.
    Token labeling passes its label-aware AutoAugment / RandAugment classes."""
    fill = tuple(min(255, round(255 * m)) for m in mean)
    if auto_augment:
        return auto_augment_cls(fill=fill, interpolation=interpolation)
    if rand_augment:
        return rand_augment_cls(rand_augment_layers, rand_augment_magnitude, magnitude_std=0.5,
                                fill=fill, interpolation=interpolation)
    if color_jitter:
        return ColorJitter(color_jitter, color_jitter, color_jitter)
    return None

class TrainTransform:
    """The DeiT training pipeline (see the module docstring); `__call__(img, rng)`."""

    def __init__(self, image_size, mean, std, interpolation='bicubic', auto_augment=False,
                 rand_augment=True, rand_augment_layers=2, rand_augment_magnitude=9, color_jitter=0.4,
                 random_erase_prob=0.25, random_erase_mode='pixel', random_erase_count=1, hflip=0.5,
                 crop_scale=(0.08, 1.0)):
        self.crop = RandomResizedCrop(image_size, scale=tuple(crop_scale), interpolation=interpolation)
        self.hflip = hflip
        self.augment = build_augmenter(mean, interpolation, auto_augment, rand_augment, rand_augment_layers,
                                       rand_augment_magnitude, color_jitter)
        self.normalize = Normalize(mean, std)
        self.erase = RandomErasing(random_erase_prob, random_erase_mode, random_erase_count) \
            if random_erase_prob > 0 else None

    def __call__(self, img, rng):
        img = self.crop(img, rng)
        if self.hflip and rng.random() < self.hflip:
            img = cv2.flip(img, 1)
        if self.augment is not None:
            img = self.augment(img, rng)
        x = self.normalize(img)
        if self.erase is not None:
            x = self.erase(x, rng)
        return x


def eval_resize_size(image_size, crop_pct):
    """Short side before the centre crop: floor(IMAGE_SIZE / CROP_PCT), as timm and PaddleViT."""
    return int(math.floor(image_size / crop_pct))


def eval_resize_shape(height, width, short):
    """(height, width) with the short side `short` and the long one truncated (torchvision)."""
    if width <= height:
        return int(short * height / width), short
    return short, int(short * width / height)


EVAL_RESIZE_MODES = ('shorter', 'squash')


def _check_eval_resize(resize):
    if resize not in EVAL_RESIZE_MODES:
        raise ConfigError(f"DATA.EVAL_RESIZE: {resize!r} is not one of 'shorter' (short side to "
                          f"IMAGE_SIZE / CROP_PCT, centre crop) or 'squash' (whole image to "
                          f"IMAGE_SIZE x IMAGE_SIZE, no crop)")


class EvalTransform:
    """Resize (PIL filter) and normalise; `__call__(img, rng=None)`.

    resize='shorter': the short side to IMAGE_SIZE / CROP_PCT, then a centre crop of
    `image_size`.  resize='squash': the whole image to `image_size` x `image_size`, no
    crop, `crop_pct` unused (see the module docstring).
    """

    def __init__(self, image_size, crop_pct, mean, std, interpolation='bicubic', resize='shorter'):
        _check_interpolation(interpolation, _PIL, 'DATA.INTERPOLATION')
        if interpolation == 'random':
            raise ValueError("DATA.INTERPOLATION: 'random' is for training only")
        _check_eval_resize(resize)
        self.image_size = image_size
        self.resize = resize
        self.short = eval_resize_size(image_size, crop_pct)
        if resize == 'shorter' and self.short < image_size:
            raise ValueError(f'DATA.CROP_PCT={crop_pct} > 1 would crop {image_size} px out of '
                             f'{self.short} px')
        self.interpolation = interpolation
        self.normalize = Normalize(mean, std)

    def __call__(self, img, rng=None):
        height, width = img.shape[:2]
        size = self.image_size
        if self.resize == 'squash':
            if (height, width) != (size, size):
                img = np.asarray(Image.fromarray(img).resize((size, size), _PIL[self.interpolation]))
            return self.normalize(img)
        new_h, new_w = eval_resize_shape(height, width, self.short)
        top = int(round((new_h - size) / 2.0))
        left = int(round((new_w - size) / 2.0))
        if (new_h, new_w) != (height, width):
            # resize everything, then crop: resampling only the kept box (PIL's box=) would
            # be a third cheaper but moves up to a quarter of the values by 1-4 levels
            img = np.asarray(Image.fromarray(img).resize((new_w, new_h), _PIL[self.interpolation]))
        return self.normalize(img[top:top + size, left:left + size])


def build_transform(config, mode):
    """The TrainTransform ('train') or EvalTransform ('val') the config describes."""
    data, train = config.DATA, config.TRAIN
    if mode == 'train':
        if train.RANDOM_ERASE_SPLIT:
            raise ValueError('TRAIN.RANDOM_ERASE_SPLIT is not supported (it only applies to augmentation '
                             'splits, which this pipeline does not make); set it to False')
        return TrainTransform(
            data.IMAGE_SIZE, data.MEAN, data.STD, interpolation=train.TRAIN_INTERPOLATION,
            auto_augment=train.AUTO_AUGMENT, rand_augment=train.RAND_AUGMENT,
            rand_augment_layers=train.RAND_AUGMENT_LAYERS,
            rand_augment_magnitude=train.RAND_AUGMENT_MAGNITUDE,
            color_jitter=train.COLOR_JITTER or 0.0, random_erase_prob=train.RANDOM_ERASE_PROB,
            random_erase_mode=train.RANDOM_ERASE_MODE, random_erase_count=train.RANDOM_ERASE_COUNT,
            hflip=train.HFLIP_PROB, crop_scale=train.CROP_SCALE)
    if mode == 'val':
        return EvalTransform(data.IMAGE_SIZE, data.CROP_PCT, data.MEAN, data.STD, data.INTERPOLATION,
                             resize=data.EVAL_RESIZE)
    raise ValueError(f"mode must be 'train' or 'val', got {mode!r}")


def describe_eval_transform(config):
    """One line for the eval log: resize, crop_pct (or that it is unused), interpolation, mean, std."""
    data = config.DATA
    _check_eval_resize(data.EVAL_RESIZE)
    mean = ', '.join(f'{v:g}' for v in data.MEAN)
    std = ', '.join(f'{v:g}' for v in data.STD)
    normalize = f'normalize mean=({mean}) std=({std})'
    if data.EVAL_RESIZE == 'squash':
        return (f'squash: resize the whole image to {data.IMAGE_SIZE}x{data.IMAGE_SIZE} '
                f'({data.INTERPOLATION}, PIL; aspect ratio not kept), no crop, crop_pct '
                f'{data.CROP_PCT:g} ignored, {normalize}')
    short = eval_resize_size(data.IMAGE_SIZE, data.CROP_PCT)
    return (f'resize short side to {short} ({data.IMAGE_SIZE} / crop_pct {data.CROP_PCT:g}, '
            f'{data.INTERPOLATION}, PIL), center crop {data.IMAGE_SIZE}, {normalize}')
