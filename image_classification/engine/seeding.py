"""Seeding the process-global generators from a key, so that a run's draws replay on resume.

The training step draws from three process-global generators: numpy's (Mixup /
CutMix, SP-ViT's MixToken), Python's `random`, and Paddle's (dropout, drop path).
Seeding them once per epoch is not enough: anything else that draws from them in
between shifts every later draw, and Paddle's DataLoader does exactly that -- it
takes its workers' base seed from numpy's global generator when it starts them,
which happens in the first epoch of a run, so in epoch 1 of an uninterrupted run
but in the resumed epoch of a resumed one (issue #16: the resumed epoch's first loss
was 1.4920 against 1.5326 uninterrupted with 2 workers, exact with 0).  The trainer therefore
calls `seed_globals(SEED, rank, epoch, step)` before each step: a step's draws then
depend on that key alone, whatever ran before it in this process.
"""
import random

import numpy as np
import paddle

__all__ = ['seed_globals']


def seed_globals(*key):
    """Seed numpy's, Python's and Paddle's global generators from the integers `key`.

    The key goes through numpy's SeedSequence, which hashes it into well-mixed,
    independent words: nearby keys (step 7 and step 8) give unrelated streams, and each
    generator gets its own words.  About 0.1 ms on a CPU.
    """
    words = np.random.SeedSequence([int(k) % 2 ** 63 for k in key]).generate_state(8)
    np.random.seed(words[:4])
    random.seed((int(words[4]) << 32) | int(words[5]))
    paddle.seed((int(words[6]) << 31) | (int(words[7]) >> 1))    # 63 bits: paddle.seed takes an int64
