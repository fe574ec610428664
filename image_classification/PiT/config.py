"""PiT configuration: the shared defaults plus PiT's architecture keys.

The defaults describe PiT-S; each file in `configs/` sets a variant, its
training recipe (DeiT's, which PiT used) and its evaluation preprocessing.
The distilled architecture is a property of the config (`MODEL.DISTILLED`),
never of a training flag: a `_distilled` checkpoint needs a `_distilled`
config to be loaded, evaluated or fine-tuned.
"""
from engine.config import Check, at_least, each, greater_than, make_get_config


def _defaults(c):
    c.MODEL.TYPE = 'PiT'
    c.MODEL.NAME = 'pit_s'
    c.MODEL.PATCH_SIZE = 16            # patch-embedding conv kernel
    c.MODEL.STRIDE = 8                 # patch-embedding conv stride (patches overlap)
    c.MODEL.BASE_DIMS = [48, 48, 48]   # channels per head, per stage
    c.MODEL.DEPTH = [2, 6, 4]          # blocks per stage
    c.MODEL.NUM_HEADS = [3, 6, 12]     # heads per stage (stage width = BASE_DIMS * NUM_HEADS)
    c.MODEL.MLP_RATIO = 4.0
    c.MODEL.DISTILLED = False          # distillation token + `head_dist` (DeiT)
    # False: (DATA.IMAGE_SIZE - PATCH_SIZE) must be a multiple of STRIDE.  True: the patch conv
    # floors and the last pixels are never seen (PiT-B at 384: 53 x 53 patches cover 378 pixels).
    c.MODEL.IGNORE_EDGE_PIXELS = False



RULES = {
    'MODEL.PATCH_SIZE': (at_least(1),),
    'MODEL.STRIDE': (at_least(1),),
    'MODEL.BASE_DIMS': (each(at_least(1)),),
    'MODEL.DEPTH': (each(at_least(1)),),
    'MODEL.NUM_HEADS': (each(at_least(1)),),
    'MODEL.MLP_RATIO': (greater_than(0),),
}

# pit.py: the patch embedding is an unpadded conv (kernel PATCH_SIZE, stride STRIDE): its grid is
# floor((S - P) / stride) + 1, and a remainder is a strip of pixels the model never sees.
CHECKS = (
    Check(('DATA.IMAGE_SIZE', 'MODEL.PATCH_SIZE'), lambda size, patch: size >= patch,
          'DATA.IMAGE_SIZE must be at least MODEL.PATCH_SIZE'),
    Check(('DATA.IMAGE_SIZE', 'MODEL.PATCH_SIZE', 'MODEL.STRIDE', 'MODEL.IGNORE_EDGE_PIXELS'),
          lambda size, patch, stride, ignore_edge: ignore_edge or (size - patch) % stride == 0,
          'DATA.IMAGE_SIZE - MODEL.PATCH_SIZE must be a multiple of MODEL.STRIDE, or the last pixels are '
          'never seen (MODEL.IGNORE_EDGE_PIXELS True accepts that, as pit_b_distilled_384 does)'),
    Check(('MODEL.BASE_DIMS', 'MODEL.DEPTH', 'MODEL.NUM_HEADS'),
          lambda dims, depth, heads: len(dims) == len(depth) == len(heads),
          'MODEL.BASE_DIMS, MODEL.DEPTH and MODEL.NUM_HEADS need one entry per stage (same lengths)'),
)

get_config = make_get_config(_defaults, RULES, CHECKS)
