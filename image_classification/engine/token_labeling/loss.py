"""The token-labeling loss: the class token against its target, every patch token against its own."""
import paddle
import paddle.nn.functional as F

from ..data.mixup import mix_with_flipped
from .model import DenseOutput, MixToken
from .targets import TokenLabelTargets

__all__ = ['soft_cross_entropy', 'TokenLabelCrossEntropy']


def soft_cross_entropy(logits, target):
    """Mean over rows of -sum(target * log_softmax(logits)) (last axis = classes)."""
    return paddle.sum(-target * F.log_softmax(logits.astype('float32'), axis=-1), axis=-1).mean()


class TokenLabelCrossEntropy:
    """The token-labeling loss (official `TokenLabelCrossEntropy`):

        cls_weight * softCE(cls_logits, cls target mixed by the MixToken lam)
      + dense_weight * mean over B*N tokens of softCE(token logits, token targets)

    The model has already moved its MixToken-mixed token predictions back to
    their source images, so token targets need no mixing; the class target of
    image i becomes lam * t_i + (1 - lam) * t_(B-1-i), lam = 1 - box area / N.
    """

    def __init__(self, dense_weight=1.0, cls_weight=1.0):
        if dense_weight + cls_weight <= 0:
            raise ValueError('dense_weight + cls_weight must be positive')
        self.dense_weight, self.cls_weight = dense_weight, cls_weight

    @staticmethod
    def class_target(cls_target, box, num_tokens):
        """The class target of the MixToken-mixed images: lam * own + (1 - lam) * partner's."""
        lam = MixToken.lam(box, num_tokens)
        if lam >= 1:
            return cls_target
        return mix_with_flipped(cls_target, lam)

    def __call__(self, outputs, targets):
        if not isinstance(outputs, DenseOutput):
            raise TypeError('the token-labeling loss needs the model\'s DenseOutput '
                            '(is TRAIN.TOKEN_LABEL.ENABLE set for the model too?)')
        if not isinstance(targets, TokenLabelTargets):
            raise TypeError('the token-labeling loss needs TokenLabelTargets (from TokenLabelMixup)')
        B, N, C = outputs.aux_logits.shape
        cls_target = self.class_target(targets.cls, outputs.box, N)
        dense_target = targets.dense
        if dense_target is None:
            dense_target = targets.cls.unsqueeze(1).expand([B, N, C])
        elif dense_target.shape[1] != N:
            raise ValueError(f'token targets have {dense_target.shape[1]} tokens, the model {N}: the '
                             f'label size must be the side of the patch grid')
        loss_cls = soft_cross_entropy(outputs.cls_logits, cls_target)
        loss_dense = soft_cross_entropy(outputs.aux_logits.reshape([B * N, C]), dense_target.reshape([B * N, C]))
        return self.cls_weight * loss_cls + self.dense_weight * loss_dense
