"""RegNet configuration: the shared defaults plus the RegNet design-space keys.

The defaults describe RegNetY-16GF (`regnety_160`), DeiT's teacher.  A RegNet
is fully described by W0, WA, WM, DEPTH, GROUP_W (and SE_RATIO: 0 for RegNetX,
0.25 for RegNetY); see `regnet.py` for how they give the stage widths.
"""
from engine.config import at_least, greater_than, in_range, make_get_config, multiple_of


def _defaults(c):
    c.MODEL.TYPE = 'RegNet'
    c.MODEL.NAME = 'regnety_160'
    c.MODEL.STEM_WIDTH = 32
    c.MODEL.W0 = 200           # initial width
    c.MODEL.WA = 106.23        # width slope per block
    c.MODEL.WM = 2.48          # width multiplier between stages (log-quantisation step)
    c.MODEL.DEPTH = 18         # total number of blocks
    c.MODEL.GROUP_W = 112      # channels per group of the 3x3 conv
    c.MODEL.BOTTLE_RATIO = 1.0
    c.MODEL.SE_RATIO = 0.25    # squeeze-excitation width / block input width (0: RegNetX)
    c.MODEL.DROPPATH = 0.0



# regnet.py: every conv is padded and the head pools globally, so any DATA.IMAGE_SIZE runs; the
# constraints are the design space's (regnet_block_widths quantises widths to multiples of 8).
RULES = {
    'MODEL.STEM_WIDTH': (at_least(1),),
    'MODEL.W0': (at_least(8), multiple_of(8)),
    'MODEL.WA': (at_least(0),),
    'MODEL.WM': (greater_than(1),),
    'MODEL.DEPTH': (at_least(1),),
    'MODEL.GROUP_W': (at_least(1),),
    'MODEL.BOTTLE_RATIO': (greater_than(0),),
    'MODEL.SE_RATIO': (in_range(0, 1, high_open=True),),
}

get_config = make_get_config(_defaults, RULES)
