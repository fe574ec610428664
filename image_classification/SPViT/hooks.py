"""SP-ViT's launcher extensions: Token Labeling training (engine/token_labeling.py).

With TRAIN.TOKEN_LABEL.ENABLE the model returns `DenseOutput` in training and
  - the training set is a `TokenLabelDataset` when TRAIN.TOKEN_LABEL.DATA_DIR
    names the label maps (otherwise the engine's list dataset: every token is
    then trained towards the image's class, the official fallback);
  - each batch's soft class and token targets are built by `TokenLabelMixup`
    (plus Mixup / CutMix when TRAIN.MIXUP_ALPHA / CUTMIX_ALPHA are set);
  - the loss is `TokenLabelCrossEntropy` (DENSE_WEIGHT, CLS_WEIGHT).
With ENABLE False the model trains on its evaluation output (class head + 0.5 x
max of the token head) with the engine's Mixup and cross-entropy.
"""
from engine.hooks import FamilyHooks
from engine.token_labeling import TokenLabelCrossEntropy, TokenLabelMixup, build_token_label_dataset


def label_size(config):
    """Side of the token-target grid: the patch grid's (the official --token-label-size 14 at 224, 24 at 384)."""
    return config.DATA.IMAGE_SIZE // config.MODEL.PATCH_SIZE


class SPViTHooks(FamilyHooks):
    def add_arguments(self, parser):
        parser.add_argument('-token_label_dir', type=str, default=None,
                            help='label maps of the training list (TRAIN.TOKEN_LABEL.DATA_DIR), '
                                 'made by tools/generate_label.py')

    def build_dataset(self, config, mode):
        token_label = config.TRAIN.TOKEN_LABEL
        if mode != 'train' or not (token_label.ENABLE and token_label.DATA_DIR):
            return None
        return build_token_label_dataset(config, token_label.DATA_DIR, token_label.LABEL_REGION)

    def build_batch_mix(self, config):
        if not config.TRAIN.TOKEN_LABEL.ENABLE:
            return None
        return TokenLabelMixup.from_config(config, label_size(config))

    def build_criterion(self, config):
        token_label = config.TRAIN.TOKEN_LABEL
        if not token_label.ENABLE:
            return None
        return TokenLabelCrossEntropy(token_label.DENSE_WEIGHT, token_label.CLS_WEIGHT)
