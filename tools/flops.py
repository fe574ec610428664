"""Count a model's parameters and FLOPs, as the papers' tables report them.

    python tools/flops.py -model pit_s_224 [more names ...] [-image_size 384] [-opts KEY VALUE ...] [--by-op]
    python tools/flops.py -cfg image_classification/PiT/configs/pit_s_224.yaml [more.yaml ...] ...

One multiply-accumulate is one FLOP.  Two totals are printed: `FLOPs` (every
product, attention's q k^T and attn v included: DeiT/ViT, the official PiT
README) and `layers-only` (Conv and Linear layers only: paddle.flops,
ptflops, PaddleViT's and PerViT's tables).  What is counted and how:
`engine/flops.py`.
"""
import argparse
import sys

import engine
engine.prepare_process()   # before paddle is imported
from engine.flops import by_op, count_params, op_costs  # noqa: E402

try:
    from .model_args import add_model_arguments, create_model, model_sources  # imported as tools.flops
except ImportError:
    from model_args import add_model_arguments, create_model, model_sources   # run as a script


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, several=True, cfg_help='YAML config(s) of any family')
    parser.add_argument('-image_size', type=int, default=None,
                        help='input side S (default: DATA.IMAGE_SIZE of the config)')
    parser.add_argument('--by-op', action='store_true', help='also print the MACs of each op type')
    args = parser.parse_args(argv)

    for source in model_sources(args):
        model = create_model(source, args.opts, image_size=args.image_size)
        config = model.config
        size = config.DATA.IMAGE_SIZE
        costs = op_costs(model, size)
        params = count_params(model)
        flops = sum(by_op(costs).values())
        layers = sum(by_op(costs, layers_only=True).values())
        constant = sum(macs for _, macs, kind in costs if kind == 'constant')
        print(f'{config.MODEL.NAME}  image {size}  params {params:,} ({params / 1e6:.1f}M)  '
              f'FLOPs {flops / 1e9:.2f}G  layers-only {layers / 1e9:.2f}G  [{source}]')
        if constant:
            print(f'    not counted: {constant / 1e9:.3f}G of products that do not depend on the image '
                  '(computed from weights alone)')
        if args.by_op:
            for name, macs in sorted(by_op(costs).items(), key=lambda kv: -kv[1]):
                print(f'    {name:<32} {macs / 1e9:8.3f}G  {100 * macs / max(flops, 1):5.1f}%')

if __name__ == '__main__':
    from engine.errors import cli
    sys.exit(cli(main))
