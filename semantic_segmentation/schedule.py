"""mmcv's `poly` learning-rate policy with a linear warmup, by iteration (`by_epoch=False`).

At iteration t (0-based) of T:
    regular(t) = (base - min_lr) * (1 - t / T) ** power + min_lr
    lr(t)      = regular(t) * (1 - (1 - t / W) * (1 - warmup_ratio))   for t < W
               = regular(t)                                           after
The warmup scales the *decayed* rate (mmcv's `get_warmup_lr` takes the regular
rate), starting from warmup_ratio x regular(0).
"""
from paddle.optimizer.lr import LRScheduler


def poly_warmup_lr(t, base_lr, max_iters, warmup_iters=0, warmup_ratio=1e-6, power=1.0, min_lr=0.0):
    regular = (base_lr - min_lr) * (1 - t / max_iters) ** power + min_lr
    if t < warmup_iters:
        return regular * (1 - (1 - t / warmup_iters) * (1 - warmup_ratio))
    return regular


class PolyWarmup(LRScheduler):
    """`poly_warmup_lr` as a Paddle scheduler; `step()` once per iteration (last_epoch = iterations done)."""

    def __init__(self, base_lr, max_iters, warmup_iters=0, warmup_ratio=1e-6, power=1.0, min_lr=0.0):
        self.max_iters, self.warmup_iters, self.warmup_ratio = max_iters, warmup_iters, warmup_ratio
        self.power, self.min_lr = power, min_lr
        super().__init__(base_lr)

    def get_lr(self):
        return poly_warmup_lr(min(self.last_epoch, self.max_iters), self.base_lr, self.max_iters,
                              self.warmup_iters, self.warmup_ratio, self.power, self.min_lr)
