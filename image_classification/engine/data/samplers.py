"""Repeated augmentation: DeiT's `RASampler` as a batch sampler for `build_dataloader`.

Repeated augmentation (Hoffer et al. 2020, Berman et al. 2019) puts each sampled
image into an epoch several times, each copy augmented independently, and spreads
the copies over the processes.  DeiT's `main.py` trains with it by default
(`--repeated-aug`, 3 repeats, `samplers.RASampler`); PerViT's and VVT's `main.py`
carry the same sampler with the same default, and PiT was trained with DeiT's code.

`RepeatedAugSampler` reproduces DeiT's arithmetic exactly, for N images, R repeats
and W processes (facebookresearch/deit, samplers.py):

- the N indices are shuffled, then each is repeated R times in place
  ([a, a, a, b, b, b, ...] for R = 3);
- the list is padded with its own head to W * ceil(N * R / W) entries;
- process r takes every W-th entry starting at r, so the copies of one image go to
  consecutive processes (R different processes when W >= R);
- each process keeps only the first floor(N // 256 * 256 / W) of its entries.  This
  epoch length is DeiT's `num_selected_samples`, kept as written there: about N
  images per epoch over all processes (so about N / R distinct ones), rounded down
  to a multiple of 256 images -- a dataset of fewer than 256 images gives an empty
  epoch, which `build_dataloader` reports as a config error.

Then, as DeiT's DataLoader with `drop_last=True`, the entries are cut into batches
of `batch_size` and a last partial batch is dropped.

What differs from DeiT, on purpose: DeiT seeds its shuffle with the epoch alone;
here it is seeded by (SEED, epoch), so runs with different seeds see different
orders while a resumed run sees the order of the uninterrupted one.  Each entry
also carries its occurrence number k (0..R-1 for the R copies, R.. for the
padding), so that a seeded dataset can give every copy its own augmentation (the
key (SEED, epoch, index, k), see `SeededBatchSampler`).
"""
import math

import numpy as np
import paddle

__all__ = ['RepeatedAugSampler', 'deit_ra_epoch_length']


def deit_ra_epoch_length(num_samples, world_size):
    """Entries per process per epoch: DeiT's `num_selected_samples`,
    `int(math.floor(len(dataset) // 256 * 256 / num_replicas))`, computed as DeiT does."""
    return int(math.floor(num_samples // 256 * 256 / world_size))


class RepeatedAugSampler(paddle.io.BatchSampler):
    """Batches of dataset indices for process `rank` of `world_size`, with `repeats` copies of
    each sampled image per epoch (see the module docstring for the exact arithmetic).

    `set_epoch(epoch)` selects the epoch's order; without it each pass advances the epoch
    by one.  `batches_with_occurrence()` yields the same batches as `(index, k)` pairs.
    """

    def __init__(self, num_samples, batch_size, repeats=3, rank=0, world_size=1, seed=0, drop_last=True):
        if int(repeats) < 1:
            raise ValueError(f'repeats must be >= 1, got {repeats}')
        if not 0 <= rank < world_size:
            raise ValueError(f'rank {rank} outside [0, {world_size})')
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.repeats = int(repeats)
        self.rank, self.world_size = int(rank), int(world_size)
        self.seed = int(seed) % 2 ** 63
        self.drop_last = drop_last
        self.epoch = 0
        self.per_rank = int(math.ceil(self.num_samples * float(self.repeats) / self.world_size))
        self.total = self.per_rank * self.world_size
        self.selected = deit_ra_epoch_length(self.num_samples, self.world_size)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def global_order(self, epoch):
        """(indices, occurrences): the padded list of all processes' entries for `epoch`, before
        the per-process split and DeiT's truncation."""
        order = np.random.default_rng([self.seed, int(epoch) % 2 ** 63]).permutation(self.num_samples)
        indices = np.repeat(order, self.repeats)
        occurrences = np.tile(np.arange(self.repeats), self.num_samples)
        pad = self.total - len(indices)
        # DeiT pads with `indices[:pad]`: the head of the repeated list, as many times as needed
        # (more than once only when the processes outnumber N x R entries)
        head = np.arange(pad) % max(len(indices), 1)
        rounds = np.arange(pad) // max(len(indices), 1) + 1
        indices = np.concatenate([indices, indices[head]])
        occurrences = np.concatenate([occurrences, occurrences[head] + self.repeats * rounds])
        return indices, occurrences

    def rank_order(self, epoch):
        """(indices, occurrences) this process reads in `epoch`, after DeiT's truncation."""
        indices, occurrences = self.global_order(epoch)
        keep = slice(self.rank, self.total, self.world_size)
        return indices[keep][:self.selected], occurrences[keep][:self.selected]

    def _batches(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        indices, occurrences = self.rank_order(epoch)
        stop = len(indices) - len(indices) % self.batch_size if self.drop_last else len(indices)
        for start in range(0, stop, self.batch_size):
            yield indices[start:start + self.batch_size], occurrences[start:start + self.batch_size]

    def __iter__(self):
        for indices, _ in self._batches():
            yield [int(i) for i in indices]

    def batches_with_occurrence(self):
        """The batches of `__iter__` (and the epoch advance), as lists of (index, occurrence k)."""
        for indices, occurrences in self._batches():
            yield [(int(i), int(k)) for i, k in zip(indices, occurrences)]

    def __len__(self):
        if self.drop_last:
            return self.selected // self.batch_size
        return -(-self.selected // self.batch_size)
