"""SP-ViT configuration: the shared defaults plus SP-ViT's architecture and Token Labeling keys.

The defaults describe SP-ViT-S at 224; each file in `configs/` sets a variant,
its official training recipe and its evaluation preprocessing.
"""
from engine.config import CN, make_get_config


def _defaults(c):
    c.MODEL.TYPE = 'SPViT'
    c.MODEL.NAME = 'spvit_s_224'
    c.MODEL.PATCH_SIZE = 16
    c.MODEL.EMBED_DIM = 384
    c.MODEL.DEPTH = 16
    c.MODEL.NUM_HEADS = 6
    c.MODEL.MLP_RATIO = 3.0
    c.MODEL.QKV_BIAS = False
    c.MODEL.QK_SCALE = None
    c.MODEL.PATCH_EMBED = '4_2'        # conv stem of 64 channels; '4_2_128': 128 (SP-ViT-L)
    c.MODEL.SKIP_LAM = 2.0             # residual branches are divided by this
    c.MODEL.LOCAL_UP_TO_LAYER = 14     # the class token joins at this block; blocks before it...
    c.MODEL.SP_ATTENTION = True        # ...use spatial-prior attention (False: official SP-ViT-L)

    # Token Labeling (engine/token_labeling.py): dense per-token targets from label maps
    c.TRAIN.TOKEN_LABEL = CN()
    c.TRAIN.TOKEN_LABEL.ENABLE = True        # train on DenseOutput with the token-label loss; False: plain CE
    c.TRAIN.TOKEN_LABEL.DATA_DIR = ''        # label maps of the training list ('' = class label at every token)
    c.TRAIN.TOKEN_LABEL.DENSE_WEIGHT = 1.0   # weight of the per-token loss
    c.TRAIN.TOKEN_LABEL.CLS_WEIGHT = 1.0     # weight of the class-token loss
    c.TRAIN.TOKEN_LABEL.MIX_TOKEN = True     # MixToken in token space
    c.TRAIN.TOKEN_LABEL.MIX_TOKEN_BETA = 1.0
    c.TRAIN.TOKEN_LABEL.LABEL_REGION = 'center_square'   # where official .pt maps lie in their image


_get_config = make_get_config(_defaults)


def get_config(cfg_file=None, args=None, opts=None):
    """The config of a run; the flag `-token_label_dir` (hooks.py) sets TRAIN.TOKEN_LABEL.DATA_DIR,
    before any `-opts`."""
    label_dir = getattr(args, 'token_label_dir', None)
    extra = ['TRAIN.TOKEN_LABEL.DATA_DIR', label_dir] if label_dir else []
    return _get_config(cfg_file, args, extra + list(opts or []))
