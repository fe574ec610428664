"""Training losses: label-smoothed cross-entropy, soft-target cross-entropy, and which one to use.

- Mixup / CutMix on: `SoftTargetCrossEntropy`; the targets already carry the
  label smoothing (TRAIN.SMOOTHING is folded in by `engine.data.Mixup`).
- Mixup off, TRAIN.SMOOTHING > 0: `LabelSmoothingCrossEntropy(TRAIN.SMOOTHING)`
  (PaddleViT used its default 0.1 here whatever the config said).
- Otherwise: plain cross-entropy.
Losses are computed in float32 whatever the logits' dtype (AMP), and averaged
over the batch.
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

__all__ = ['LabelSmoothingCrossEntropy', 'SoftTargetCrossEntropy', 'CrossEntropy', 'build_criterion']


def _hard_labels(labels):
    return labels.reshape([-1]).astype('int64')


class LabelSmoothingCrossEntropy(nn.Layer):
    """(1 - s) * NLL(label) + s * mean over classes of -log p: the smoothed target puts
    1 - s + s/K on the label and s/K elsewhere."""

    def __init__(self, smoothing=0.1):
        super().__init__()
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f'label smoothing must be in [0, 1), got {smoothing}')
        self.smoothing = smoothing

    def forward(self, logits, labels):
        log_probs = F.log_softmax(logits.astype('float32'), axis=-1)
        nll = -paddle.take_along_axis(log_probs, _hard_labels(labels).unsqueeze(-1), axis=-1).squeeze(-1)
        uniform = -log_probs.mean(axis=-1)
        return ((1.0 - self.smoothing) * nll + self.smoothing * uniform).mean()

    def extra_repr(self):
        return f'smoothing={self.smoothing}'


class SoftTargetCrossEntropy(nn.Layer):
    """sum_k -target_k * log p_k, for [B, K] soft targets (Mixup / CutMix)."""

    def forward(self, logits, targets):
        log_probs = F.log_softmax(logits.astype('float32'), axis=-1)
        return (-targets.astype('float32') * log_probs).sum(axis=-1).mean()


class CrossEntropy(nn.Layer):
    """Plain cross-entropy on integer labels of shape [B] or [B, 1]."""

    def forward(self, logits, labels):
        return F.cross_entropy(logits.astype('float32'), _hard_labels(labels))


def build_criterion(config, mixup_active):
    """The training loss for this config; `mixup_active`: the batches carry soft targets."""
    if mixup_active:
        return SoftTargetCrossEntropy()
    if config.TRAIN.SMOOTHING > 0:
        return LabelSmoothingCrossEntropy(config.TRAIN.SMOOTHING)
    return CrossEntropy()
