"""The pipeline as PaddleViT builds it: PIL decoding and PIL ops + paddle.vision.transforms.

Two uses: the speed baseline of `loader_speed.benchmark_baseline_loader`
(`tools/benchmark.py --loader`), and the reference tests/test_data.py compares
the array operations of `engine.data`'s `autoaugment` / `transforms` / `decode`
against.  Not used for training, hence not part of the engine.
"""
import os

import numpy as np
import paddle
from PIL import Image, ImageEnhance, ImageOps

from engine.data import autoaugment
from engine.data.dataset import parse_list_file

__all__ = ['PIL_OPS', 'PilRandAugment', 'paddlevit_transform', 'PaddleViTListDataset']

_PIL_INTERPOLATION = {'nearest': Image.NEAREST, 'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC}


def _solarize_add(img, add, threshold=128):
    lut = [min(255, i + add) if i < threshold else i for i in range(256)]
    return img.point(lut * 3)


def _posterize(img, bits):
    if bits >= 8:
        return img
    if bits <= 0:   # recent Pillow refuses 0 bits; older ones returned black
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits)


def _affine(img, matrix, fill, resample):
    return img.transform(img.size, Image.AFFINE, matrix, resample=resample, fillcolor=fill)


# name -> function(PIL image, argument, (fill, PIL resample)), same names and arguments as autoaugment.OPS
PIL_OPS = {
    'AutoContrast': lambda img, _a, _c: ImageOps.autocontrast(img),
    'Equalize': lambda img, _a, _c: ImageOps.equalize(img),
    'Invert': lambda img, _a, _c: ImageOps.invert(img),
    'Rotate': lambda img, a, c: img.rotate(a, resample=c[1], fillcolor=c[0]),
    'Posterize': lambda img, a, _c: _posterize(img, a),
    'Solarize': lambda img, a, _c: ImageOps.solarize(img, a),
    'SolarizeAdd': lambda img, a, _c: _solarize_add(img, a),
    'Color': lambda img, a, _c: ImageEnhance.Color(img).enhance(a),
    'Contrast': lambda img, a, _c: ImageEnhance.Contrast(img).enhance(a),
    'Brightness': lambda img, a, _c: ImageEnhance.Brightness(img).enhance(a),
    'Sharpness': lambda img, a, _c: ImageEnhance.Sharpness(img).enhance(a),
    'ShearX': lambda img, a, c: _affine(img, (1, a, 0, 0, 1, 0), *c),
    'ShearY': lambda img, a, c: _affine(img, (1, 0, 0, a, 1, 0), *c),
    'TranslateXRel': lambda img, a, c: _affine(img, (1, 0, a * img.size[0], 0, 1, 0), *c),
    'TranslateYRel': lambda img, a, c: _affine(img, (1, 0, 0, 0, 1, a * img.size[1]), *c),
}
for _name in ('Posterize', 'Solarize', 'Color', 'Contrast', 'Brightness', 'Sharpness'):
    for _suffix in ('Increasing', 'Original'):
        if _name + _suffix in autoaugment.OPS:
            PIL_OPS[_name + _suffix] = PIL_OPS[_name]


class PilRandAugment:
    """RandAugment on PIL images (same op set and magnitudes as autoaugment.RandAugment)."""

    def __init__(self, num_layers=2, magnitude=9, magnitude_std=0.5, prob=0.5,
                 fill=(124, 116, 104), interpolation='bicubic'):
        self.num_layers, self.magnitude, self.magnitude_std, self.prob = \
            num_layers, magnitude, magnitude_std, prob
        self.context = (tuple(fill), _PIL_INTERPOLATION.get(interpolation, Image.BICUBIC))
        self.names = autoaugment.RAND_INCREASING
        self._rng = None

    def __call__(self, img):
        if self._rng is None:
            self._rng = np.random.default_rng(np.random.randint(2 ** 31))
        rng = self._rng
        for i in rng.integers(len(self.names), size=self.num_layers):
            if rng.random() > self.prob:
                continue
            m = min(max(rng.normal(self.magnitude, self.magnitude_std), 0.0), 10.0)
            name = self.names[i]
            level_to_arg = autoaugment.OPS[name][1]
            img = PIL_OPS[name](img, level_to_arg(m, rng) if level_to_arg else None, self.context)
        return img


def paddlevit_transform(config, mode):
    """paddle.vision.transforms pipeline equivalent to the engine's, on PIL images."""
    from paddle.vision import transforms as T
    data, train = config.DATA, config.TRAIN
    mean, std = list(data.MEAN), list(data.STD)
    if mode == 'train':
        ops = [T.RandomResizedCrop((data.IMAGE_SIZE, data.IMAGE_SIZE), scale=tuple(train.CROP_SCALE),
                                   interpolation=train.TRAIN_INTERPOLATION),
               T.RandomHorizontalFlip(train.HFLIP_PROB)]
        if train.RAND_AUGMENT or train.AUTO_AUGMENT:
            ops.append(PilRandAugment(train.RAND_AUGMENT_LAYERS, train.RAND_AUGMENT_MAGNITUDE,
                                      fill=tuple(round(255 * m) for m in mean),
                                      interpolation=train.TRAIN_INTERPOLATION))
        elif train.COLOR_JITTER:
            ops.append(T.ColorJitter(train.COLOR_JITTER, train.COLOR_JITTER, train.COLOR_JITTER))
        ops += [T.ToTensor(), T.Normalize(mean=mean, std=std)]
        if train.RANDOM_ERASE_PROB > 0:
            ops.append(T.RandomErasing(prob=train.RANDOM_ERASE_PROB, value='random'))
        return T.Compose(ops)
    short = int(data.IMAGE_SIZE / data.CROP_PCT)
    return T.Compose([T.Resize(short, interpolation=data.INTERPOLATION), T.CenterCrop(data.IMAGE_SIZE),
                      T.ToTensor(), T.Normalize(mean=mean, std=std)])


class PaddleViTListDataset(paddle.io.Dataset):
    """PaddleViT's ImageNet2012Dataset: list file, `Image.open(path).convert('RGB')`, transform."""

    def __init__(self, root, list_file, num_classes, transform):
        super().__init__()
        self.samples = [(os.path.join(root, path), label)
                        for path, label, _ in parse_list_file(list_file, num_classes)]
        self.transform = transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, label = self.samples[index]
        image = Image.open(path).convert('RGB')
        return self.transform(image), label
