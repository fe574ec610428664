"""VVT configuration: the shared defaults plus VVT's architecture keys.

The defaults describe VVT-tiny; each file in `configs/` sets a variant, its
official training recipe and its evaluation preprocessing.
"""
from engine.config import make_get_config


def _defaults(c):
    c.MODEL.TYPE = 'VVT'
    c.MODEL.NAME = 'vvt_tiny'
    c.MODEL.EMBED_DIMS = [96, 160, 320, 512]   # channels of the four stages
    c.MODEL.NUM_HEADS = [1, 2, 5, 8]
    c.MODEL.MLP_RATIOS = [8, 8, 4, 4]
    c.MODEL.DEPTHS = [2, 2, 2, 2]              # blocks per stage
    c.MODEL.FR_RATIOS = [2, 2, 2, 2]           # feature reduction of q, k, v (FRA)
    c.MODEL.SE_RATIO = 1                       # hidden reduction of the FPC channel weights


get_config = make_get_config(_defaults)
