"""PiT configuration: the shared defaults plus PiT's architecture keys.

The defaults describe PiT-S; each file in `configs/` sets a variant, its
training recipe (DeiT's, which PiT used) and its evaluation preprocessing.
The distilled architecture is a property of the config (`MODEL.DISTILLED`),
never of a training flag: a `_distilled` checkpoint needs a `_distilled`
config to be loaded, evaluated or fine-tuned.
"""
from engine.config import make_get_config


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


get_config = make_get_config(_defaults)
