"""The label-map files of Token Labeling: one teacher prediction per grid cell of a training image.

One `.npz` per training image, beside its relative path:
`<label_dir>/<path/of/image>.npz` holding `scores` float16 [k, H, W] (the
teacher's top-k logits at every position of an H x W grid), `indices` int16/
int32 [k, H, W] (their classes) and `region` float32 [4]: (top, left, height,
width) of the part of the image the grid covers, as fractions of the image.
`tools/generate_label.py` writes them.  The official TokenLabeling `.pt` files
([2, k, H, W] half tensors: values, then indices, named
`<label_dir>/<class folder>/<stem>.pt`) are read too, through the engine's
torch-free reader; they carry no region, see `LABEL_REGIONS`.
"""
import os
from dataclasses import dataclass

import numpy as np

from ..torch_reader import load_torch

__all__ = ['LabelMap', 'LABEL_REGIONS', 'save_label_map', 'load_label_map', 'label_map_path']


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
        raw = np.asarray(load_torch(path), dtype=np.float32)
        if raw.ndim != 4 or raw.shape[0] != 2:
            raise ValueError(f'{path}: expected an official [2, k, H, W] label map, got {raw.shape}')
        region = _region_for(default_region, image_size) if image_size is not None else (0.0, 0.0, 1.0, 1.0)
        return LabelMap(raw[0], np.rint(raw[1]).astype(np.int64), region)
    raise ValueError(f'{path}: label maps are .npz (ours) or .pt (official TokenLabeling)')


def label_map_path(label_dir, rel_path):
    """Where our label map of the image at list path `rel_path` lives."""
    return os.path.join(label_dir, os.path.splitext(rel_path)[0] + '.npz')
