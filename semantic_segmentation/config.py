"""The configuration of a segmentation run: the backbone family's config plus the `SEG.*` keys.

A segmentation YAML names its backbone family with `MODEL.TYPE` (as a
classification YAML does) and sets the family's architecture keys under
`MODEL`, so the backbone is built by the family's own builder and checked by
its own rules.  `DATA.IMAGE_SIZE` is the crop size (the backbone is built for
it; SP-ViT then takes any size, see backbone.py).  Shared keys keep their
meaning where segmentation has the same notion: DATA.BATCH_SIZE (per process),
DATA.DATA_PATH (the ADE20K root), DATA.MEAN / STD, DATA.NUM_WORKERS,
TRAIN.BASE_LR, TRAIN.WEIGHT_DECAY (applied to every parameter, as MMSegmentation
does without `paramwise_cfg`), TRAIN.OPTIMIZER.*, TRAIN.GRAD_CLIP,
MODEL.DROPPATH, MODEL.PRETRAINED (a classification .pdparams for the backbone),
MODEL.RESUME, SAVE, SAVE_KEEP, SEED, REPORT_FREQ, EVAL.  The epoch-based
classification keys (NUM_EPOCHS, warmup epochs, mixup, ...) are not used: the
schedule is counted in iterations (`SEG.TRAIN.*`).  SAVE_FREQ counts
iterations here: checkpoints at multiples of it are kept for good.
"""
import functools
import sys

from engine.config import (CN, Check, at_least, each, greater_than, in_range, length, make_get_config, one_of,
                           typed, yaml_model_type, PROBABILITY)
from engine.families import load_family


def seg_defaults(c):
    """The `SEG` keys, set to the ADE20K UperNet recipe (TokenLabeling seg/, MMSegmentation 0.x)."""
    c.SEG = CN()
    c.SEG.NUM_CLASSES = 150
    c.SEG.IGNORE_INDEX = 255
    c.SEG.OUT_INDICES = [6, 9, 12, 15]       # backbone features tapped (0-based `feature_info` entries)

    c.SEG.NECK = CN()
    c.SEG.NECK.SCALES = [4, 2, 1, 1]         # upsampling of each tap (transposed conv when > 1)
    c.SEG.NECK.LAST_CHANNELS = 2048          # channels of the 4th output (the others keep the backbone's)

    c.SEG.DECODE = CN()                      # UPerHead
    c.SEG.DECODE.CHANNELS = 256
    c.SEG.DECODE.POOL_SCALES = [1, 2, 3, 6]
    c.SEG.DECODE.DROPOUT = 0.1

    c.SEG.AUX = CN()                         # FCNHead on one neck output
    c.SEG.AUX.ENABLE = True
    c.SEG.AUX.IN_INDEX = 2
    c.SEG.AUX.CHANNELS = 256
    c.SEG.AUX.NUM_CONVS = 1
    c.SEG.AUX.DROPOUT = 0.1
    c.SEG.AUX.LOSS_WEIGHT = 0.4

    c.SEG.DATA = CN()                        # MMSegmentation 0.x configs/_base_/datasets/ade20k.py
    c.SEG.DATA.REDUCE_ZERO_LABEL = True      # label 0 (other) -> ignored, 1..150 -> 0..149
    c.SEG.DATA.IMG_SCALE = [2048, 512]       # (long, short) bound of the keep-ratio resize
    c.SEG.DATA.RATIO_RANGE = [0.5, 2.0]      # training: IMG_SCALE x U(ratio range)
    c.SEG.DATA.CAT_MAX_RATIO = 0.75          # a crop's largest class may cover at most this share
    c.SEG.DATA.FLIP_PROB = 0.5
    c.SEG.DATA.PHOTOMETRIC = True            # brightness / contrast / saturation / hue distortion

    c.SEG.TRAIN = CN()                       # mmcv's poly policy with linear warmup, by iteration
    c.SEG.TRAIN.MAX_ITERS = 160000
    c.SEG.TRAIN.WARMUP_ITERS = 1500
    c.SEG.TRAIN.WARMUP_RATIO = 1e-6
    c.SEG.TRAIN.POWER = 1.0
    c.SEG.TRAIN.MIN_LR = 0.0
    c.SEG.TRAIN.CHECKPOINT_INTERVAL = 8000
    c.SEG.TRAIN.EVAL_INTERVAL = 8000

    c.SEG.TEST = CN()
    c.SEG.TEST.MODE = 'slide'                # 'whole' | 'slide' (crop DATA.IMAGE_SIZE, STRIDE)
    c.SEG.TEST.STRIDE = 341
    c.SEG.TEST.SCALES = typed([1.0], [float])   # multi-scale: [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    c.SEG.TEST.FLIP = False


SEG_RULES = {
    'SEG.NUM_CLASSES': (at_least(1),),
    'SEG.IGNORE_INDEX': (in_range(0, 255),),
    'SEG.OUT_INDICES': (length(4), each(at_least(0))),
    'SEG.NECK.SCALES': (length(4), each(one_of(1, 2, 4, 8))),
    'SEG.NECK.LAST_CHANNELS': (at_least(1),),
    'SEG.DECODE.CHANNELS': (at_least(1),),
    'SEG.DECODE.POOL_SCALES': (each(at_least(1)),),
    'SEG.DECODE.DROPOUT': (PROBABILITY,),
    'SEG.AUX.IN_INDEX': (in_range(0, 3),),
    'SEG.AUX.CHANNELS': (at_least(1),),
    'SEG.AUX.NUM_CONVS': (at_least(1),),
    'SEG.AUX.DROPOUT': (PROBABILITY,),
    'SEG.AUX.LOSS_WEIGHT': (at_least(0),),
    'SEG.DATA.IMG_SCALE': (length(2), each(at_least(1))),
    'SEG.DATA.RATIO_RANGE': (length(2), each(greater_than(0))),
    'SEG.DATA.CAT_MAX_RATIO': (in_range(0, 1, low_open=True),),
    'SEG.DATA.FLIP_PROB': (PROBABILITY,),
    'SEG.TRAIN.MAX_ITERS': (at_least(1),),
    'SEG.TRAIN.WARMUP_ITERS': (at_least(0),),
    'SEG.TRAIN.WARMUP_RATIO': (in_range(0, 1, low_open=True),),
    'SEG.TRAIN.POWER': (greater_than(0),),
    'SEG.TRAIN.MIN_LR': (at_least(0),),
    'SEG.TRAIN.CHECKPOINT_INTERVAL': (at_least(1),),
    'SEG.TRAIN.EVAL_INTERVAL': (at_least(1),),
    'SEG.TEST.MODE': (one_of('whole', 'slide'),),
    'SEG.TEST.STRIDE': (at_least(1),),
    'SEG.TEST.SCALES': (each(greater_than(0)),),
}

SEG_CHECKS = (
    Check(('SEG.TRAIN.WARMUP_ITERS', 'SEG.TRAIN.MAX_ITERS'), lambda warmup, total: warmup < total,
          'SEG.TRAIN.WARMUP_ITERS must be below SEG.TRAIN.MAX_ITERS'),
    Check(('SEG.DATA.RATIO_RANGE',), lambda r: r[0] <= r[1], 'SEG.DATA.RATIO_RANGE is [low, high], low <= high'),
    Check(('SEG.OUT_INDICES',), lambda taps: all(a < b for a, b in zip(taps, taps[1:])),
          'SEG.OUT_INDICES must increase (the features come back in network order, shallowest first)'),
    Check(('SEG.TEST.STRIDE', 'DATA.IMAGE_SIZE'), lambda stride, crop: stride <= crop,
          'SEG.TEST.STRIDE must not exceed the crop DATA.IMAGE_SIZE (slide windows would leave gaps)'),
)


@functools.lru_cache(maxsize=None)
def _get_config_for(model_type):
    """`make_get_config` over the family's defaults, rules and checks plus the SEG ones."""
    load_family(model_type)   # imports the family's config module under its registry name
    family_config = sys.modules[f'_family_{model_type.lower()}_config']

    def defaults(c):
        family_config._defaults(c)
        seg_defaults(c)
    rules = dict(getattr(family_config, 'RULES', {}))
    for key, value in SEG_RULES.items():
        rules[key] = rules.get(key, ()) + value
    return make_get_config(defaults, rules, tuple(getattr(family_config, 'CHECKS', ())) + SEG_CHECKS)


def get_config(cfg_file=None, args=None, opts=None):
    """The config of a segmentation run from its YAML (which names the backbone's MODEL.TYPE),
    the flags and `-opts`, checked by the family's rules and the SEG ones."""
    cfg_file = cfg_file or getattr(args, 'cfg', None)
    model_type = yaml_model_type(cfg_file) if cfg_file else ''
    if not model_type:
        from engine.config import ConfigError
        raise ConfigError(f'{cfg_file or "no -cfg"}: a segmentation config must set MODEL.TYPE, the backbone '
                          f'family (e.g. SPViT): use one of semantic_segmentation/configs/*.yaml')
    return _get_config_for(model_type)(cfg_file, args, opts)
