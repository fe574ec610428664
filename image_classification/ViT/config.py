"""ViT configuration: the shared defaults plus ViT's architecture keys.

Defaults describe ViT-B/16 at 224 (ViT-pytorch's `get_b16_config`); each YAML in
`configs/` sets one variant.  The hybrid R50+ViT is the same model with
MODEL.RESNET_LAYERS set (ResNetV2 units per stage, [3, 4, 9] for R50); its
MODEL.PATCH_SIZE counts input pixels (16 = one token per 16x16 pixels = one
ResNet feature, ViT-pytorch's `grid` of 14x14 at 224).
"""
from engine.config import make_get_config


def _defaults(c):
    c.MODEL.TYPE = 'ViT'
    c.MODEL.NAME = 'vit_base_patch16_224'
    c.MODEL.PATCH_SIZE = 16
    c.MODEL.EMBED_DIM = 768            # hidden_size
    c.MODEL.DEPTH = 12                 # transformer.num_layers
    c.MODEL.NUM_HEADS = 12
    c.MODEL.MLP_DIM = 3072
    # Google's ImageNet-21k checkpoints end in Linear(hidden, hidden) + tanh
    # ('pre_logits'); 0 leaves it out, as ViT-pytorch and fine-tuned models do.
    c.MODEL.REPRESENTATION_SIZE = 0
    # start the classifier at zero, as ViT-pytorch's train.py always builds it (zero_head=True);
    # the configs that fine-tune from ImageNet-21k set it
    c.MODEL.ZERO_HEAD = False
    c.MODEL.RESNET_LAYERS = []         # [] = plain ViT; [3, 4, 9] = R50 stem (hybrid)
    c.MODEL.RESNET_WIDTH = 1.0         # ResNetV2 width factor (64 * it channels at the root)
    # how pos_embed is resized for another image size: 'zoom_linear' is Google's and
    # ViT-pytorch's load_from (scipy.ndimage.zoom order=1), 'bicubic' is timm/DeiT's.
    c.MODEL.POS_EMBED_RESIZE = 'zoom_linear'
    # ViT-pytorch: dropout_rate 0.1, attention_dropout_rate 0.0, no stochastic depth
    c.MODEL.DROPOUT = 0.1
    c.MODEL.ATTENTION_DROPOUT = 0.0
    c.MODEL.DROPPATH = 0.0
    # ViT-pytorch / Google eval: resize to IMAGE_SIZE (no crop), bilinear, mean = std = 0.5
    c.DATA.CROP_PCT = 1.0
    c.DATA.INTERPOLATION = 'bilinear'
    c.DATA.MEAN = [0.5, 0.5, 0.5]
    c.DATA.STD = [0.5, 0.5, 0.5]


get_config = make_get_config(_defaults)
