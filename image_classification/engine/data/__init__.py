"""The shared data pipeline: list datasets, DeiT transforms, loaders, Mixup / CutMix.

    dataset = build_dataset(config, 'train')                      # or 'val'
    loader = build_dataloader(config, dataset, 'train', distributed)
    loader.batch_sampler.set_epoch(epoch)                         # before each epoch
    mix = build_mixup(config)                                     # None when off
    for images, labels in loader:
        images, targets = mix(images, labels) if mix else (images, labels)
    print(skipped_report(dataset))                                # per epoch, with SKIP_BAD_IMAGES

Modules: `dataset` (list parsing, ImageListDataset, errors), `decode` (bytes ->
RGB array), `transforms` (train / eval pipelines), `autoaugment` (RandAugment,
AutoAugment), `mixup`, `loader` (samplers, DataLoader), `baseline` (the
PaddleViT-style PIL pipeline, for speed comparison and as the reference of the
tests), `benchmark` (loader img/s).

Importing this package sets OpenCV to one thread in this process (see
`decode`): the loader workers are the parallelism, and an OpenCV thread pool
started in the parent deadlocks the forked workers that inherit it.
"""
import os

from .dataset import (BadImageError, DataError, ImageListDataset, ListFileError, MissingImageError,
                      parse_list_file, skipped_report)
from .decode import DecodeError, decode_image
from .loader import EvalBatchSampler, SeededBatchSampler, build_dataloader, collate_skipping, shared_memory_ok
from .mixup import Mixup, build_mixup, smooth_one_hot
from .transforms import (EvalTransform, TrainTransform, build_transform, describe_eval_transform,
                         eval_resize_size)
from .benchmark import benchmark_baseline_loader, benchmark_loader

__all__ = ['build_dataset', 'build_dataloader', 'build_mixup', 'build_transform',
           'describe_eval_transform', 'skipped_report', 'benchmark_loader', 'benchmark_baseline_loader',
           'ImageListDataset', 'parse_list_file', 'decode_image', 'Mixup', 'smooth_one_hot',
           'TrainTransform', 'EvalTransform', 'eval_resize_size', 'SeededBatchSampler',
           'EvalBatchSampler', 'shared_memory_ok', 'DataError', 'ListFileError', 'MissingImageError',
           'BadImageError', 'DecodeError']


def build_dataset(config, mode):
    """The ImageListDataset of DATA.TRAIN_LIST ('train') or DATA.VAL_LIST ('val') under DATA.DATA_PATH,
    with the train or eval transform of the config.  Under DATA.SKIP_BAD_IMAGES an unreadable
    image is replaced by the next sample for training and left out of evaluation."""
    if mode not in ('train', 'val'):
        raise ValueError(f"mode must be 'train' or 'val', got {mode!r}")
    root = config.DATA.DATA_PATH
    if not root:
        raise DataError('DATA.DATA_PATH is not set: pass -data_path (the folder holding '
                        f'{config.DATA.TRAIN_LIST} / {config.DATA.VAL_LIST})')
    list_file = os.path.join(root, config.DATA.TRAIN_LIST if mode == 'train' else config.DATA.VAL_LIST)
    return ImageListDataset(root, list_file, config.MODEL.NUM_CLASSES, build_transform(config, mode),
                            skip_bad_images=config.DATA.SKIP_BAD_IMAGES,
                            max_image_pixels=config.DATA.MAX_IMAGE_PIXELS,
                            drop_skipped=mode == 'val')   # evaluation scores only what it could read
