"""ADE20K (SceneParsing, ADEChallengeData2016) in its official folder layout:

    <DATA_PATH>/images/training/*.jpg        <DATA_PATH>/annotations/training/*.png
    <DATA_PATH>/images/validation/*.jpg      <DATA_PATH>/annotations/validation/*.png

An image and its annotation share the file stem.  Annotations hold 0 (other /
unlabelled) and the classes 1..150; with `reduce_zero_label` (the recipe), 0
becomes the ignored 255 and class k becomes k - 1, so the model predicts 150
classes.  The synthetic demo set (make_synthetic_dataset.py) has the same layout.
"""
import os

import cv2
import numpy as np
import paddle

from engine.data.decode import decode_image
from engine.errors import UserError

SPLITS = {'train': 'training', 'val': 'validation'}
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')


class DatasetError(UserError, FileNotFoundError):
    """A dataset folder that does not have the ADE20K layout, or an unreadable file in it."""


def reduce_zero_label(label):
    """0 -> 255 (ignored), k -> k - 1 (MMSegmentation's LoadAnnotations(reduce_zero_label=True))."""
    label = label.astype(np.int64) - 1
    label[label < 0] = 255
    label[label == 254] = 255
    return label.astype(np.uint8)


def read_label(path):
    label = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if label is None or label.ndim != 2:
        raise DatasetError(f'{path}: not a single-channel label image')
    return label


class ADE20K(paddle.io.Dataset):
    """(image, label) pairs of one split; `transform(image, label)` makes the sample."""

    def __init__(self, root, split, transform, reduce_zero=True):
        self.image_dir = os.path.join(root, 'images', SPLITS[split])
        self.label_dir = os.path.join(root, 'annotations', SPLITS[split])
        for folder in (self.image_dir, self.label_dir):
            if not os.path.isdir(folder):
                raise DatasetError(f'DATA.DATA_PATH {root}: {folder} does not exist; expected the ADE20K layout '
                                   f'images/{{training,validation}}/ and annotations/{{training,validation}}/')
        stems = sorted(os.path.splitext(n)[0] for n in os.listdir(self.image_dir)
                       if n.lower().endswith(IMAGE_EXTENSIONS))
        names = {os.path.splitext(n)[0]: n for n in os.listdir(self.image_dir)}
        missing = [s for s in stems if not os.path.isfile(os.path.join(self.label_dir, s + '.png'))]
        if missing or not stems:
            raise DatasetError(f'{self.image_dir}: {len(stems)} images, {len(missing)} without an annotation '
                               f'{self.label_dir}/<stem>.png (e.g. {missing[:3]})' if stems
                               else f'{self.image_dir} holds no image')
        self.items = [(os.path.join(self.image_dir, names[s]), os.path.join(self.label_dir, s + '.png'))
                      for s in stems]
        self.transform = transform
        self.reduce_zero = reduce_zero

    def __len__(self):
        return len(self.items)

    def load(self, index):
        """The raw (RGB uint8 image, uint8 label map) of item `index`, zero label reduced when set."""
        image_path, label_path = self.items[index]
        with open(image_path, 'rb') as f:
            image = decode_image(f.read())
        label = read_label(label_path)
        if label.shape != image.shape[:2]:
            raise DatasetError(f'{label_path}: label {label.shape} and image {image.shape[:2]} differ in size')
        return image, (reduce_zero_label(label) if self.reduce_zero else label)

    def __getitem__(self, index):
        return self.transform(*self.load(index))
