"""`explain(model, image, method)`: one class-specific (or attention) map for one image.

Methods and the families they serve (`SUPPORT`), and why:

  rollout    attention rollout (Abnar & Zuidema 2020), class-agnostic.
  attention  the last block's class-token attention, head-averaged, class-agnostic.
  gradient   Chefer et al., ICCV 2021 ("Generic Attention-model Explainability"):
             needs each block's softmax attention A and the gradient of the logit.
  lrp        Chefer et al., CVPR 2021 (`transformer_attribution`, the maps of the
             SP-ViT README): A's gradient weighted by its LRP relevance, which needs
             an LRP rule for every layer (`lrp.TransformerLRP`).
  gradcam    Grad-CAM (Selvaraju et al. 2017) on the tokens entering the last
             block's attention (its norm1 output), pytorch-grad-cam's choice for
             vision transformers: channel weights from the gradients, no attention.

ViT / DeiT (`VisionTransformer`) and SP-ViT: all five.  The token methods need one
token set kept from the first block to the last with the class token at index 0:
SP-ViT's spatial-prior blocks run on the patches before the class token joins, and
their maps are embedded with a class slot that maps the class token to itself.
PiT, PerViT, VVT: Grad-CAM only.  PiT's pooling changes the token count between
stages, so its blocks' N x N matrices do not compose into one token-to-token
relevance; PerViT and VVT have no class token (their logits read the mean of the
tokens) and VVT's linear attention never forms A.

For SP-ViT, `head='eval'` explains the logit evaluation reports (class head +
0.5 x max of the token-label head), `head='class'` the class head alone.
"""
import math
from typing import NamedTuple

import numpy as np
import paddle
import paddle.nn.functional as F

from ..errors import UserError
from . import aggregate
from .capture import attention_layer_names, recording
from .lrp import TransformerLRP

METHODS = ('rollout', 'attention', 'gradient', 'lrp', 'gradcam')
HEADS = ('eval', 'class')

SUPPORT = {          # model class -> methods it supports
    'VisionTransformer': METHODS,
    'SPViT': METHODS,
    'PoolingTransformer': ('gradcam',),
    'PerViT': ('gradcam',),
    'VicinityVisionTransformer': ('gradcam',),
}


class ExplainError(UserError, ValueError):
    """A request `explain` cannot serve: an unknown method or head, a method the model's family
    does not have (see `SUPPORT`), a class the model does not have."""


class Explanation(NamedTuple):
    map: np.ndarray               # [grid_h, grid_w], float64, >= 0
    class_index: int              # the explained class
    probability: float           # its softmax probability from the model's (eval) logits
    probabilities: np.ndarray     # [classes]


def supported_methods(model):
    """The methods `explain` runs for `model` (by its class, see `SUPPORT`)."""
    return SUPPORT.get(type(model).__name__, ())


def _check(model, method, head):
    if method not in METHODS:
        raise ExplainError(f'method {method!r}: expected one of {", ".join(METHODS)}')
    if head not in HEADS:
        raise ExplainError(f'head {head!r}: expected one of {", ".join(HEADS)}')
    allowed = supported_methods(model)
    if method not in allowed:
        raise ExplainError(
            f'method {method!r} is not available for {type(model).__name__} models; '
            + (f'available: {", ".join(allowed)} (see engine/explain/methods.py for why)' if allowed
               else 'this family has no explanation method'))


def _grid(model):
    return tuple(getattr(model, 'grid', None) or model.patch_embed.grid_size)


def _gradcam_target(model):
    """Name of the last block's norm1 (its output enters the last attention)."""
    return [name for name, _ in model.named_sublayers() if name.endswith('norm1')][-1]


def _prefix_tokens(model):
    cls = getattr(model, 'cls_token', None)
    return cls.shape[1] if cls is not None else 0


def _class_frame(matrices, value, n):
    """Per-block [N_i, N_i] matrices in the (1 + N)-token frame (`aggregate.with_class_slot`)."""
    return [m if m.shape[-1] == n else aggregate.with_class_slot(m, value) for m in matrices]


def _gradients(model, target, tensors):
    """d target / d tensors, with the gradients of every trainable parameter asked for too and
    dropped.  Asked alone, Paddle 3.3.1's `paddle.grad` gives a wrong input gradient for its
    own layer_norm kernel: the LayerNorm scale is left out (the result equals the gradient with
    scale 1), unless the scale's gradient is requested as well (`backward()` is right).  The
    engine's CPU LayerNorm is not affected; Paddle's runs on GPU and without the CPU kernels."""
    params = [p for p in model.parameters() if not p.stop_gradient]
    return paddle.grad(target, list(tensors) + params, allow_unused=True)[:len(tensors)]


def _grad_cam_map(model, tokens, target):
    """Grad-CAM of the scalar `target` on `tokens` [1, prefix + side^2, C] -> [side, side]."""
    (grad,) = _gradients(model, target, [tokens])
    prefix = _prefix_tokens(model)
    activations, gradients = (t.numpy()[0, prefix:].astype(np.float64) for t in (tokens, grad))
    side = math.isqrt(activations.shape[0])
    if side * side != activations.shape[0]:
        raise ExplainError(f'Grad-CAM needs a square token grid, got {activations.shape[0]} tokens')
    return aggregate.grad_cam(activations, gradients).reshape(side, side)


def _token_map(model, method, tensors, target, relevance_of_attention):
    """The class token's map of a token method from the recorded attentions `tensors` (in the
    graph of the scalar `target`); `relevance_of_attention()` runs the LRP pass (lrp only)."""
    attentions = [t.numpy()[0].astype(np.float64) for t in tensors]
    n = 1 + int(np.prod(_grid(model)))
    if method == 'attention':
        matrix = attentions[-1].mean(0)
    elif method == 'rollout':
        matrix = aggregate.rollout(_class_frame([a.mean(0) for a in attentions], 1., n))
    else:
        gradients = [g.numpy()[0].astype(np.float64) for g in _gradients(model, target, tensors)]
        if method == 'gradient':
            weighted = [aggregate.positive_head_mean(g, a) for g, a in zip(gradients, attentions)]
            matrix = aggregate.gradient_rollout(_class_frame(weighted, 0., n))
        else:
            weighted = [aggregate.positive_head_mean(g, r) for g, r in zip(gradients, relevance_of_attention())]
            matrix = aggregate.rollout(_class_frame(weighted, 1., n))
    return aggregate.class_row(matrix, _grid(model))


def explain(model, image, method, class_index=None, head='eval'):
    """The `method` map of `model` (eval mode) for image [1, 3, H, W] (float32, normalised).

    class_index: the class to explain (default: the top-1 prediction).  head: 'eval' or
    'class', the logit explained (see the module docstring; the same for models with
    one head).  Returns an `Explanation`."""
    _check(model, method, head)
    model.eval()
    attention_names = attention_layer_names(model) if method != 'gradcam' else []
    walker = TransformerLRP(model) if method == 'lrp' else None
    gradcam_target = _gradcam_target(model) if method == 'gradcam' else None
    names = ['head'] + attention_names + (walker.record_names() if walker else [])
    names += [gradcam_target] if gradcam_target else []
    x = paddle.to_tensor(np.asarray(image, np.float32))
    with paddle.set_grad_enabled(True), recording(model, list(dict.fromkeys(names))) as rec:
        logits = model(x)
    probabilities = F.softmax(logits.astype('float32'), axis=-1).numpy()[0].astype(np.float64)
    c = int(np.argmax(probabilities)) if class_index is None else int(class_index)
    if not 0 <= c < probabilities.shape[0]:
        raise ExplainError(f'class {c}: the model has {probabilities.shape[0]} classes (0 - '
                           f'{probabilities.shape[0] - 1})')
    target = (rec['head'][1] if head == 'class' else logits)[0, c]
    if gradcam_target:
        result = _grad_cam_map(model, rec[gradcam_target][1], target)
    else:
        result = _token_map(model, method, [rec[name][1] for name in attention_names], target,
                            lambda: walker.relevance(rec, c, head))
    return Explanation(result, c, float(probabilities[c]), probabilities)
