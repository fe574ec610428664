"""Token Labeling (Jiang et al., "All Tokens Matter", NeurIPS 2021), for any model with dense outputs.

Every patch token gets its own soft target, read from a label map that a
strong classifier produced for the whole training image (`tools/generate_label.py`).
A model that takes part returns, in training, `DenseOutput(cls_logits,
aux_logits, box)`: the class-token logits, one logit vector per patch token,
and the MixToken box it used (or None).  The pieces, in the order data flows:

1. Label-map files.  One `.npz` per training image, beside its relative path:
   `<label_dir>/<path/of/image>.npz` holding `scores` float16 [k, H, W] (the
   teacher's top-k logits at every position of an H x W grid), `indices` int16/
   int32 [k, H, W] (their classes) and `region` float32 [4]: (top, left, height,
   width) of the part of the image the grid covers, as fractions of the image.
   The official TokenLabeling `.pt` files ([2, k, H, W] half tensors: values,
   then indices, named `<label_dir>/<class folder>/<stem>.pt`) are read too; they
   carry no region, see `LABEL_REGIONS`.
2. Label-aware transforms (`TokenLabelTransform`, `TokenLabelDataset`), in the
   official order: a horizontal flip flips the image and the label map together;
   RandAugment's geometric ops (rotate, shear, translate) move the map with the
   image; RandomResizedCrop records its crop as a box in label-map coordinates
   (x1, y1, x2, y2 as fractions of the grid).  Colour changes and random erasing
   touch the image only.
3. Targets (`token_label_targets`, on the device, per batch): the top-k maps are
   scattered into dense [C, H, W] maps, the crop box is cut out with RoIAlign
   (bilinear, `label_size` x `label_size` cells for the tokens plus one cell over
   the whole box for the class token), softmax over classes, then label smoothing
   -- the official `get_labelmaps_with_coords`.  A sample without token labels
   gets its (smoothed) one-hot class for the class token and every token.
4. MixToken (`MixToken`): the model replaces a random box of the token grid of
   each image by the tokens of the image at the mirrored batch position, and puts
   the per-token predictions back afterwards; the class target is mixed by the
   token area, 1 - area / N.  `MixToken.mix` applied to the per-token targets cuts
   the label maps the same way (the two are equivalent for the loss).
5. Loss (`TokenLabelCrossEntropy`): cls_weight * softCE(class logits, class
   target) + dense_weight * mean over all tokens of softCE(token logits, token target).

Deliberate difference from the official code: the official crop box is passed to
RoIAlign as (top, left, bottom, right) where RoIAlign reads (x1, y1, x2, y2), so
the label crop is the transpose of the image crop; here the label crop is the
image crop (a test checks that a flipped image gets exactly flipped targets).
"""
import math
import os
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np
import paddle
import paddle.nn.functional as F
from paddle.vision.ops import roi_align

from .data import autoaugment as aug
from .data import dataset as dset
from .data import transforms as dtf
from .data.mixup import build_mixup, smooth_one_hot

__all__ = [
    'DenseOutput', 'TokenLabelTargets', 'TokenBox', 'LabelMap', 'LABEL_REGIONS',
    'save_label_map', 'load_label_map', 'label_map_path', 'hflip_label_map', 'crop_box_in_label_map',
    'geometric_op_matrix', 'affine_label_map', 'LabelRandAugment', 'LabelAutoAugment',
    'ImageWithLabelMap', 'TokenLabelTransform', 'TokenLabelDataset', 'build_token_label_dataset',
    'token_label_targets', 'one_hot_targets', 'MixToken', 'TokenLabelMixup',
    'TokenLabelCrossEntropy', 'soft_cross_entropy',
]


# ----------------------------------------------------------------------------- outputs, targets

class DenseOutput(dict):
    """What a model returns in token-labeling training: a dict (so that paddle.DataParallel
    finds its tensors, and the trainer does not take it for a (logits, distilled logits)
    tuple) with attribute access:

        cls_logits  [B, classes]
        aux_logits  [B, N, classes], row-major patch-grid order, MixToken undone
        box         the MixToken TokenBox, or None
    """

    def __init__(self, cls_logits, aux_logits, box=None):
        super().__init__(cls_logits=cls_logits, aux_logits=aux_logits, box=box)

    cls_logits = property(lambda self: self['cls_logits'])
    aux_logits = property(lambda self: self['aux_logits'])
    box = property(lambda self: self['box'])


@dataclass
class TokenLabelTargets:
    """Soft targets for one batch; `dense` None means "the class target at every token"."""
    cls: object                   # [B, classes]
    dense: object = None          # [B, N, classes] or None


class TokenBox(NamedTuple):
    """A box of the token grid, rows [top, bottom) and columns [left, right)."""
    top: int
    left: int
    bottom: int
    right: int

    def area(self):
        return max(0, self.bottom - self.top) * max(0, self.right - self.left)


# ----------------------------------------------------------------------------- label-map files

@dataclass
class LabelMap:
    """Top-k teacher logits on an H x W grid over `region` of the image.

    scores float32 [k, H, W]; indices int64 [k, H, W];
    region (top, left, height, width) as fractions of the image it was made from.
    """
    scores: np.ndarray
    indices: np.ndarray
    region: tuple = (0.0, 0.0, 1.0, 1.0)


# Where the grid of a file without a stored region lies in its image:
#   'center_square': the official generate_label.py command (--crop-pct 1.0) resizes the
#                    short side and center-crops a square; its grid covers that square.
#   'full_image':    what the official training code assumes (the whole image).
LABEL_REGIONS = ('center_square', 'full_image')


def _region_for(kind, image_size):
    """(top, left, height, width) fractions of the region `kind` for an image (width, height)."""
    if kind == 'full_image':
        return (0.0, 0.0, 1.0, 1.0)
    if kind != 'center_square':
        raise ValueError(f'label region {kind!r}: expected one of {LABEL_REGIONS}')
    w, h = image_size
    side = min(w, h)
    return ((h - side) / 2. / h, (w - side) / 2. / w, side / h, side / w)


def save_label_map(path, scores, indices, region=(0.0, 0.0, 1.0, 1.0)):
    """Write one image's label map (scores as float16, like the official files)."""
    scores, indices = np.asarray(scores), np.asarray(indices)
    if scores.shape != indices.shape or scores.ndim != 3:
        raise ValueError(f'scores {scores.shape} and indices {indices.shape} must both be [k, H, W]')
    index_dtype = np.int16 if indices.max(initial=0) < 2 ** 15 else np.int32
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + '.tmp.npz'
    np.savez(tmp, scores=scores.astype(np.float16), indices=indices.astype(index_dtype),
             region=np.asarray(region, dtype=np.float32))
    os.replace(tmp, path)


def load_label_map(path, image_size=None, default_region='center_square'):
    """A `LabelMap` from our `.npz` or an official `.pt`.

    `image_size` (width, height) of the image is needed to place a `.pt` map, which
    stores no region, by `default_region`.
    """
    if path.endswith('.npz'):
        with np.load(path, allow_pickle=False) as data:
            region = tuple(float(v) for v in data['region']) if 'region' in data.files else None
            label_map = LabelMap(data['scores'].astype(np.float32), data['indices'].astype(np.int64),
                                 region or (0.0, 0.0, 1.0, 1.0))
        if region is None and image_size is not None:
            label_map.region = _region_for(default_region, image_size)
        return label_map
    if path.endswith('.pt'):
        from .torch_reader import load_torch   # torch-free reader of torch files
        raw = np.asarray(load_torch(path), dtype=np.float32)
        if raw.ndim != 4 or raw.shape[0] != 2:
            raise ValueError(f'{path}: expected an official [2, k, H, W] label map, got {raw.shape}')
        region = _region_for(default_region, image_size) if image_size is not None else (0.0, 0.0, 1.0, 1.0)
        return LabelMap(raw[0], np.rint(raw[1]).astype(np.int64), region)
    raise ValueError(f'{path}: label maps are .npz (ours) or .pt (official TokenLabeling)')


def label_map_path(label_dir, rel_path):
    """Where our label map of the image at list path `rel_path` lives."""
    return os.path.join(label_dir, os.path.splitext(rel_path)[0] + '.npz')


# ----------------------------------------------------------------------------- label-aware transforms

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


# where the label map of the image at list path <stem>.<ext> lives under the label folder
_LAYOUTS = (
    ('ours: <list path>.npz', lambda stem: stem + '.npz'),
    ('official: <class folder>/<stem>.pt', lambda stem: '/'.join(stem.split('/')[-2:]) + '.pt'),
)


def _summary(problems, what, limit=10):
    more = f'\n  ... and {len(problems) - limit} more' if len(problems) > limit else ''
    return f'{len(problems)} {what}:\n  ' + '\n  '.join(problems[:limit]) + more


class TokenLabelDataset(dset.ImageListDataset):
    """The list dataset of the training images with their label maps:
    `dataset[i]` -> (CHW float32 image, (label, {'scores', 'indices', 'box'})).

    Label maps are looked up as `<label_dir>/<list path without extension>.npz`
    (ours), or in the official layout `<label_dir>/<class folder>/<stem>.pt`; the
    layout is found from the first sample, and every sample's map is checked to
    exist at construction (one directory listing per folder).  An unreadable map
    is a BadImageError: DATA.SKIP_BAD_IMAGES skips its sample like a bad image.
    """

    def __init__(self, root, list_file, num_classes, label_dir, transform, label_region='center_square',
                 skip_bad_images=False):
        if label_region not in LABEL_REGIONS:
            raise ValueError(f'TRAIN.TOKEN_LABEL.LABEL_REGION {label_region!r}: expected one of {LABEL_REGIONS}')
        if not os.path.isdir(label_dir):
            raise dset.DataError(f'token-label folder not found: {label_dir} (TRAIN.TOKEN_LABEL.DATA_DIR); '
                                 f'make it with tools/generate_label.py')
        super().__init__(root, list_file, num_classes, transform, skip_bad_images=skip_bad_images)
        self.label_dir = label_dir
        self.label_region = label_region
        self._layout = self._check_label_maps()

    def _stem(self, index):
        path, prefix = self.path(index), os.path.join(self.root, '')
        rel = path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, self.root)
        return os.path.splitext(rel)[0].replace(os.sep, '/')

    def _check_label_maps(self):
        first = self._stem(0)
        layout = next((i for i, (_, name) in enumerate(_LAYOUTS)
                       if os.path.isfile(os.path.join(self.label_dir, name(first)))), None)
        if layout is None:
            raise dset.DataError(f'no label map for {first} under {self.label_dir} (looked for '
                                 + ', '.join(name(first) for _, name in _LAYOUTS)
                                 + '): make them with tools/generate_label.py')
        name = _LAYOUTS[layout][1]
        listings, missing = {}, []
        for i in range(len(self)):
            path = os.path.join(self.label_dir, name(self._stem(i)))
            folder = os.path.dirname(path)
            if folder not in listings:
                listings[folder] = set(os.listdir(folder)) if os.path.isdir(folder) else set()
            if os.path.basename(path) not in listings[folder]:
                missing.append(f'{self.where(i)}: {path}')
        if missing:
            raise dset.DataError(_summary(missing, f'training image(s) without a label map in {self.label_dir} '
                                          f'(layout {_LAYOUTS[layout][0]})'))
        return layout

    def label_map_path(self, index):
        return os.path.join(self.label_dir, _LAYOUTS[self._layout][1](self._stem(index)))

    def load(self, index):
        image = super().load(index)
        path = self.label_map_path(index)
        try:
            label_map = load_label_map(path, (image.shape[1], image.shape[0]), self.label_region)
        except (OSError, ValueError, KeyError) as e:
            raise dset.BadImageError(f'{self.where(index)}: cannot read label map {path}: {e}') from None
        return ImageWithLabelMap(image, label_map)

    def __getitem__(self, key):
        (image, label_map), label = super().__getitem__(key)
        return image, (label, label_map)


def build_token_label_dataset(config, label_dir, label_region='center_square'):
    """The TokenLabelDataset of DATA.TRAIN_LIST under DATA.DATA_PATH, TRAIN.* augmentation."""
    root = config.DATA.DATA_PATH
    if not root:
        raise dset.DataError('DATA.DATA_PATH is not set: pass -data_path')
    from .data import data_layout
    if data_layout(config) == 'folder':
        raise dset.DataError(f'{root}: Token Labeling reads list files (tools/generate_label.py keys the '
                             f'label maps by list path), and this data is class folders: write the lists '
                             f'with python tools/make_lists.py {root} (the same samples and labels)')
    return TokenLabelDataset(root, os.path.join(root, config.DATA.TRAIN_LIST), config.MODEL.NUM_CLASSES,
                             label_dir, TokenLabelTransform.from_config(config), label_region,
                             skip_bad_images=config.DATA.SKIP_BAD_IMAGES)


# ----------------------------------------------------------------------------- targets (device side)

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


# ----------------------------------------------------------------------------- MixToken

class MixToken:
    """CutMix in token space: a random box of the patch grid of image i is replaced by
    the same box of image B-1-i (the batch flipped), after the patch embedding.

    Box sampling is the official one (lam ~ Beta(beta, beta), a box of side
    sqrt(1 - lam) of the grid around a uniform centre, clipped at the borders).
    Mixing is its own inverse: `mix` pastes the box and `unmix_tokens` (the same
    operation on a [B, N, K] token sequence) puts mixed predictions back.
    """

    def __init__(self, beta=1.0):
        self.beta = beta

    def sample(self, grid):
        """A TokenBox of an (H, W) grid, drawn from numpy's global generator (which the
        trainer reseeds before each step from SEED, rank, epoch and step), in the official
        order of draws."""
        h, w = int(grid[0]), int(grid[1])
        lam = np.random.beta(self.beta, self.beta)
        cut = math.sqrt(1. - lam)
        cut_h, cut_w = int(h * cut), int(w * cut)
        cy, cx = np.random.randint(h), np.random.randint(w)
        return TokenBox(int(np.clip(cy - cut_h // 2, 0, h)), int(np.clip(cx - cut_w // 2, 0, w)),
                        int(np.clip(cy + cut_h // 2, 0, h)), int(np.clip(cx + cut_w // 2, 0, w)))

    @staticmethod
    def mask(grid, box):
        """[H, W] float32: 1 inside the box."""
        m = np.zeros((int(grid[0]), int(grid[1])), dtype=np.float32)
        m[box.top:box.bottom, box.left:box.right] = 1.
        return m

    @staticmethod
    def mix(x, box):
        """x [B, C, H, W]: inside `box`, each image's values become those of the flipped batch."""
        if box is None or box.area() == 0:
            return x
        m = paddle.to_tensor(MixToken.mask(x.shape[2:], box), dtype=x.dtype)
        return x * (1. - m) + x.flip([0]) * m

    @staticmethod
    def unmix_tokens(tokens, grid, box):
        """tokens [B, N, K] in row-major grid order: the same swap, on a token sequence."""
        if box is None or box.area() == 0:
            return tokens
        m = paddle.to_tensor(MixToken.mask(grid, box).reshape(1, -1, 1), dtype=tokens.dtype)
        return tokens * (1. - m) + tokens.flip([0]) * m

    mix_tokens = unmix_tokens   # per-token targets of the mixed batch: the label maps cut the same way

    @staticmethod
    def lam(box, num_tokens):
        """Share of each mixed image's tokens that are its own."""
        return 1.0 if box is None else 1.0 - box.area() / num_tokens


# ----------------------------------------------------------------------------- batch mixing of targets

class TokenLabelMixup:
    """Builds the soft targets of a batch and, when Mixup / CutMix are on, mixes it.

    Called as `(images, targets) -> (images, TokenLabelTargets)` by the training
    loop.  `targets` is either an int label tensor (no label-map files: the class
    target is used at every token) or `[labels, {'scores', 'indices', 'box'}]` from
    `TokenLabelDataset`.  Mixup / CutMix are the shared `engine.data.Mixup` draws in
    'batch' mode, as the official TokenLabelMixup: the flipped batch is blended or
    pasted and every target, class and tokens alike, mixed by the same lam.  (The
    official recipes leave them off; MixToken, inside the model, is the mixing.)
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
        lam, use_cutmix = self.mixup.draw(1)
        lam, use_cutmix = float(lam[0]), bool(use_cutmix[0])
        if lam == 1.0:
            return images, t
        flipped = images.flip([0])
        if use_cutmix:
            (y0, y1, x0, x1), lam = self.mixup.boxes(images.shape[-2], images.shape[-1], np.array([lam]))
            y0, y1, x0, x1, lam = int(y0[0]), int(y1[0]), int(x0[0]), int(x1[0]), float(lam[0])
            images = images.clone()
            if y1 > y0 and x1 > x0:
                images[:, :, y0:y1, x0:x1] = flipped[:, :, y0:y1, x0:x1]
        else:
            images = images * lam + flipped * (1. - lam)
        cls = t.cls * lam + t.cls.flip([0]) * (1. - lam)
        dense = None if t.dense is None else t.dense * lam + t.dense.flip([0]) * (1. - lam)
        return images, TokenLabelTargets(cls, dense)


# ----------------------------------------------------------------------------- loss

def soft_cross_entropy(logits, target):
    """Mean over rows of -sum(target * log_softmax(logits)) (last axis = classes)."""
    return paddle.sum(-target * F.log_softmax(logits.astype('float32'), axis=-1), axis=-1).mean()


class TokenLabelCrossEntropy:
    """The token-labeling loss (official `TokenLabelCrossEntropy`):

        cls_weight * softCE(cls_logits, cls target mixed by the MixToken lam)
      + dense_weight * mean over B*N tokens of softCE(token logits, token targets)

    The model has already moved its MixToken-mixed token predictions back to
    their source images, so token targets need no mixing; the class target of
    image i becomes lam * t_i + (1 - lam) * t_(B-1-i), lam = 1 - box area / N.
    """

    def __init__(self, dense_weight=1.0, cls_weight=1.0):
        if dense_weight + cls_weight <= 0:
            raise ValueError('dense_weight + cls_weight must be positive')
        self.dense_weight, self.cls_weight = dense_weight, cls_weight

    @staticmethod
    def class_target(cls_target, box, num_tokens):
        """The class target of the MixToken-mixed images: lam * own + (1 - lam) * partner's."""
        lam = MixToken.lam(box, num_tokens)
        if lam >= 1:
            return cls_target
        return lam * cls_target + (1. - lam) * cls_target.flip([0])

    def __call__(self, outputs, targets):
        if not isinstance(outputs, DenseOutput):
            raise TypeError('the token-labeling loss needs the model\'s DenseOutput '
                            '(is TRAIN.TOKEN_LABEL.ENABLE set for the model too?)')
        if not isinstance(targets, TokenLabelTargets):
            raise TypeError('the token-labeling loss needs TokenLabelTargets (from TokenLabelMixup)')
        B, N, C = outputs.aux_logits.shape
        cls_target = self.class_target(targets.cls, outputs.box, N)
        dense_target = targets.dense
        if dense_target is None:
            dense_target = targets.cls.unsqueeze(1).expand([B, N, C])
        elif dense_target.shape[1] != N:
            raise ValueError(f'token targets have {dense_target.shape[1]} tokens, the model {N}: the '
                             f'label size must be the side of the patch grid')
        loss_cls = soft_cross_entropy(outputs.cls_logits, cls_target)
        loss_dense = soft_cross_entropy(outputs.aux_logits.reshape([B * N, C]), dense_target.reshape([B * N, C]))
        return self.cls_weight * loss_cls + self.dense_weight * loss_dense
