"""ViT configuration: the shared defaults plus ViT's architecture keys.

Defaults describe ViT-B/16 at 224 (ViT-pytorch's `get_b16_config`); each YAML in
`configs/` sets one variant.  The hybrid R50+ViT is the same model with
MODEL.RESNET_LAYERS set (ResNetV2 units per stage, [3, 4, 9] for R50); its
MODEL.PATCH_SIZE counts input pixels (16 = one token per 16x16 pixels = one
ResNet feature, ViT-pytorch's `grid` of 14x14 at 224).
"""
from engine.config import Check, Rule, at_least, each, greater_than, make_get_config, one_of, typed


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
    c.MODEL.RESNET_LAYERS = typed([], [int])   # [] = plain ViT; [3, 4, 9] = R50 stem (hybrid)
    c.MODEL.RESNET_WIDTH = 1.0         # ResNetV2 width factor (64 * it channels at the root)
    # how pos_embed is resized for another image size: 'zoom_linear' is Google's and
    # ViT-pytorch's load_from (scipy.ndimage.zoom order=1), 'bicubic' is timm/DeiT's.
    c.MODEL.POS_EMBED_RESIZE = 'zoom_linear'
    # False: DATA.IMAGE_SIZE must be a multiple of PATCH_SIZE.  True: the patch conv floors, and the
    # last IMAGE_SIZE % PATCH_SIZE pixel rows and columns are never seen (ViT-H/14 at 384: 27 x 27
    # patches cover 378 pixels), as the official code does at that size.
    c.MODEL.IGNORE_EDGE_PIXELS = False
    # ViT-pytorch: dropout_rate 0.1, attention_dropout_rate 0.0, no stochastic depth
    c.MODEL.DROPOUT = 0.1
    c.MODEL.ATTENTION_DROPOUT = 0.0
    c.MODEL.DROPPATH = 0.0
    # ViT-pytorch / Google eval: resize to IMAGE_SIZE (no crop), bilinear, mean = std = 0.5
    c.DATA.CROP_PCT = 1.0
    c.DATA.INTERPOLATION = 'bilinear'
    c.DATA.MEAN = [0.5, 0.5, 0.5]
    c.DATA.STD = [0.5, 0.5, 0.5]




RULES = {
    'MODEL.PATCH_SIZE': (at_least(1),),
    'MODEL.EMBED_DIM': (at_least(1),),
    'MODEL.DEPTH': (at_least(1),),
    'MODEL.NUM_HEADS': (at_least(1),),
    'MODEL.MLP_DIM': (at_least(1),),
    'MODEL.REPRESENTATION_SIZE': (at_least(0),),
    # the R50 stem has exactly three stages (total stride 16 with the root's 4)
    'MODEL.RESNET_LAYERS': (Rule(lambda v, c: len(v) in (0, 3), '[] (plain ViT) or 3 values, one per '
                                 'ResNet stage'), each(at_least(1))),
    'MODEL.RESNET_WIDTH': (greater_than(0),),
    'MODEL.POS_EMBED_RESIZE': (one_of('zoom_linear', 'bicubic'),),
}

# vit.py: the patch conv (kernel = stride = PATCH_SIZE) tiles the image, or the hybrid's stride-16
# ResNet map, with no overlap and no padding: a size that is not a multiple leaves pixels unseen.
CHECKS = (
    Check(('DATA.IMAGE_SIZE', 'MODEL.PATCH_SIZE', 'MODEL.IGNORE_EDGE_PIXELS'),
          lambda size, patch, ignore_edge: size % patch == 0 or (ignore_edge and size >= patch),
          'DATA.IMAGE_SIZE must be a multiple of MODEL.PATCH_SIZE, or the last pixels are never seen '
          '(MODEL.IGNORE_EDGE_PIXELS True accepts that, as the official ViT-H/14 at 384 does)'),
    Check(('MODEL.RESNET_LAYERS', 'MODEL.PATCH_SIZE'), lambda layers, patch: not layers or patch % 16 == 0,
          'a hybrid ViT (MODEL.RESNET_LAYERS set) needs MODEL.PATCH_SIZE a multiple of the ResNet stride 16'),
    Check(('MODEL.RESNET_LAYERS', 'DATA.IMAGE_SIZE'), lambda layers, size: not layers or size % 16 == 0,
          'a hybrid ViT (MODEL.RESNET_LAYERS set) needs DATA.IMAGE_SIZE a multiple of the ResNet stride 16 '
          '(its feature map must match the position embedding)'),
    Check(('MODEL.EMBED_DIM', 'MODEL.NUM_HEADS'), lambda dim, heads: dim % heads == 0,
          'MODEL.EMBED_DIM must be a multiple of MODEL.NUM_HEADS (equal heads)'),
)

get_config = make_get_config(_defaults, RULES, CHECKS)
