"""Loader throughput (img/s): the engine's pipeline and the PaddleViT-style PIL baseline.

Both read DATA.DATA_PATH / the list of `mode`, with DATA.BATCH_SIZE (train) or
BATCH_SIZE_EVAL (val) and DATA.NUM_WORKERS workers, in one process.  The first
two batches (worker start-up) are not timed.
"""
import gc
import os
import time

import paddle

__all__ = ['benchmark_loader', 'benchmark_baseline_loader', 'time_loader']


def time_loader(loader, num_batches, untimed=2):
    """Images per second over `num_batches` batches after `untimed` ones (re-iterating if needed)."""
    it = iter(loader)
    count, start = 0, None
    for i in range(num_batches + untimed):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        if i == untimed - 1:
            start = time.perf_counter()
        elif i >= untimed:
            count += batch[0].shape[0]
    if start is None:   # untimed == 0
        raise ValueError('untimed must be >= 1')
    rate = count / (time.perf_counter() - start)
    # Stop the workers before the caller may delete the images they are still prefetching.
    del it
    if hasattr(loader, 'shutdown'):
        loader.shutdown()
    gc.collect()
    return rate


def benchmark_loader(config, mode='train', num_batches=30):
    """img/s of build_dataset + build_dataloader (this engine) for `mode`."""
    from . import build_dataloader, build_dataset
    dataset = build_dataset(config, mode)
    loader = build_dataloader(config, dataset, mode, distributed=False)
    return time_loader(loader, num_batches)


def benchmark_baseline_loader(config, mode='train', num_batches=30):
    """img/s of the same list read as PaddleViT does: PIL decode, PIL RandAugment,
    paddle.vision.transforms, paddle.io.DataLoader (shared memory when /dev/shm has room)."""
    from .baseline import PaddleViTListDataset, paddlevit_transform
    from .loader import shared_memory_ok
    data = config.DATA
    list_file = os.path.join(data.DATA_PATH, data.TRAIN_LIST if mode == 'train' else data.VAL_LIST)
    dataset = PaddleViTListDataset(data.DATA_PATH, list_file, config.MODEL.NUM_CLASSES,
                                   paddlevit_transform(config, mode))
    batch_size = data.BATCH_SIZE if mode == 'train' else (data.BATCH_SIZE_EVAL or data.BATCH_SIZE)
    sampler = paddle.io.DistributedBatchSampler(dataset, batch_size, num_replicas=1, rank=0,
                                                shuffle=mode == 'train', drop_last=mode == 'train')
    ok = shared_memory_ok(batch_size * 3 * data.IMAGE_SIZE ** 2 * 4, data.NUM_WORKERS)[0]
    loader = paddle.io.DataLoader(dataset, batch_sampler=sampler, num_workers=data.NUM_WORKERS,
                                  use_shared_memory=ok)
    return time_loader(loader, num_batches)
