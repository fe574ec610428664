"""The shared data pipeline: list datasets, DeiT transforms, loaders, Mixup / CutMix.

    dataset = build_dataset(config, 'train')                      # or 'val'
    loader = build_dataloader(config, dataset, 'train', distributed)
    loader.batch_sampler.set_epoch(epoch)                         # before each epoch
    mix = build_mixup(config)                                     # None when off
    for images, labels in loader:
        images, targets = mix(images, labels) if mix else (images, labels)
    print(skipped_report(dataset))                                # per epoch, with SKIP_BAD_IMAGES

Modules: `dataset` (list parsing, ImageListDataset, errors), `image_folder`
(torchvision's train/<class>/ val/<class>/ layout, read without lists), `decode` (bytes ->
RGB array), `transforms` (train / eval pipelines), `autoaugment` (RandAugment,
AutoAugment), `mixup`, `loader` (samplers, DataLoader).  The loader's speed benchmark and the
PaddleViT-style PIL pipeline it compares against live in `tools/benchmarking/`.

Importing this package sets OpenCV to one thread in this process (see
`decode`): the loader workers are the parallelism, and an OpenCV thread pool
started in the parent deadlocks the forked workers that inherit it.
"""
import logging
import os

from .dataset import (BadImageError, DataError, ImageListDataset, ListFileError, MissingImageError,
                      parse_list_file, skipped_report)
from .decode import DecodeError, decode_image
from .loader import EvalBatchSampler, SeededBatchSampler, build_dataloader, shared_memory_ok
from .mixup import Mixup, build_mixup, smooth_one_hot
from .transforms import (EvalTransform, TrainTransform, build_transform, describe_eval_transform,
                         eval_resize_size)
from .image_folder import ImageFolderDataset, has_class_folders, scan_split, write_labels

logger = logging.getLogger(__name__)

__all__ = ['build_dataset', 'data_layout', 'build_dataloader', 'build_mixup', 'build_transform',
           'describe_eval_transform', 'skipped_report',
           'ImageListDataset', 'parse_list_file', 'decode_image', 'Mixup', 'smooth_one_hot',
           'TrainTransform', 'EvalTransform', 'eval_resize_size', 'SeededBatchSampler',
           'EvalBatchSampler', 'shared_memory_ok', 'DataError', 'ListFileError', 'MissingImageError',
           'BadImageError', 'DecodeError', 'ImageFolderDataset', 'scan_split', 'write_labels']


def data_layout(config, log=None):
    """How DATA.DATA_PATH is read: 'list' (PaddleViT's train_list.txt / val_list.txt) or
    'folder' (torchvision's train/<class>/, val/<class>/), by DATA.DATASET:

    - 'imagelist': the list files; 'imagefolder': the class folders;
    - 'imagenet2012' (PaddleViT's name, the default): the list files when DATA_PATH
      holds either of them (then they win over class folders also present: they
      may order or select the samples on purpose; logged), else the class folders.

    One layout serves both splits: mixing a list's labels with folder-order labels
    would pair images with the wrong classes.
    """
    root = config.DATA.DATA_PATH
    if not root:
        raise DataError('DATA.DATA_PATH is not set: pass -data_path (the folder holding '
                        f'{config.DATA.TRAIN_LIST} / {config.DATA.VAL_LIST}, or train/ and val/ class folders)')
    if not os.path.isdir(root):
        raise DataError(f'DATA.DATA_PATH {root!r} is not a folder (-data_path)')
    choice = config.DATA.DATASET
    if choice == 'imagelist':
        return 'list'
    if choice == 'imagefolder':
        return 'folder'
    lists = [name for name in (config.DATA.TRAIN_LIST, config.DATA.VAL_LIST)
             if os.path.isfile(os.path.join(root, name))]
    if lists:
        if has_class_folders(root) and log is not None:
            log(f'{root} holds list files ({", ".join(lists)}) and class folders: reading the list '
                f'files (-dataset imagefolder reads the folders)')
        return 'list'
    if has_class_folders(root):
        return 'folder'
    raise DataError(f'{root}: no dataset found: expected the list files {config.DATA.TRAIN_LIST} and '
                    f'{config.DATA.VAL_LIST} (PaddleViT layout) or the class folders train/<class>/ and '
                    f'val/<class>/ (ImageFolder layout)')


def build_dataset(config, mode, log=None):
    """The dataset of split `mode` ('train' | 'val') under DATA.DATA_PATH, with the train or
    eval transform of the config (under DATA.SKIP_BAD_IMAGES an unreadable image is replaced by
    the next sample for training and left out of evaluation): an ImageListDataset of DATA.TRAIN_LIST / DATA.VAL_LIST, or
    an ImageFolderDataset of the class folders (see `data_layout`).  `log(line)` receives
    what was read (class-folder counts, skipped files, warnings); default: this module's logger."""
    if mode not in ('train', 'val'):
        raise ValueError(f"mode must be 'train' or 'val', got {mode!r}")
    log = log or logger.info
    root = config.DATA.DATA_PATH
    transform = build_transform(config, mode)
    options = dict(skip_bad_images=config.DATA.SKIP_BAD_IMAGES, max_image_pixels=config.DATA.MAX_IMAGE_PIXELS,
                   drop_skipped=mode == 'val')   # evaluation scores only what it could read
    if data_layout(config, log) == 'list':
        list_file = os.path.join(root, config.DATA.TRAIN_LIST if mode == 'train' else config.DATA.VAL_LIST)
        return ImageListDataset(root, list_file, config.MODEL.NUM_CLASSES, transform, **options)
    split = scan_split(root, mode)
    log(split.describe())
    for warning in split.warnings():
        log(f'WARNING: {warning}')
    dataset = ImageFolderDataset(split, config.MODEL.NUM_CLASSES, transform, **options)
    if len(split.classes) < config.MODEL.NUM_CLASSES:
        log(f'WARNING: {len(split.classes)} class folders in {os.path.join(root, split.class_source)} '
            f'but MODEL.NUM_CLASSES is {config.MODEL.NUM_CLASSES}: the classifier has outputs no '
            f'image is labelled with (-num_classes {len(split.classes)} if that is not intended)')
    return dataset
