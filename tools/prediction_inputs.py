"""What `tools/predict.py` classifies: image files, folders and list files, as engine datasets.

Each input on the command line is
- a folder: every image below it (recursively; files ending in one of
  `engine.data.IMAGE_EXTENSIONS`, any case; hidden entries left out), in sorted order;
- a list file (any file whose name does not end in an image extension): one
  `path [label]` per line, paths relative to the list's folder (absolute ones as
  they are).  A list in which any line ends in an integer is a labelled list,
  read by the engine's list parser (`engine.data.parse_list_file`: every line
  `path label`, labels in [0, MODEL.NUM_CLASSES)), so a wrong line is an error
  naming the file and line; otherwise every line is a path;
- an image file: the image files given one after another form one input.

Every input is an `engine.data.ImageListDataset` that skips unreadable images
as the engine's evaluation does with DATA.SKIP_BAD_IMAGES (`drop_skipped`): a
missing or undecodable image is logged on one line naming its file and counted
(`num_missing`, `take_skipped()`), and never scored in place of another.
"""
import os

from engine.data import ImageListDataset, parse_list_file
from engine.data.image_folder import IMAGE_EXTENSIONS, _walk_images
from engine.errors import UserError

__all__ = ['NO_LABEL', 'PathsDataset', 'input_datasets', 'read_list']

NO_LABEL = -1      # the label of an image that has none


class PathsDataset(ImageListDataset):
    """An `ImageListDataset` of given samples [(path, label, position)] instead of a list file's:
    `source` names where they came from in messages (`source:position`)."""

    def __init__(self, source, samples, transform, max_image_pixels):
        self._given = samples
        super().__init__('', source, num_classes=None, transform=transform, skip_bad_images=True,
                         drop_skipped=True, max_image_pixels=max_image_pixels)

    def _read_samples(self, list_file, num_classes):
        return self._given


def read_list(path, num_classes):
    """[(path, label, line)] of a list file; label NO_LABEL in a list of paths only."""
    try:
        with open(path, encoding='utf-8-sig') as f:
            lines = [(number, line.strip()) for number, line in enumerate(f, 1)]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f'{path}: cannot read the list file ({e})') from None
    lines = [(number, text) for number, text in lines if text]
    if any(len(text.split()) > 1 and text.split()[-1].lstrip('-').isdigit() for _, text in lines):
        return parse_list_file(path, num_classes)
    if not lines:
        raise UserError(f'{path}: no image listed (the file is empty)')
    return [(text, NO_LABEL, number) for number, text in lines]


def input_datasets(inputs, config, transform):
    """One dataset per folder or list file of `inputs`, one for each run of image files; the
    config gives MODEL.NUM_CLASSES (a labelled list's range) and DATA.MAX_IMAGE_PIXELS."""
    num_classes, max_pixels = config.MODEL.NUM_CLASSES, config.DATA.MAX_IMAGE_PIXELS
    datasets, images = [], []

    def flush():
        if images:
            datasets.append(PathsDataset('image arguments', list(images), transform, max_pixels))
            images.clear()

    for position, path in enumerate(inputs, 1):
        if os.path.isdir(path):
            flush()
            found, _ = _walk_images(path, path)
            if not found:
                raise UserError(f'{path}: no image in this folder (images end in {" ".join(IMAGE_EXTENSIONS)})')
            samples = [(os.path.join(path, rel), NO_LABEL, n) for n, rel in enumerate(found, 1)]
            datasets.append(PathsDataset(path, samples, transform, max_pixels))
        elif path.lower().endswith(IMAGE_EXTENSIONS):
            images.append((path, NO_LABEL, position))
        elif os.path.isfile(path):
            flush()
            samples = read_list(path, num_classes)
            datasets.append(PathsDataset(path, [(os.path.join(os.path.dirname(path), p), label, line)
                                                for p, label, line in samples], transform, max_pixels))
        else:
            raise UserError(f'{path}: no such image, folder or list file')
    flush()
    return datasets
