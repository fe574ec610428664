"""RandAugment and AutoAugment on HWC uint8 RGB arrays, with OpenCV and lookup tables.

The operations, their magnitude-to-argument mappings and the policies follow
the definitions timm uses for DeiT (`rand-m9-mstd0.5-inc1`) and the AutoAugment
paper's ImageNet policy; the pixel operations reproduce PIL's `ImageOps` /
`ImageEnhance` semantics (what timm applies) so that a model sees the same
augmentation distribution, at several times the speed of PIL:

- exact to PIL: AutoContrast, Equalize, Invert, Posterize, Solarize, SolarizeAdd
  (lookup tables computed the way PIL computes them);
- within 1-2 levels of PIL: Color, Contrast, Brightness, Sharpness (PIL's
  blend, truncating like PIL; the grey conversion is OpenCV's);
- geometric ops (Rotate, ShearX/Y, TranslateX/YRel) are the same affine maps,
  PIL's pixel-centre convention converted to OpenCV's; they differ from PIL by
  the cubic kernel (OpenCV a=-0.75, PIL a=-0.5) and at the borders.

Every op is applied with probability `prob`; the magnitude M (0..10) is drawn
from N(M, magnitude_std) and clipped to [0, 10] when magnitude_std > 0.
Randomness comes from the `numpy.random.Generator` passed in.
"""
import functools
import math

import cv2
import numpy as np

__all__ = ['OPS', 'RandAugment', 'AutoAugment', 'auto_contrast', 'equalize', 'invert', 'posterize',
           'solarize', 'solarize_add', 'color', 'contrast', 'brightness', 'sharpness', 'affine',
           'rotate', 'shear_x', 'shear_y', 'translate_x', 'translate_y']

_CV2_INTERPOLATION = {'nearest': cv2.INTER_NEAREST, 'bilinear': cv2.INTER_LINEAR,
                      'bicubic': cv2.INTER_CUBIC}
_IDENTITY = np.arange(256, dtype=np.uint8)


# --------------------------------------------------------------------------- pixel ops
def _lut(img, luts):
    """Apply one 256-entry table per channel."""
    if all(lut is None for lut in luts):
        return img
    table = np.stack([_IDENTITY if lut is None else lut for lut in luts], axis=1)  # [256, 3]
    return cv2.LUT(img, table.reshape(256, 1, 3))


def auto_contrast(img):
    """Stretch each channel so its darkest pixel is 0 and brightest 255 (PIL autocontrast, cutoff 0)."""
    luts = []
    for plane in cv2.split(img):
        low, high = (int(v) for v in cv2.minMaxLoc(plane)[:2])
        if high <= low:
            luts.append(None)
            continue
        scale = 255.0 / (high - low)
        values = np.trunc(np.arange(256) * scale - low * scale)
        luts.append(np.clip(values, 0, 255).astype(np.uint8))
    return _lut(img, luts)


def equalize(img):
    """Per-channel histogram equalisation, PIL's formula (ImageOps.equalize)."""
    luts = []
    for plane in cv2.split(img):
        hist = cv2.calcHist([plane], [0], None, [256], [0, 256]).ravel().astype(np.int64)
        nonzero = hist[hist > 0]
        step = (int(nonzero.sum()) - int(nonzero[-1])) // 255 if len(nonzero) > 1 else 0
        if not step:
            luts.append(None)
            continue
        below = np.cumsum(hist) - hist                   # pixels below each level
        luts.append(np.minimum((step // 2 + below) // step, 255).astype(np.uint8))
    return _lut(img, luts)


def invert(img):
    return cv2.bitwise_not(img)


def posterize(img, bits):
    """Keep the `bits` most significant bits of each value (0 bits: black)."""
    if bits >= 8:
        return img
    return cv2.bitwise_and(img, np.full_like(img, (0xFF << (8 - bits)) & 0xFF))


@functools.lru_cache(maxsize=None)
def _solarize_lut(threshold, add):
    """add == 0: invert values >= threshold; else add `add` (saturating) to values < threshold."""
    values = np.arange(256)
    if add:
        values = np.where(values < threshold, np.minimum(values + add, 255), values)
    else:
        values = np.where(values < threshold, values, 255 - values)
    return np.repeat(values.astype(np.uint8).reshape(256, 1, 1), 3, axis=2)


def solarize(img, threshold):
    """Invert every value >= threshold."""
    return img if threshold >= 256 else cv2.LUT(img, _solarize_lut(int(threshold), 0))


def solarize_add(img, add, threshold=128):
    """Add `add` (saturating) to every value < threshold."""
    return img if add <= 0 else cv2.LUT(img, _solarize_lut(int(threshold), int(add)))


def _blend(degenerate, img, factor):
    """degenerate + factor * (img - degenerate), truncated and clipped to uint8 like PIL's blend."""
    # addWeighted rounds to nearest: the -0.499 offset turns that into PIL's truncation
    return cv2.addWeighted(img, factor, degenerate, 1.0 - factor, -0.499)


def _blend_value(img, value, factor):
    return cv2.addWeighted(img, factor, img, 0.0, value * (1.0 - factor) - 0.499)


def _gray(img):
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


def color(img, factor):
    """Saturation: 0 grey, 1 unchanged (ImageEnhance.Color)."""
    return _blend(cv2.cvtColor(_gray(img), cv2.COLOR_GRAY2RGB), img, factor)


def contrast(img, factor):
    """Contrast around the mean grey level: 0 flat grey, 1 unchanged (ImageEnhance.Contrast)."""
    mean = int(float(_gray(img).mean()) + 0.5)
    return _blend_value(img, mean, factor)


def brightness(img, factor):
    """0 black, 1 unchanged (ImageEnhance.Brightness)."""
    return _blend_value(img, 0.0, factor)


_SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13.0


def sharpness(img, factor):
    """Blend with PIL's SMOOTH-filtered image (border pixels kept): <1 blurs, >1 sharpens."""
    smooth = cv2.filter2D(img, -1, _SMOOTH, borderType=cv2.BORDER_REPLICATE)
    smooth[0], smooth[-1], smooth[:, 0], smooth[:, -1] = img[0], img[-1], img[:, 0], img[:, -1]
    return _blend(smooth, img, factor)


# --------------------------------------------------------------------------- geometric ops
def affine(img, matrix, fill, interpolation=cv2.INTER_CUBIC):
    """PIL's `Image.transform(size, AFFINE, matrix)`: output pixel (x, y) samples the input at
    (a x + b y + c, d x + e y + f) in PIL coordinates, where pixel centres sit at +0.5."""
    a, b, c, d, e, f = matrix
    # PIL maps centre (x + .5, y + .5); in OpenCV's index coordinates, centres are integers
    inverse = np.array([[a, b, c + 0.5 * (a + b) - 0.5],
                        [d, e, f + 0.5 * (d + e) - 0.5]], np.float64)
    height, width = img.shape[:2]
    return cv2.warpAffine(img, inverse, (width, height), flags=interpolation | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=tuple(float(v) for v in fill))


def rotate(img, degrees, fill, interpolation=cv2.INTER_CUBIC):
    """Counter-clockwise rotation about the image centre, same size (PIL's Image.rotate)."""
    if degrees % 360.0 == 0:
        return img
    height, width = img.shape[:2]
    cx, cy = width / 2.0, height / 2.0
    angle = -math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    # output -> input: rotate about the centre by -angle
    matrix = (cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy)
    return affine(img, matrix, fill, interpolation)


def shear_x(img, factor, fill, interpolation=cv2.INTER_CUBIC):
    return affine(img, (1, factor, 0, 0, 1, 0), fill, interpolation)


def shear_y(img, factor, fill, interpolation=cv2.INTER_CUBIC):
    return affine(img, (1, 0, 0, factor, 1, 0), fill, interpolation)


def translate_x(img, pixels, fill, interpolation=cv2.INTER_CUBIC):
    return affine(img, (1, 0, pixels, 0, 1, 0), fill, interpolation)


def translate_y(img, pixels, fill, interpolation=cv2.INTER_CUBIC):
    return affine(img, (1, 0, 0, 0, 1, pixels), fill, interpolation)


# --------------------------------------------------------------------------- magnitudes
_MAX_LEVEL = 10.0


def _signed(value, rng):
    return -value if rng.random() > 0.5 else value


def _enhance(level, rng):
    return level / _MAX_LEVEL * 1.8 + 0.1            # [0.1, 1.9], 1.0 at M = 5


def _enhance_increasing(level, rng):
    return max(0.1, 1.0 + _signed(level / _MAX_LEVEL * 0.9, rng))  # further from 1.0 as M grows


def _posterize_bits(level):
    return int(level / _MAX_LEVEL * 4)


def _solarize_threshold(level):
    return min(256, int(level / _MAX_LEVEL * 256))


# name -> (function(img, arg, ctx), level -> argument); ctx: fill colour and interpolation
OPS = {
    'AutoContrast': (lambda img, _a, _c: auto_contrast(img), None),
    'Equalize': (lambda img, _a, _c: equalize(img), None),
    'Invert': (lambda img, _a, _c: invert(img), None),
    'Rotate': (lambda img, a, c: rotate(img, a, *c), lambda m, rng: _signed(m / _MAX_LEVEL * 30.0, rng)),
    'Posterize': (lambda img, a, _c: posterize(img, a), lambda m, rng: _posterize_bits(m)),
    'PosterizeIncreasing': (lambda img, a, _c: posterize(img, a), lambda m, rng: 4 - _posterize_bits(m)),
    'PosterizeOriginal': (lambda img, a, _c: posterize(img, a), lambda m, rng: _posterize_bits(m) + 4),
    'Solarize': (lambda img, a, _c: solarize(img, a), lambda m, rng: _solarize_threshold(m)),
    'SolarizeIncreasing': (lambda img, a, _c: solarize(img, a), lambda m, rng: 256 - _solarize_threshold(m)),
    'SolarizeAdd': (lambda img, a, _c: solarize_add(img, a),
                    lambda m, rng: min(128, int(m / _MAX_LEVEL * 110))),
    'Color': (lambda img, a, _c: color(img, a), _enhance),
    'ColorIncreasing': (lambda img, a, _c: color(img, a), _enhance_increasing),
    'Contrast': (lambda img, a, _c: contrast(img, a), _enhance),
    'ContrastIncreasing': (lambda img, a, _c: contrast(img, a), _enhance_increasing),
    'Brightness': (lambda img, a, _c: brightness(img, a), _enhance),
    'BrightnessIncreasing': (lambda img, a, _c: brightness(img, a), _enhance_increasing),
    'Sharpness': (lambda img, a, _c: sharpness(img, a), _enhance),
    'SharpnessIncreasing': (lambda img, a, _c: sharpness(img, a), _enhance_increasing),
    'ShearX': (lambda img, a, c: shear_x(img, a, *c), lambda m, rng: _signed(m / _MAX_LEVEL * 0.3, rng)),
    'ShearY': (lambda img, a, c: shear_y(img, a, *c), lambda m, rng: _signed(m / _MAX_LEVEL * 0.3, rng)),
    'TranslateXRel': (lambda img, a, c: translate_x(img, a * img.shape[1], *c),
                      lambda m, rng: _signed(m / _MAX_LEVEL * 0.45, rng)),
    'TranslateYRel': (lambda img, a, c: translate_y(img, a * img.shape[0], *c),
                      lambda m, rng: _signed(m / _MAX_LEVEL * 0.45, rng)),
}

# RandAugment's op set, with timm's "increasing" variants (severity grows with M): inc1
RAND_INCREASING = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing',
                   'SolarizeIncreasing', 'SolarizeAdd', 'ColorIncreasing', 'ContrastIncreasing',
                   'BrightnessIncreasing', 'SharpnessIncreasing', 'ShearX', 'ShearY',
                   'TranslateXRel', 'TranslateYRel')
RAND_ORIGINAL = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize',
                 'SolarizeAdd', 'Color', 'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY',
                 'TranslateXRel', 'TranslateYRel')

# The ImageNet policy of the AutoAugment paper (Cubuk et al. 2019, appendix): 25 sub-policies
# of two (op, probability, magnitude) steps; one sub-policy is drawn per image.
IMAGENET_POLICY = (
    (('PosterizeOriginal', 0.4, 8), ('Rotate', 0.6, 9)),
    (('Solarize', 0.6, 5), ('AutoContrast', 0.6, 5)),
    (('Equalize', 0.8, 8), ('Equalize', 0.6, 3)),
    (('PosterizeOriginal', 0.6, 7), ('PosterizeOriginal', 0.6, 6)),
    (('Equalize', 0.4, 7), ('Solarize', 0.2, 4)),
    (('Equalize', 0.4, 4), ('Rotate', 0.8, 8)),
    (('Solarize', 0.6, 3), ('Equalize', 0.6, 7)),
    (('PosterizeOriginal', 0.8, 5), ('Equalize', 1.0, 2)),
    (('Rotate', 0.2, 3), ('Solarize', 0.6, 8)),
    (('Equalize', 0.6, 8), ('PosterizeOriginal', 0.4, 6)),
    (('Rotate', 0.8, 8), ('Color', 0.4, 0)),
    (('Rotate', 0.4, 9), ('Equalize', 0.6, 2)),
    (('Equalize', 0.0, 7), ('Equalize', 0.8, 8)),
    (('Invert', 0.6, 4), ('Equalize', 1.0, 8)),
    (('Color', 0.6, 4), ('Contrast', 1.0, 8)),
    (('Rotate', 0.8, 8), ('Color', 1.0, 2)),
    (('Color', 0.8, 8), ('Solarize', 0.8, 7)),
    (('Sharpness', 0.4, 7), ('Invert', 0.6, 8)),
    (('ShearX', 0.6, 5), ('Equalize', 1.0, 9)),
    (('Color', 0.4, 0), ('Equalize', 0.6, 3)),
    (('Equalize', 0.4, 7), ('Solarize', 0.2, 4)),
    (('Solarize', 0.6, 5), ('AutoContrast', 0.6, 5)),
    (('Invert', 0.6, 4), ('Equalize', 1.0, 8)),
    (('Color', 0.6, 4), ('Contrast', 1.0, 8)),
    (('Equalize', 0.8, 8), ('Equalize', 0.6, 3)),
)


def _interpolation(name):
    if name == 'random':
        return (cv2.INTER_LINEAR, cv2.INTER_CUBIC)
    return _CV2_INTERPOLATION.get(name, cv2.INTER_CUBIC)


class _Augmenter:
    def __init__(self, magnitude_std, fill, interpolation):
        self.magnitude_std = magnitude_std
        self.fill = tuple(int(v) for v in fill)
        self.interpolation = _interpolation(interpolation)

    def draw(self, name, prob, magnitude, rng):
        """The random choices of one op: (op, argument, interpolation), or None if it is skipped."""
        if prob < 1.0 and rng.random() > prob:
            return None
        if self.magnitude_std == float('inf'):
            magnitude = rng.uniform(0, magnitude)
        elif self.magnitude_std > 0:
            magnitude = rng.normal(magnitude, self.magnitude_std)
        magnitude = min(max(magnitude, 0.0), _MAX_LEVEL)
        op, level_to_arg = OPS[name]
        arg = level_to_arg(magnitude, rng) if level_to_arg is not None else None
        interpolation = self.interpolation
        if isinstance(interpolation, tuple):
            interpolation = interpolation[int(rng.integers(len(interpolation)))]
        return op, arg, interpolation

    def apply(self, img, name, prob, magnitude, rng):
        drawn = self.draw(name, prob, magnitude, rng)
        if drawn is None:
            return img
        op, arg, interpolation = drawn
        return op(img, arg, (self.fill, interpolation))


class RandAugment(_Augmenter):
    """`num_layers` ops drawn uniformly (with replacement), each applied with probability `prob`.

    Defaults are DeiT's `rand-m9-mstd0.5-inc1`: 2 layers, M=9, std 0.5, increasing ops.
    `fill` is the colour uncovered by geometric ops (timm: the dataset mean x 255).
    """

    def __init__(self, num_layers=2, magnitude=9, magnitude_std=0.5, prob=0.5, increasing=True,
                 fill=(128, 128, 128), interpolation='bicubic'):
        super().__init__(magnitude_std, fill, interpolation)
        self.num_layers = num_layers
        self.magnitude = magnitude
        self.prob = prob
        self.names = RAND_INCREASING if increasing else RAND_ORIGINAL

    def __call__(self, img, rng):
        for i in rng.integers(len(self.names), size=self.num_layers):
            img = self.apply(img, self.names[i], self.prob, self.magnitude, rng)
        return img

    def __repr__(self):
        return (f'RandAugment(layers={self.num_layers}, magnitude={self.magnitude}, '
                f'std={self.magnitude_std}, prob={self.prob}, ops={list(self.names)})')


class AutoAugment(_Augmenter):
    """One sub-policy of `policy` (default: the paper's ImageNet policy) per image."""

    def __init__(self, policy=IMAGENET_POLICY, magnitude_std=0.0, fill=(128, 128, 128),
                 interpolation='bicubic'):
        super().__init__(magnitude_std, fill, interpolation)
        self.policy = policy

    def __call__(self, img, rng):
        for name, prob, magnitude in self.policy[int(rng.integers(len(self.policy)))]:
            img = self.apply(img, name, prob, magnitude, rng)
        return img

    def __repr__(self):
        return f'AutoAugment(ImageNet policy, {len(self.policy)} sub-policies)'
