"""Token Labeling (Jiang et al., "All Tokens Matter", NeurIPS 2021), for any model with dense outputs.

Every patch token gets its own soft target, read from a label map that a
strong classifier produced for the whole training image (`tools/generate_label.py`).
A model that takes part returns, in training, `DenseOutput(cls_logits,
aux_logits, box)`: the class-token logits, one logit vector per patch token,
and the MixToken box it used (or None).  The pieces, one module each, in the
order data flows:

1. Label-map files (`label_maps`).  One `.npz` per training image, beside its
   relative path: `<label_dir>/<path/of/image>.npz` holding `scores` float16
   [k, H, W] (the teacher's top-k logits at every position of an H x W grid),
   `indices` int16/int32 [k, H, W] (their classes) and `region` float32 [4]:
   (top, left, height, width) of the part of the image the grid covers, as
   fractions of the image.  The official TokenLabeling `.pt` files are read too.
2. Label-aware transforms (`transforms.TokenLabelTransform`) and the dataset
   that applies them (`dataset.TokenLabelDataset`), in the official order: a
   horizontal flip flips the image and the label map together; RandAugment's
   geometric ops move the map with the image; RandomResizedCrop records its crop
   as a box in label-map coordinates.  Colour changes and random erasing touch
   the image only.
3. Targets (`targets.token_label_targets`, on the device, per batch): the
   top-k maps are scattered into dense [C, H, W] maps, the crop box is cut out
   with RoIAlign (`label_size` x `label_size` cells for the tokens plus one cell
   over the whole box for the class token), softmax over classes, then label
   smoothing.  Batch Mixup / CutMix (`targets.TokenLabelMixup`, off in the
   official recipes) is the shared `engine.data.mixup.Mixup` draw
   (`draw_batch`), whose lam mixes the targets too.
4. MixToken (`model.MixToken`; `model.DenseOutput` is the model's output): the
   model replaces a random box of the token grid of each image by the tokens of
   the image at the mirrored batch position, and puts the per-token predictions
   back afterwards; the class target is mixed by the token area, 1 - area / N.
5. Loss (`loss.TokenLabelCrossEntropy`): cls_weight * softCE(class logits,
   class target) + dense_weight * mean over all tokens of softCE(token logits,
   token target).

`from engine.token_labeling import X` gives every public name of the modules.
"""
from .dataset import TokenLabelDataset, build_token_label_dataset
from .label_maps import LABEL_REGIONS, LabelMap, label_map_path, load_label_map, save_label_map
from .loss import TokenLabelCrossEntropy, soft_cross_entropy
from .model import DenseOutput, MixToken, TokenBox
from .targets import TokenLabelMixup, TokenLabelTargets, one_hot_targets, token_label_targets
from .transforms import (ImageWithLabelMap, LabelAutoAugment, LabelRandAugment, TokenLabelTransform,
                         affine_label_map, crop_box_in_label_map, geometric_op_matrix, hflip_label_map)

__all__ = [
    'DenseOutput', 'TokenLabelTargets', 'TokenBox', 'LabelMap', 'LABEL_REGIONS',
    'save_label_map', 'load_label_map', 'label_map_path', 'hflip_label_map', 'crop_box_in_label_map',
    'geometric_op_matrix', 'affine_label_map', 'LabelRandAugment', 'LabelAutoAugment',
    'ImageWithLabelMap', 'TokenLabelTransform', 'TokenLabelDataset', 'build_token_label_dataset',
    'token_label_targets', 'one_hot_targets', 'MixToken', 'TokenLabelMixup',
    'TokenLabelCrossEntropy', 'soft_cross_entropy',
]
