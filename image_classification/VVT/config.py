"""VVT configuration: the shared defaults plus VVT's architecture keys.

The defaults describe VVT-tiny; each file in `configs/` sets a variant, its
official training recipe and its evaluation preprocessing.
"""
from engine.config import Check, at_least, each, greater_than, make_get_config


def _defaults(c):
    c.MODEL.TYPE = 'VVT'
    c.MODEL.NAME = 'vvt_tiny'
    c.MODEL.EMBED_DIMS = [96, 160, 320, 512]   # channels of the four stages
    c.MODEL.NUM_HEADS = [1, 2, 5, 8]
    c.MODEL.MLP_RATIOS = [8, 8, 4, 4]
    c.MODEL.DEPTHS = [2, 2, 2, 2]              # blocks per stage
    c.MODEL.FR_RATIOS = [2, 2, 2, 2]           # feature reduction of q, k, v (FRA)
    c.MODEL.SE_RATIO = 1                       # hidden reduction of the FPC channel weights



RULES = {
    'MODEL.EMBED_DIMS': (each(at_least(1)),),
    'MODEL.NUM_HEADS': (each(at_least(1)),),
    'MODEL.MLP_RATIOS': (each(greater_than(0)),),
    'MODEL.DEPTHS': (each(at_least(1)),),
    'MODEL.FR_RATIOS': (each(at_least(1)),),
    'MODEL.SE_RATIO': (at_least(1),),
}

# vvt.py: every patch embedding is a padded conv (7x7/4, then 3x3/2) and nothing depends on the grid
# size (no position embedding), so any DATA.IMAGE_SIZE runs; the constraints are the stage widths'.
CHECKS = (
    Check(('MODEL.EMBED_DIMS', 'MODEL.NUM_HEADS', 'MODEL.MLP_RATIOS', 'MODEL.DEPTHS', 'MODEL.FR_RATIOS'),
          lambda *lists: len({len(v) for v in lists}) == 1,
          'MODEL.EMBED_DIMS, NUM_HEADS, MLP_RATIOS, DEPTHS and FR_RATIOS need one entry per stage '
          '(same lengths)'),
    Check(('MODEL.EMBED_DIMS', 'MODEL.NUM_HEADS', 'MODEL.FR_RATIOS'),
          lambda dims, heads, frs: all(d % h == 0 and (d // h) % f == 0 for d, h, f in zip(dims, heads, frs)),
          'each stage width (MODEL.EMBED_DIMS) must split into MODEL.NUM_HEADS heads whose width is a '
          'multiple of MODEL.FR_RATIOS'),
    Check(('MODEL.EMBED_DIMS', 'MODEL.SE_RATIO'), lambda dims, se: all(d // se >= 1 for d in dims),
          'MODEL.SE_RATIO must not exceed the narrowest stage width (MODEL.EMBED_DIMS)'),
)

get_config = make_get_config(_defaults, RULES, CHECKS)
