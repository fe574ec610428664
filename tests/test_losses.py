"""engine.losses against hand-computed numpy values, and which loss the config selects."""
import numpy as np
import paddle
import pytest

from engine import losses
from engine.config import base_config

LOGITS = np.array([[2.0, -1.0, 0.5, 0.0],
                   [0.1, 0.2, 3.0, -2.0],
                   [-1.0, -1.0, -1.0, 4.0]], dtype=np.float32)
LABELS = np.array([0, 3, 3])


def log_softmax(x):
    x = x.astype(np.float64)
    return x - x.max(1, keepdims=True) - np.log(np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True))


def config(smoothing):
    c = base_config()
    c.TRAIN.SMOOTHING = smoothing
    return c


@pytest.mark.parametrize('smoothing', [0.0, 0.1, 0.3])
def test_label_smoothing_cross_entropy_by_hand(smoothing):
    logp = log_softmax(LOGITS)
    k = LOGITS.shape[1]
    target = np.full(LOGITS.shape, smoothing / k)
    target[np.arange(3), LABELS] += 1.0 - smoothing
    expected = -(target * logp).sum(1).mean()
    loss = losses.LabelSmoothingCrossEntropy(smoothing)(paddle.to_tensor(LOGITS), paddle.to_tensor(LABELS))
    assert loss.shape == [] and abs(loss.item() - expected) < 1e-6
    # labels shaped [B, 1], as some loaders give them
    loss_col = losses.LabelSmoothingCrossEntropy(smoothing)(paddle.to_tensor(LOGITS),
                                                           paddle.to_tensor(LABELS[:, None]))
    assert abs(loss_col.item() - expected) < 1e-6


def test_soft_target_cross_entropy_by_hand():
    targets = np.array([[0.7, 0.1, 0.1, 0.1], [0.0, 0.5, 0.0, 0.5], [0.25, 0.25, 0.25, 0.25]], np.float32)
    expected = -(targets * log_softmax(LOGITS)).sum(1).mean()
    loss = losses.SoftTargetCrossEntropy()(paddle.to_tensor(LOGITS), paddle.to_tensor(targets))
    assert abs(loss.item() - expected) < 1e-6


def test_fp16_logits_computed_in_fp32():
    logits = paddle.to_tensor(LOGITS * 8).astype('float16')
    loss = losses.LabelSmoothingCrossEntropy(0.1)(logits, paddle.to_tensor(LABELS))
    assert loss.dtype == paddle.float32 and np.isfinite(loss.item())


def test_build_criterion_uses_config_smoothing():
    soft = losses.build_criterion(config(0.1), mixup_active=True)
    assert isinstance(soft, losses.SoftTargetCrossEntropy)
    smoothed = losses.build_criterion(config(0.3), mixup_active=False)   # PaddleViT ignored 0.3
    assert isinstance(smoothed, losses.LabelSmoothingCrossEntropy) and smoothed.smoothing == 0.3
    plain = losses.build_criterion(config(0.0), mixup_active=False)
    expected = -log_softmax(LOGITS)[np.arange(3), LABELS].mean()
    assert abs(plain(paddle.to_tensor(LOGITS), paddle.to_tensor(LABELS)).item() - expected) < 1e-6


def test_smoothing_out_of_range():
    with pytest.raises(ValueError, match='label smoothing'):
        losses.LabelSmoothingCrossEntropy(1.0)
