"""PerViT configuration: the shared defaults plus PerViT's architecture keys (PerViT-T by default)."""
from engine.config import make_get_config


def _defaults(c):
    c.MODEL.TYPE = 'PerViT'
    c.MODEL.NAME = 'pervit_tiny'
    c.MODEL.NUM_HEADS = 4                        # heads of every block (the official models keep it fixed)
    c.MODEL.EMBED_DIMS = [128, 192, 224, 280]    # token width of each stage
    c.MODEL.DEPTHS = [2, 2, 6, 2]                # blocks per stage (fixed in the official code)
    c.MODEL.STEM_DIMS = [48, 64, 96, 128]        # output channels of the four stride-2 stem convs
    c.MODEL.MLP_RATIO = 4.0


get_config = make_get_config(_defaults)   # get_config(cfg_file=None, args=None, opts=None)
