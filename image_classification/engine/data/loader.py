"""Samplers and `build_dataloader`: who reads which sample, in how many processes, seeded how.

Train: `paddle.io.DistributedBatchSampler` (one replica in a single process),
shuffled with a seed made of (SEED, epoch), `drop_last=True` so every step sees
a full batch (Mixup mixes image i with image B-1-i; a short last batch would
also skew BatchNorm and the LR schedule's step count).  With DATA.REPEATED_AUG
R > 1: DeiT's repeated-augmentation sampler instead (`samplers.RepeatedAugSampler`:
R copies of each sampled image spread over the ranks, DeiT's epoch length), also
with `drop_last`.

Val: `EvalBatchSampler` gives rank r the indices r, r + world, r + 2 world, ...
with no padding and no drop: each image is evaluated exactly once over all
ranks.  Ranks may get one batch more or less than each other, so evaluation
must sum its counts and all-reduce once at the end (engine.trainer.evaluate
does), never per step.

Randomness: for datasets that accept it (ImageListDataset), the batch sampler
yields `(index, seed)` pairs with seed = (SEED, epoch, index), or (SEED, epoch,
index, copy number) under repeated augmentation: the augmentation of a sample
depends on nothing else, not on the worker that loads it, the number of workers
or processes, or what ran before, so a run resumed at an epoch boundary sees the
same images.  `set_epoch(epoch)` on the loader's batch sampler selects the epoch
(the launcher calls it); without it each pass over the loader advances the epoch
by one.  Worker processes are also seeded (numpy / random) from (SEED, rank,
worker id, the loader's per pass seed) for datasets that draw from the global
generators.  Paddle draws that per pass seed from numpy's global generator in
this process when it starts the workers (in the first epoch of a run, so in
another epoch after a resume); the training step therefore reseeds the global
generators itself before each step (`engine.seeding`, called by the trainer).

Shared memory: Paddle's workers hand batches over in /dev/shm.  When it is too
small for the batches in flight (Docker's default is 64 MB), the loader would
die with a bus error; `build_dataloader` checks the free space first and falls
back to pipes (`use_shared_memory=False`, slower) with a warning.

Paddle's loader needs four repairs, made by `DataLoader` and the worker
initialisation here (each one seen on this machine with Paddle 3.3):
- with 0 workers, Paddle loads batches in a reader thread that feeds a blocking
  queue; an exception there (a bad image, a transform error, a MemoryError)
  kills the thread without closing or killing the queue, so the main thread
  waits for the next batch forever.  The thread here hands its exception over
  and kills the queue, and the main thread raises that exception;
- a worker's exception reaches the main thread only as "SystemError: Blocking
  queue is killed"; the worker's exception is raised instead: a `UserError`
  (e.g. BadImageError) with the dataset's own message (file, line), anything
  else (a bug, a MemoryError) as its type with the worker's traceback;
- a failed iterator left to the garbage collector hangs the process in its
  clean-up, and an old iterator collected inside a newly forked worker wrecks
  the parent's queues: failed iterators are shut down at once, and garbage is
  collected (and the rest frozen) before workers are forked;
- workers block on their index queue without a timeout, so they outlive a
  killed parent for good; a watchdog thread ends them.

Skipped samples: a dataset returns None for a sample it skips (ImageListDataset
in evaluation, with DATA.SKIP_BAD_IMAGES); the val loader's collate function
leaves it out of its batch, so a batch may be smaller than the batch size, and
a batch of skipped samples only is not yielded at all.  Nothing is put in the
skipped sample's place: evaluation scores the images it could read, no other.
"""
import functools
import gc
import logging
import math
import os
import random
import shutil
import threading
import time

import numpy as np
import paddle
from paddle.io.dataloader.collate import default_collate_fn
from paddle.io.dataloader.dataloader_iter import _DataLoaderIterMultiProcess, _DataLoaderIterSingleProcess

from ..config import ConfigError
from ..errors import UserError
from .samplers import RepeatedAugSampler

__all__ = ['DataLoader', 'SeededBatchSampler', 'EvalBatchSampler', 'build_dataloader', 'shared_memory_ok',
           'collate_skipping']

logger = logging.getLogger(__name__)


class DataLoader(paddle.io.DataLoader):
    """paddle.io.DataLoader whose failures end the iteration at once, with the real exception.

    Any exception raised while loading a batch, in this process (0 workers) or in a
    worker, is raised by `next()` in the main thread, and the loader's thread and
    workers are stopped first (see the module docstring for what Paddle does
    instead).  A `UserError` from a worker is raised with the dataset's own message
    when the dataset keeps it (`take_error()`, ImageListDataset): Paddle would
    rebuild it with the worker's traceback pasted into the message.
    """

    def __iter__(self):
        if self.num_workers > 0 and getattr(self, '_iterator', None) is None:
            # Paddle forks the workers here.  Collect garbage first and freeze what is left
            # for the children: an old loader iterator collected inside a forked worker runs
            # its clean-up there, on the parent's queues and processes (seen: workers hung
            # or aborted with std::system_error).
            gc.collect()
            gc.freeze()
            try:
                iterator = self._paddle_iterator()
            finally:
                gc.unfreeze()
        else:
            iterator = self._paddle_iterator()
        return _ReraisingIterator(iterator, self)

    def _paddle_iterator(self):
        """What paddle.io.DataLoader.__iter__ returns, built from the subclasses below."""
        if self.num_workers == 0:
            return _SingleProcessIterator(self)
        if not self._persistent_workers:
            return _MultiProcessIterator(self)
        if self._iterator is None:
            self._iterator = _MultiProcessIterator(self)
        else:
            self._iterator._reset()
        return self._iterator

    def shutdown(self, timeout=5):
        """Stop the worker processes now (persistent ones included); the next pass restarts them."""
        iterator, self._iterator = getattr(self, '_iterator', None), None
        if iterator is not None:
            _shutdown(iterator, timeout)


class _HandOverFailure:
    """Paddle's reader thread, made to hand its exception to the main thread.

    Paddle's `_thread_loop` runs in a daemon thread: with 0 workers it loads the
    batches itself, with workers it re-raises a worker's exception there.  An
    exception escaping it is only printed by `threading.excepthook`; with 0 workers
    the blocking queue is not even killed, so the main thread's read never returns.
    Here the exception is kept in `failure` and the queue killed, which wakes the
    main thread with "Blocking queue is killed"; `_ReraisingIterator` then raises
    `failure` in its place.
    """

    failure = None

    def _thread_loop(self, *args, **kwargs):
        try:
            super()._thread_loop(*args, **kwargs)
        except BaseException as e:   # noqa: B036  (a MemoryError or a SystemExit must not hang either)
            self.failure = e
            self._exit_thread_unexpectedly()


class _SingleProcessIterator(_HandOverFailure, _DataLoaderIterSingleProcess):
    pass


class _MultiProcessIterator(_HandOverFailure, _DataLoaderIterMultiProcess):
    pass


def _shutdown(iterator, timeout):
    """Stop a Paddle loader iterator's thread and workers, waiting at most about `timeout` s per worker."""
    if isinstance(iterator, _DataLoaderIterMultiProcess):
        iterator._try_shutdown_all(timeout)
    elif hasattr(iterator, '_try_shutdown_all'):
        iterator._try_shutdown_all()   # single process: closes the queue, joins the thread


# A batch of skipped samples only.  Paddle's loader cannot carry an empty batch (a batch
# without arrays ends the iteration, a zero-size array fails in shared memory), so it
# travels as this one-array dict, which _ReraisingIterator drops.
_NO_SAMPLES = '_engine_data_loader_all_samples_skipped'


def collate_skipping(samples):
    """Paddle's default collate over the samples that are not None (skipped ones are left out)."""
    kept = [s for s in samples if s is not None]
    if not kept:
        return {_NO_SAMPLES: np.zeros([1], dtype=np.uint8)}
    return default_collate_fn(kept)


def _no_samples(batch):
    return isinstance(batch, dict) and _NO_SAMPLES in batch


class _ReraisingIterator:
    def __init__(self, iterator, loader):
        self.iterator, self.loader = iterator, loader

    def __iter__(self):
        return self

    def __len__(self):
        return len(self.loader)

    def __next__(self):
        if self.iterator is None:
            raise RuntimeError('this pass over the loader failed and was shut down; '
                               'start a new one with iter(loader)')
        try:
            batch = next(self.iterator)
            while _no_samples(batch):
                batch = next(self.iterator)
            return batch
        except StopIteration:
            raise
        except BaseException as e:   # noqa: B036  (whatever it is, the loader must stop first)
            error = e
        # raised here, outside the except clause: the failure keeps its own cause and context
        # instead of growing a "during handling of SystemError: Blocking queue is killed"
        raise self._fail(error)

    def _fail(self, error):
        """Stop the thread and workers; return the exception that made the loader fail."""
        iterator, self.iterator = self.iterator, None
        thread = getattr(iterator, '_thread', None)
        # A failed Paddle iterator left to the garbage collector hangs in its clean-up
        # (it joins workers that never get the stop message): stop the workers here.
        _shutdown(iterator, 5)
        if getattr(self.loader, '_iterator', None) is iterator:
            self.loader._iterator = None
        if isinstance(error, KeyboardInterrupt):
            return error
        if thread is not None and thread is not threading.current_thread():
            # the thread kills the queue, which wakes us, just before it stores `failure`
            thread.join(5)
        failure = getattr(iterator, 'failure', None)
        take = getattr(self.loader.dataset, 'take_error', None)
        kept = take() if take is not None else None
        if isinstance(failure, UserError) and isinstance(kept, type(failure)) \
                and isinstance(iterator, _DataLoaderIterMultiProcess):
            return kept   # Paddle rebuilt the worker's error as type(message + worker traceback)
        return failure if failure is not None else error


class SeededBatchSampler(paddle.io.BatchSampler):
    """Wraps a batch sampler; yields batches of (index, (seed, epoch, index)) for seeded datasets.

    Under repeated augmentation an index comes several times per epoch; each copy gets
    the key (seed, epoch, index, k), k its occurrence number, so that the copies are
    augmented differently (the point of repeating them).
    """

    def __init__(self, batch_sampler, seed):
        self.batch_sampler = batch_sampler
        self.seed = int(seed) % 2 ** 63
        self.epoch = 0
        self.batch_size = batch_sampler.batch_size
        self.drop_last = getattr(batch_sampler, 'drop_last', False)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        if isinstance(self.batch_sampler, paddle.io.DistributedBatchSampler):
            # its shuffle (numpy RandomState) takes a 32-bit seed made of SEED and epoch
            self.batch_sampler.set_epoch((self.seed * 1_000_003 + epoch) % 2 ** 32)
        elif hasattr(self.batch_sampler, 'set_epoch'):
            self.batch_sampler.set_epoch(epoch)        # RepeatedAugSampler: seeded by (SEED, epoch) itself
        if hasattr(self.batch_sampler, 'batches_with_occurrence'):
            for batch in self.batch_sampler.batches_with_occurrence():
                yield [(i, (self.seed, epoch, i, k)) for i, k in batch]
        else:
            for batch in self.batch_sampler:
                yield [(int(i), (self.seed, epoch, int(i))) for i in batch]

    def __len__(self):
        return len(self.batch_sampler)


class EvalBatchSampler(paddle.io.BatchSampler):
    """Indices rank, rank + world, ... of range(num_samples) in batches; no padding, no drop."""

    def __init__(self, num_samples, batch_size, rank=0, world_size=1):
        if not 0 <= rank < world_size:
            raise ValueError(f'rank {rank} outside [0, {world_size})')
        self.indices = range(rank, num_samples, world_size)
        self.batch_size = batch_size
        self.drop_last = False

    def __iter__(self):
        for start in range(0, len(self.indices), self.batch_size):
            yield list(self.indices[start:start + self.batch_size])

    def __len__(self):
        return math.ceil(len(self.indices) / self.batch_size)


def _local_processes(distributed):
    for var in ('PADDLE_LOCAL_SIZE', 'LOCAL_WORLD_SIZE'):
        if os.environ.get(var, '').isdigit():
            return max(1, int(os.environ[var]))
    return paddle.distributed.get_world_size() if distributed else 1


def shared_memory_ok(batch_bytes, num_workers, processes=1, prefetch_factor=2, path='/dev/shm'):
    """(ok, free_bytes, needed_bytes): room in `path` for every local process's batches in flight
    (prefetch_factor per worker, plus two being handed over), with a 2x margin."""
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return False, 0, 0
    needed = 2 * batch_bytes * (prefetch_factor * num_workers + 2) * processes
    return free >= needed, free, needed


def _seed_worker(seed, rank, worker_id):
    info = paddle.io.get_worker_info()
    pass_seed = info.seed if info is not None else 0
    state = np.random.SeedSequence([int(seed) % 2 ** 63, rank, worker_id, int(pass_seed) % 2 ** 63])
    np.random.seed(state.generate_state(4))
    random.seed(int(state.generate_state(2, np.uint64)[0]))
    _exit_with_parent()


def _exit_with_parent(interval=2.0):
    """End this worker when the process that forked it is gone.

    Paddle's worker loop blocks on its index queue without a timeout, so its own
    parent watchdog never runs: a killed training process would leave its workers
    behind for good, holding memory and /dev/shm.
    """
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name='exit-with-parent', daemon=True).start()


def build_dataloader(config, dataset, mode, distributed):
    """A paddle.io.DataLoader over `dataset` for 'train' or 'val' (see the module docstring).

    Batch size DATA.BATCH_SIZE (train) / DATA.BATCH_SIZE_EVAL (val, falling back
    to BATCH_SIZE), DATA.NUM_WORKERS worker processes (0: load in this process),
    persistent across epochs.  `distributed`: split across the ranks of the
    current paddle.distributed group.  The val loader leaves skipped samples
    (None) out of its batches (`collate_skipping`).
    """
    if mode not in ('train', 'val'):
        raise ValueError(f"mode must be 'train' or 'val', got {mode!r}")
    rank, world = (paddle.distributed.get_rank(), paddle.distributed.get_world_size()) \
        if distributed else (0, 1)
    train = mode == 'train'
    batch_size = config.DATA.BATCH_SIZE if train else (config.DATA.BATCH_SIZE_EVAL or config.DATA.BATCH_SIZE)
    if train:
        repeats = int(config.DATA.REPEATED_AUG)
        if repeats > 1:
            sampler = RepeatedAugSampler(len(dataset), batch_size, repeats, rank, world, seed=config.SEED)
            if len(sampler) == 0:
                raise ConfigError(
                    f'DATA.REPEATED_AUG {repeats}: DeiT\'s repeated-augmentation sampler reads '
                    f'floor(N // 256 * 256 / processes) = {sampler.selected} images per process per epoch '
                    f'for N = {len(dataset)} training images on {world} process(es), which cannot fill one '
                    f'batch of {batch_size}: set DATA.REPEATED_AUG 0 (off) or lower DATA.BATCH_SIZE')
        else:
            sampler = paddle.io.DistributedBatchSampler(dataset, batch_size, num_replicas=world, rank=rank,
                                                        shuffle=True, drop_last=True)
        if len(sampler) == 0:
            raise ValueError(f'{len(dataset)} training images cannot fill one batch of {batch_size} '
                             f'per process on {world} process(es) (the last partial batch is dropped): '
                             f'lower DATA.BATCH_SIZE')
    else:
        sampler = EvalBatchSampler(len(dataset), batch_size, rank, world)
    if getattr(dataset, 'accepts_seeded_index', False):
        sampler = SeededBatchSampler(sampler, config.SEED)

    workers = max(0, int(config.DATA.NUM_WORKERS))
    kwargs = {}
    if workers > 0:
        size = config.DATA.IMAGE_SIZE
        batch_bytes = batch_size * config.DATA.IMAGE_CHANNELS * size * size * 4
        ok, free, needed = shared_memory_ok(batch_bytes, workers, _local_processes(distributed))
        if not ok:
            logger.warning(f'/dev/shm has {free / 2**20:.0f} MB free, {needed / 2**20:.0f} MB wanted for '
                           f'{workers} workers x batch {batch_size} at {size} px: loading without shared '
                           f'memory (slower). Give the container more (docker --shm-size=8g) to avoid it.')
        kwargs = dict(use_shared_memory=ok, persistent_workers=True,
                      worker_init_fn=functools.partial(_seed_worker, config.SEED, rank))
    if not train:
        kwargs['collate_fn'] = collate_skipping
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, return_list=True, **kwargs)
