"""Parameters, FLOPs at the crop size and CPU latency of a segmentor (README "Semantic segmentation").

    python benchmark.py -cfg configs/upernet_lvvit_s_512x512_160k_ade20k.yaml [-repeats 3]

FLOPs are counted by engine/flops.py, as tools/flops.py counts them (one
multiply-accumulate = one FLOP, on a 1 x 3 x S x S image, S = DATA.IMAGE_SIZE).  Latency, eval mode, batch 1, on
this process's threads: one forward at S x S (to the logits at stride 4), and
the evaluation of one ADE20K-sized image (S x round(S * 4 / 3), the usual
aspect after the keep-ratio resize) in the config's SEG.TEST mode.  The median
of `-repeats` runs after one warm-up run is printed.
"""
import argparse
import os
import time

import engine

if __name__ == '__main__':
    engine.prepare_process()   # run as a program: before paddle is imported

import numpy as np  # noqa: E402
import paddle  # noqa: E402

from engine.cpu.settings import configure as configure_cpu  # noqa: E402
from engine.flops import count_flops, count_params  # noqa: E402
from semantic_segmentation.config import get_config  # noqa: E402
from semantic_segmentation.segmentor import build_segmentor  # noqa: E402



def median_seconds(function, repeats):
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('-cfg', required=True)
    parser.add_argument('-repeats', type=int, default=3)
    parser.add_argument('-opts', nargs='+', default=None)
    args = parser.parse_args(argv)
    config = get_config(args.cfg, opts=args.opts)
    configure_cpu()
    model, _ = build_segmentor(config)
    model.eval()
    size, test = config.DATA.IMAGE_SIZE, config.SEG.TEST
    print(f'{config.MODEL.NAME}: {count_params(model) / 1e6:.2f}M parameters, '
          f'{count_flops(model, size) / 1e9:.1f}G FLOPs at {size}x{size}')
    square = paddle.randn([1, 3, size, size])
    wide = paddle.randn([1, 3, size, round(size * 4 / 3)])
    with paddle.no_grad():
        forward = median_seconds(lambda: model(square).numpy(), args.repeats)
        evaluation = median_seconds(lambda: model.predict(wide, test.MODE, size, test.STRIDE).numpy(), args.repeats)
    print(f'CPU latency, batch 1, {paddle.get_device()}, OMP_NUM_THREADS {os.environ.get("OMP_NUM_THREADS")}: '
          f'one {size}x{size} forward {forward:.2f} s; {test.MODE} evaluation of a {size}x{wide.shape[3]} image '
          f'{evaluation:.2f} s')


if __name__ == '__main__':
    main()
