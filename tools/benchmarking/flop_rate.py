"""The FLOP rate of an eval measurement, and the sgemm rate it is held against (`--flop_rate`).

A model's eval speed in FLOP/s says how much of the machine it uses: its FLOPs per image
(`engine.flops.count_flops`: every product of one forward pass, attention's included, one
multiply-accumulate counted once as the papers count them) times 2 (a multiply-accumulate is two
floating-point operations, as a GEMM's 2·M·N·K) times its img/s.  The ceiling is what a single
large fp32 matrix product (sgemm) reaches on the same cores, measured in the same process right
after the model: the better of Paddle's own (`paddle.matmul`, the BLAS its kernels call) and
numpy's BLAS, so the percentage is never flattered by a slow BLAS, and the best of three timings
of each, so it is not flattered by a slow spell of a shared machine either.
"""
import time

import numpy as np

__all__ = ['SGEMM_SIZE', 'sgemm_gflops', 'model_gflops', 'describe']

SGEMM_SIZE = 2048          # square, large enough to reach a BLAS's peak on a few cores


def _rate(matmul, a, b, seconds=0.3, trials=3):
    matmul(a, b)                                   # warm-up: threads started, pages touched
    best = 0.0
    for _ in range(trials):
        calls, start = 0, time.perf_counter()
        while calls < 2 or time.perf_counter() - start < seconds:
            matmul(a, b)
            calls += 1
        best = max(best, 2 * SGEMM_SIZE ** 3 * calls / (time.perf_counter() - start) / 1e9)
    return best


def sgemm_gflops(paddle):
    """{'paddle': GFLOP/s, 'numpy': GFLOP/s} of a SGEMM_SIZE-square fp32 product on this process's threads."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((SGEMM_SIZE, SGEMM_SIZE), dtype=np.float32) for _ in range(2))
    ours = _rate(paddle.matmul, paddle.to_tensor(a), paddle.to_tensor(b))   # synchronous on the CPU
    return {'paddle': ours, 'numpy': _rate(np.matmul, a, b)}


def model_gflops(model, image_size, images_per_second):
    """(GFLOPs per image as the papers count them, achieved GFLOP/s at `images_per_second`)."""
    from engine.flops import count_flops
    macs = count_flops(model, image_size)
    return macs / 1e9, 2 * macs * images_per_second / 1e9


def describe(row):
    """One line of a measured row's FLOP rate, or None where it has none."""
    if row.get('GFLOP/s') is None:
        return None
    return (f'{row["model"]} {row["mode"]}: {row["GFLOPs"]:.2f} GFLOPs per image, {row["GFLOP/s"]:.1f} GFLOP/s = '
            f'{row["% of sgemm"]:.0f}% of sgemm ({row["sgemm GFLOP/s"]:.0f} GFLOP/s in the same process)')
