"""SP-ViT configuration: the shared defaults plus SP-ViT's architecture and Token Labeling keys.

The defaults describe SP-ViT-S at 224; each file in `configs/` sets a variant,
its official training recipe and its evaluation preprocessing.
"""
from engine.config import CN, Check, at_least, greater_than, make_get_config, multiple_of, one_of, optional


def _defaults(c):
    c.MODEL.TYPE = 'SPViT'
    c.MODEL.NAME = 'spvit_s_224'
    c.MODEL.PATCH_SIZE = 16
    c.MODEL.EMBED_DIM = 384
    c.MODEL.DEPTH = 16
    c.MODEL.NUM_HEADS = 6
    c.MODEL.MLP_RATIO = 3.0
    c.MODEL.QKV_BIAS = False
    c.MODEL.QK_SCALE = optional(float)     # None: head_dim ** -0.5 (the only value supported)
    c.MODEL.PATCH_EMBED = '4_2'        # conv stem of 64 channels; '4_2_128': 128 (SP-ViT-L)
    c.MODEL.SKIP_LAM = 2.0             # residual branches are divided by this
    c.MODEL.LOCAL_UP_TO_LAYER = 14     # the class token joins at this block; blocks before it...
    c.MODEL.SP_ATTENTION = True        # ...use spatial-prior attention (False: official SP-ViT-L)
    c.MODEL.POS_CONV = True            # depthwise 3x3 position conv after every block (SP-ViT; LV-ViT has none)
    c.MODEL.NORM_EPS = 1e-5            # LayerNorm epsilon (torch's default, SP-ViT; LV-ViT's segmentation 1e-6)

    # Token Labeling (engine/token_labeling.py): dense per-token targets from label maps
    c.TRAIN.TOKEN_LABEL = CN()
    c.TRAIN.TOKEN_LABEL.ENABLE = True        # train on DenseOutput with the token-label loss; False: plain CE
    c.TRAIN.TOKEN_LABEL.DATA_DIR = ''        # label maps of the training list ('' = class label at every token)
    c.TRAIN.TOKEN_LABEL.DENSE_WEIGHT = 1.0   # weight of the per-token loss
    c.TRAIN.TOKEN_LABEL.CLS_WEIGHT = 1.0     # weight of the class-token loss
    c.TRAIN.TOKEN_LABEL.MIX_TOKEN = True     # MixToken in token space
    c.TRAIN.TOKEN_LABEL.MIX_TOKEN_BETA = 1.0
    c.TRAIN.TOKEN_LABEL.LABEL_REGION = 'center_square'   # where official .pt maps lie in their image



RULES = {
    # the stem halves the image (conv7x7/2), then a (PATCH_SIZE/2)-strided projection
    'MODEL.PATCH_SIZE': (at_least(2), multiple_of(2)),
    'MODEL.EMBED_DIM': (at_least(1),),
    'MODEL.DEPTH': (at_least(1),),
    'MODEL.NUM_HEADS': (at_least(1),),
    'MODEL.MLP_RATIO': (greater_than(0),),
    'MODEL.PATCH_EMBED': (one_of('4_2', '4_2_128'),),
    'MODEL.SKIP_LAM': (greater_than(0),),
    'MODEL.LOCAL_UP_TO_LAYER': (at_least(0),),
    'MODEL.NORM_EPS': (greater_than(0),),
    'TRAIN.TOKEN_LABEL.DENSE_WEIGHT': (at_least(0),),
    'TRAIN.TOKEN_LABEL.CLS_WEIGHT': (at_least(0),),
    'TRAIN.TOKEN_LABEL.MIX_TOKEN_BETA': (greater_than(0),),
    'TRAIN.TOKEN_LABEL.LABEL_REGION': (one_of('center_square', 'full_image'),),
}

# spvit.py: the spatial prior, position embedding and MixToken live on the IMAGE_SIZE / PATCH_SIZE grid.
CHECKS = (
    Check(('DATA.IMAGE_SIZE', 'MODEL.PATCH_SIZE'), lambda size, patch: size % patch == 0,
          'DATA.IMAGE_SIZE must be a multiple of MODEL.PATCH_SIZE (the patches tile the image)'),
    Check(('MODEL.EMBED_DIM', 'MODEL.NUM_HEADS'), lambda dim, heads: dim % heads == 0,
          'MODEL.EMBED_DIM must be a multiple of MODEL.NUM_HEADS (equal heads)'),
    Check(('MODEL.LOCAL_UP_TO_LAYER', 'MODEL.DEPTH'), lambda local, depth: local < depth,
          'MODEL.LOCAL_UP_TO_LAYER (the block where the class token joins) must be below MODEL.DEPTH'),
    Check(('MODEL.QK_SCALE', 'MODEL.EMBED_DIM', 'MODEL.NUM_HEADS'),
          lambda scale, dim, heads: abs(scale - (dim // heads) ** -0.5) < 1e-12,
          'MODEL.QK_SCALE other than head_dim ** -0.5 is not supported: leave it None'),
)

_get_config = make_get_config(_defaults, RULES, CHECKS)


def get_config(cfg_file=None, args=None, opts=None):
    """The config of a run; the flag `-token_label_dir` (hooks.py) sets TRAIN.TOKEN_LABEL.DATA_DIR,
    before any `-opts`."""
    label_dir = getattr(args, 'token_label_dir', None)
    extra = ['TRAIN.TOKEN_LABEL.DATA_DIR', label_dir] if label_dir else []
    return _get_config(cfg_file, args, extra + list(opts or []))


get_config.kinds = _get_config.kinds   # each key's type, as every family's get_config has
