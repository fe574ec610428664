"""PerViT's additions to the shared launcher: `-visualize` after `-eval`, as the official `--visualize`.

    python main_single_gpu.py -cfg configs/pervit_tiny_224.yaml -dataset imagenet2012 \\
        -data_path /dataset/imagenet -eval -pretrained pervit_tiny.pdparams -visualize \\
        [-visualize_image dog.jpg] [-visualize_query 7 7]

saves the pictures of `visualize.py` under `<output>/vis/` once evaluation is done.
"""
import importlib.util
import os

from engine.hooks import FamilyHooks

HERE = os.path.dirname(os.path.abspath(__file__))


def _visualize_module():
    """PerViT's visualize.py, imported by path (other families may have a module of that name)."""
    spec = importlib.util.spec_from_file_location('_pervit_visualize', os.path.join(HERE, 'visualize.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class PerViTHooks(FamilyHooks):
    def add_arguments(self, parser):
        parser.add_argument('-visualize', action='store_true',
                            help='after -eval, save the learned position-based attention of every layer '
                                 'and head (sorted by non-locality) under <output>/vis/')
        parser.add_argument('-visualize_image', type=str, default=None, metavar='PATH',
                            help='with -visualize: also save the attention of this image')
        parser.add_argument('-visualize_query', type=int, nargs=2, default=None, metavar=('ROW', 'COL'),
                            help='with -visualize: the query token (default: the grid centre)')

    def after_eval(self, model, config, args, logger):
        if not getattr(args, 'visualize', False):
            if getattr(args, 'visualize_image', None):
                logger.info('-visualize_image is ignored without -visualize')
            return
        import paddle
        if paddle.distributed.get_rank() != 0:
            return
        if isinstance(model, paddle.DataParallel):
            model = model._layers
        out_dir = os.path.join(config.SAVE, 'vis')
        paths = _visualize_module().visualize(model, config, out_dir, image=args.visualize_image,
                                              query=args.visualize_query)
        for path in paths:
            logger.info(f'visualize: saved {path}')
