"""Knowledge distillation from a fixed teacher, as in DeiT (Touvron et al., 2021).

A student with a distillation token (PiT / DeiT `_distilled` models) returns
(class logits, distillation logits) in training.  The class logits learn the
labels through the usual criterion; the distillation logits learn the
teacher's predictions on the same (augmented, mixed) images:

    loss = (1 - alpha) * base(cls, labels) + alpha * distill(dist, teacher(images))

    soft: tau^2 * KL(softmax(teacher / tau) || softmax(dist / tau)),
          summed over classes, averaged over the batch
    hard: cross-entropy of dist against the teacher's argmax

The teacher is built from its own config (TRAIN.TEACHER_CONFIG, any family),
loaded strictly from TRAIN.TEACHER_MODEL (`-teacher_model_path`), kept in eval
mode and never receives gradients.  It runs under whatever autocast context
the caller opened for the student, so under AMP it computes in the same
precision; under AMP O2 its weights are cast like the student's.

Two bugs of PaddleViT's copy are avoided here (and tested):
- its soft loss called `F.kl_div` on log-probability targets without
  `log_target`, which zeroes every term whose target is <= 0, i.e. all of
  them: the soft loss was always 0.  The KL divergence is written out below.
- the distilled architecture was picked by a training flag; here it is the
  model config's (`MODEL.DISTILLED`), and a plain-logits model asked to
  distill is an error instead of a silent no-op.

One difference from DeiT's code is deliberate: DeiT divides the summed KL by
`outputs.numel()` (batch x classes, "legacy PyTorch behaviour", its issue #61),
which makes the soft term 1/num_classes of the usual KD loss.  Here the KL is
averaged over the batch (PyTorch's `reduction='batchmean'`, the textbook
Hinton loss); `soft_reduction='numel'` reproduces DeiT's scale exactly.
"""
import os

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .config import ConfigError
from .families import ROOT, build_from_config
from .weights import load_weights

__all__ = ['DistillationLoss', 'build_teacher', 'soft_distillation_loss', 'hard_distillation_loss',
           'DISTILLATION_TYPES']

DISTILLATION_TYPES = ('none', 'soft', 'hard')


def _resolve_teacher_config(path):
    """The teacher YAML: as given (relative to the working directory), else relative to image_classification/."""
    candidates = [path] if os.path.isabs(path) else [path, os.path.join(ROOT, path)]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise ConfigError(f'TRAIN.TEACHER_CONFIG {path!r} not found (looked for: {", ".join(candidates)})')


def build_teacher(config, log=print):
    """The frozen teacher for `config`, or None when TRAIN.DISTILLATION_TYPE is 'none'.

    The teacher's family and architecture come from TRAIN.TEACHER_CONFIG (its
    MODEL.NUM_CLASSES is set to the student's); its weights from
    TRAIN.TEACHER_MODEL, which must fit it exactly (keys and shapes).
    """
    kind = config.TRAIN.DISTILLATION_TYPE
    if kind not in DISTILLATION_TYPES:
        raise ConfigError(f'TRAIN.DISTILLATION_TYPE must be one of {DISTILLATION_TYPES}, got {kind!r}')
    if kind == 'none':
        return None
    if not config.TRAIN.TEACHER_CONFIG:
        raise ConfigError(f'TRAIN.DISTILLATION_TYPE is {kind!r} but TRAIN.TEACHER_CONFIG (the teacher\'s '
                          f'YAML, e.g. RegNet/configs/regnety_160.yaml) is not set')
    weights = config.TRAIN.TEACHER_MODEL
    if not weights:
        raise ConfigError(f'TRAIN.DISTILLATION_TYPE is {kind!r} but no teacher weights were given: '
                          f'set TRAIN.TEACHER_MODEL or pass -teacher_model_path TEACHER.pdparams')
    if not weights.endswith('.pdparams'):
        weights += '.pdparams'
    if not os.path.isfile(weights):
        raise FileNotFoundError(f'teacher weights not found: {weights} (TRAIN.TEACHER_MODEL / -teacher_model_path)')

    cfg_file = _resolve_teacher_config(config.TRAIN.TEACHER_CONFIG)
    teacher_config, teacher = build_from_config(
        cfg_file, opts=['MODEL.NUM_CLASSES', str(config.MODEL.NUM_CLASSES)])
    load_weights(teacher, weights, what='teacher', log=None)   # exactly: no resize, no head dropped
    teacher.eval()
    for p in teacher.parameters():
        p.stop_gradient = True
    if config.AMP and config.AMP_LEVEL == 'O2' and paddle.get_device().startswith('gpu'):
        teacher = paddle.amp.decorate(models=teacher, level='O2', dtype=config.AMP_DTYPE)
    log(f'teacher: {teacher_config.MODEL.NAME} ({teacher_config.MODEL.TYPE}, {cfg_file}) '
        f'loaded from {weights}, frozen')
    return teacher


def soft_distillation_loss(student_logits, teacher_logits, tau=1.0, reduction='batchmean'):
    """tau^2 * KL(softmax(teacher/tau) || softmax(student/tau)): summed over classes, then
    averaged over the batch ('batchmean') or divided by batch x classes ('numel', DeiT's code)."""
    log_p_student = F.log_softmax(student_logits.astype('float32') / tau, axis=-1)
    log_p_teacher = F.log_softmax(teacher_logits.astype('float32') / tau, axis=-1)
    kl = (paddle.exp(log_p_teacher) * (log_p_teacher - log_p_student)).sum()
    if reduction == 'batchmean':
        kl = kl / student_logits.shape[0]
    elif reduction == 'numel':
        kl = kl / (student_logits.shape[0] * student_logits.shape[-1])
    else:
        raise ValueError(f"reduction must be 'batchmean' or 'numel', got {reduction!r}")
    return kl * (tau * tau)


def hard_distillation_loss(student_logits, teacher_logits):
    """Cross-entropy of the student against the teacher's argmax class."""
    return F.cross_entropy(student_logits.astype('float32'), teacher_logits.argmax(axis=-1))


class DistillationLoss(nn.Layer):
    """DeiT's loss: the base criterion on the class head plus a distillation term on the dist head.

    Called by the trainer as `loss(images, outputs, labels)`; `outputs` is the
    student's (cls, dist) pair in training, `labels` whatever the base
    criterion takes (class ids, or soft targets under mixup/cutmix).
    """

    def __init__(self, base_criterion, teacher, distillation_type, alpha=0.5, tau=1.0,
                 soft_reduction='numel'):
        super().__init__()
        if distillation_type not in DISTILLATION_TYPES:
            raise ValueError(f'distillation_type must be one of {DISTILLATION_TYPES}, got {distillation_type!r}')
        if distillation_type != 'none' and teacher is None:
            raise ValueError(f'{distillation_type!r} distillation needs a teacher model')
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f'distillation alpha must be in [0, 1], got {alpha}')
        if tau <= 0:
            raise ValueError(f'distillation tau must be positive, got {tau}')
        self.base_criterion = base_criterion
        self.teacher = teacher
        self.distillation_type = distillation_type
        self.alpha = alpha
        self.tau = tau
        self.soft_reduction = soft_reduction

    def forward(self, inputs, outputs, labels):
        outputs_dist = None
        if isinstance(outputs, (tuple, list)):
            outputs, outputs_dist = outputs
        base_loss = self.base_criterion(outputs, labels)
        if self.distillation_type == 'none':
            return base_loss
        if outputs_dist is None:
            raise ValueError(
                'distillation is on (TRAIN.DISTILLATION_TYPE) but the model returned plain logits: '
                'use a model with a distillation token (e.g. MODEL.DISTILLED: True), which returns '
                '(class logits, distillation logits) in training mode')
        if self.teacher.training:   # e.g. a caller ran .train() on this loss: the teacher stays frozen
            self.teacher.eval()
        with paddle.no_grad():
            teacher_outputs = self.teacher(inputs)
        teacher_outputs = teacher_outputs.detach()
        if self.distillation_type == 'soft':
            distill = soft_distillation_loss(outputs_dist, teacher_outputs, self.tau, self.soft_reduction)
        else:
            distill = hard_distillation_loss(outputs_dist, teacher_outputs)
        return base_loss * (1 - self.alpha) + distill * self.alpha
