"""Repeated augmentation (engine.data.samplers) and the per-step seeding of the global generators.

The reference for the sampler is DeiT's RASampler arithmetic (facebookresearch/deit,
samplers.py), re-implemented here on plain lists and written independently of the
code under test: for N images, R repeats and W processes, rank r reads entries
r, r + W, ... of the index list repeated in place and padded with its own head to
W * ceil(N R / W) entries, keeping the first floor(N // 256 * 256 / W).
"""
import math
import random
from collections import Counter

import numpy as np
import paddle
import pytest

from engine import data
from engine.config import ConfigError, base_config, make_get_config
from engine.data.samplers import RepeatedAugSampler, deit_ra_epoch_length
from engine.seeding import seed_globals

CASES = [(256, 1, 3), (1000, 2, 3), (1281, 8, 3), (1281, 3, 2), (600, 4, 5), (300, 7, 3), (257, 2, 1),
         (1024, 3, 4)]


def deit_rasampler(order, world, rank, repeats):
    """DeiT's RASampler.__iter__ for a given shuffled `order`, on Python lists."""
    n = len(order)
    num_samples = int(math.ceil(n * float(repeats) / world))
    total_size = num_samples * world
    num_selected_samples = int(math.floor(n // 256 * 256 / world))
    indices = [ele for ele in order for _ in range(repeats)]
    indices += indices[:(total_size - len(indices))]
    assert len(indices) == total_size
    indices = indices[rank:total_size:world]
    assert len(indices) == num_samples
    return indices[:num_selected_samples]


@pytest.mark.parametrize('n, world, repeats', CASES)
def test_counts_and_entries_per_rank_are_deits(n, world, repeats):
    """Same epoch length per rank as DeiT, and the same entries given the same shuffle."""
    for rank in range(world):
        sampler = RepeatedAugSampler(n, batch_size=16, repeats=repeats, rank=rank, world_size=world, seed=7)
        order = np.random.default_rng([7, 4]).permutation(n).tolist()     # the shuffle of (SEED 7, epoch 4)
        expected = deit_rasampler(order, world, rank, repeats)
        indices, _ = sampler.rank_order(4)
        assert len(indices) == len(expected) == int(math.floor(n // 256 * 256 / world))
        assert indices.tolist() == expected
        assert len(sampler) == len(expected) // 16                          # drop_last, as DeiT's loader
        sampler.set_epoch(4)
        batches = list(sampler)
        assert len(batches) == len(sampler) and all(len(b) == 16 for b in batches)
        assert [i for b in batches for i in b] == expected[:len(sampler) * 16]


@pytest.mark.parametrize('n, world, repeats', CASES)
def test_each_index_repeated_and_copies_spread_over_ranks(n, world, repeats):
    """Before DeiT's truncation: every index exactly `repeats` times (plus < world padding entries),
    each (index, occurrence) once, and the copies of an index on min(repeats, world) ranks."""
    samplers = [RepeatedAugSampler(n, 8, repeats, rank, world, seed=1) for rank in range(world)]
    indices, occurrences = samplers[0].global_order(2)
    counts = Counter(indices[:n * repeats].tolist())
    assert set(counts) == set(range(n)) and set(counts.values()) == {repeats}
    assert len(indices) - n * repeats < world
    pairs = list(zip(indices.tolist(), occurrences.tolist()))
    assert len(set(pairs)) == len(pairs)
    per_rank = [s.global_order(2)[0][r::world] for r, s in enumerate(samplers)]
    assert sorted(np.concatenate(per_rank).tolist()) == sorted(indices.tolist())
    ranks_of = {}
    for rank, rank_indices in enumerate(per_rank):
        for j, i in enumerate(rank_indices):
            if rank + j * world < n * repeats:                             # not a padding entry
                ranks_of.setdefault(int(i), set()).add(rank)
    assert all(len(r) == min(repeats, world) for r in ranks_of.values())


def test_epoch_length_is_deits_expression():
    for n in (0, 255, 256, 511, 512, 1281167):
        for world in (1, 2, 3, 8):
            assert deit_ra_epoch_length(n, world) == int(math.floor(n // 256 * 256 / world))


def test_order_is_seeded_by_seed_and_epoch():
    def epoch(seed, e, rank=1, world=2):
        sampler = RepeatedAugSampler(512, 32, 3, rank=rank, world_size=world, seed=seed)
        sampler.set_epoch(e)
        return list(sampler)
    assert epoch(0, 3) == epoch(0, 3)
    assert epoch(0, 3) != epoch(0, 4)
    assert epoch(0, 3) != epoch(1, 3)
    sampler = RepeatedAugSampler(512, 32, 3, seed=5)
    sampler.set_epoch(6)
    first, second = list(sampler), list(sampler)                           # no set_epoch: the next epoch
    assert second == epoch(5, 7, 0, 1) and first == epoch(5, 6, 0, 1)


def make_config(root, **overrides):
    c = base_config()
    c.DATA.DATA_PATH, c.DATA.IMAGE_SIZE, c.DATA.BATCH_SIZE, c.DATA.NUM_WORKERS = str(root), 16, 64, 0
    c.MODEL.NUM_CLASSES = 2
    for key, value in overrides.items():
        section, leaf = key.split('.')
        c[section][leaf] = value
    return c


def write_list(root, n):
    """n tiny images, listed in train_list.txt."""
    from PIL import Image
    (root / 'img').mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / 'img' / f'{i}.png')
    (root / 'train_list.txt').write_text(''.join(f'img/{i}.png {i % 2}\n' for i in range(n)))


def test_build_dataloader_copies_get_their_own_augmentation(tmp_path):
    """DATA.REPEATED_AUG 3: DeiT's epoch length, each index 3 times in the epoch (a 256-image set on
    one process is all of it), and each copy a different augmentation key and a different image."""
    write_list(tmp_path, 256)
    config = make_config(tmp_path, **{'DATA.REPEATED_AUG': 3})
    dataset = data.build_dataset(config, 'train')
    loader = data.build_dataloader(config, dataset, 'train', distributed=False)
    assert len(loader) == 256 // 64
    sampler = loader.batch_sampler
    sampler.set_epoch(2)
    keys = [key for batch in sampler for key in batch]
    assert len(keys) == 256 and all(seed[:2] == (0, 2) and seed[2] == i for i, seed in keys)
    copies = Counter(i for i, _ in keys)
    three = [i for i, c in copies.items() if c == 3]
    assert len(copies) == 86 and len(three) == 85                         # 256 = 85 x 3 + 1
    i = three[0]
    images = [dataset[(i, seed)][0] for j, seed in keys if j == i]
    assert len({seed for j, seed in keys if j == i}) == 3
    assert not np.array_equal(images[0], images[1]) and not np.array_equal(images[1], images[2])


@pytest.mark.parametrize('repeats', [0, 1])
def test_repeated_aug_off_keeps_the_plain_sampler(tmp_path, repeats):
    write_list(tmp_path, 20)
    config = make_config(tmp_path, **{'DATA.REPEATED_AUG': repeats, 'DATA.BATCH_SIZE': 4})
    loader = data.build_dataloader(config, data.build_dataset(config, 'train'), 'train', distributed=False)
    assert isinstance(loader.batch_sampler.batch_sampler, paddle.io.DistributedBatchSampler)
    assert len(loader) == 5


def test_repeated_aug_errors_name_the_key(tmp_path):
    write_list(tmp_path, 200)
    dataset = data.build_dataset(make_config(tmp_path), 'train')
    with pytest.raises(ConfigError, match=r'DATA.REPEATED_AUG 3: .*floor\(N // 256 \* 256 / processes\) = 0 '
                                          r'.*N = 200 .*set DATA.REPEATED_AUG 0'):
        data.build_dataloader(make_config(tmp_path, **{'DATA.REPEATED_AUG': 3}), dataset, 'train', False)
    get_config = make_get_config(lambda c: None)
    with pytest.raises(ConfigError, match=r'-opts: DATA.REPEATED_AUG = -2 is not allowed: must be >= 0'):
        get_config(opts=['DATA.REPEATED_AUG', '-2'])


def test_seed_globals_depends_on_the_key_only():
    def draws():
        return np.random.rand(3).tolist(), random.random(), paddle.rand([3]).numpy().tolist()
    seed_globals(0, 1, 2, 3)
    first = draws()
    np.random.rand(100), random.random(), paddle.rand([100])               # whatever ran in between
    seed_globals(0, 1, 2, 3)
    assert draws() == first
    seed_globals(0, 1, 2, 4)
    other = draws()
    assert all(a != b for a, b in zip(first, other))


def test_configs_turn_repeated_aug_on_where_the_official_main_does():
    """3 repeats in every PiT, PerViT and VVT config and in the DeiT-recipe ViTs (DeiT's, PerViT's and
    VVT's main.py default to --repeated-aug; PiT was trained with DeiT's code).  Off for SP-ViT (its
    timm-based main.py has no such option), Google's ViT fine-tuning, RegNet and the demos."""
    import glob
    import os
    from engine.families import family_for_config
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'image_classification')
    on = set()
    for path in sorted(glob.glob(os.path.join(root, '*', 'configs', '*.yaml'))):
        if family_for_config(path).get_config(path).DATA.REPEATED_AUG == 3:
            on.add(os.path.relpath(path, root))
    expected = {os.path.relpath(p, root) for family in ('PiT', 'PerViT', 'VVT')
                for p in glob.glob(os.path.join(root, family, 'configs', '*.yaml')) if 'demo' not in p}
    expected |= {f'ViT/configs/vit_{size}_patch16_{res}.yaml' for size in ('tiny', 'small') for res in (224, 384)}
    assert on == expected and len(on) == 24
