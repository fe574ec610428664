"""PerViT configuration: the shared defaults plus PerViT's architecture keys (PerViT-T by default)."""
import math

from engine.config import Check, Rule, at_least, each, greater_than, length, make_get_config


def _defaults(c):
    c.MODEL.TYPE = 'PerViT'
    c.MODEL.NAME = 'pervit_tiny'
    c.MODEL.NUM_HEADS = 4                        # heads of every block (the official models keep it fixed)
    c.MODEL.EMBED_DIMS = [128, 192, 224, 280]    # token width of each stage
    c.MODEL.DEPTHS = [2, 2, 6, 2]                # blocks per stage (fixed in the official code)
    c.MODEL.STEM_DIMS = [48, 64, 96, 128]        # output channels of the four stride-2 stem convs
    c.MODEL.MLP_RATIO = 4.0



RULES = {
    'MODEL.NUM_HEADS': (at_least(1),),
    'MODEL.EMBED_DIMS': (each(at_least(1)),),
    'MODEL.DEPTHS': (each(at_least(1)),),
    # pervit.py sizes the token grid as ceil(IMAGE_SIZE / 16): four stride-2 stem convs
    'MODEL.STEM_DIMS': (length(4), each(at_least(1))),
    'MODEL.MLP_RATIO': (greater_than(0),),
    'MODEL.ATTENTION_DROPOUT': (Rule(lambda v, c: v == 0, '0: PerViT has no attention dropout (the official '
                                     'MPA ignores attn_drop)'),),
}

# pervit.py: the stem's padded stride-2 convs accept any size, but the peripheral position
# encoding is defined on a square grid of at least 2 x 2 tokens.
CHECKS = (
    Check(('DATA.IMAGE_SIZE',), lambda size: math.ceil(size / 16) >= 2,
          'DATA.IMAGE_SIZE must be at least 17: PerViT needs a token grid (IMAGE_SIZE / 16, rounded up) '
          'of at least 2 x 2'),
    Check(('MODEL.EMBED_DIMS', 'MODEL.DEPTHS'), lambda dims, depths: len(dims) == len(depths),
          'MODEL.EMBED_DIMS and MODEL.DEPTHS need one entry per stage (same lengths)'),
    Check(('MODEL.STEM_DIMS', 'MODEL.EMBED_DIMS'), lambda stem, dims: stem[-1] == dims[0],
          'the stem\'s last width (MODEL.STEM_DIMS[-1]) must equal the first stage\'s (MODEL.EMBED_DIMS[0])'),
    Check(('MODEL.EMBED_DIMS', 'MODEL.NUM_HEADS'), lambda dims, heads: all(d % heads == 0 for d in dims),
          'every MODEL.EMBED_DIMS value must be a multiple of MODEL.NUM_HEADS'),
)

get_config = make_get_config(_defaults, RULES, CHECKS)   # get_config(cfg_file=None, args=None, opts=None)
