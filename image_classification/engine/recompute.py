"""Gradient checkpointing (TRAIN.RECOMPUTE, timm's `set_grad_checkpointing`) for every family.

A checkpointed block keeps only its inputs during the forward pass; its
activations are computed again in the backward pass, so training memory no
longer grows with depth x activations, at the price of one more forward per
block.  The mechanism lives here once: each model's block loop calls
`run_block(self, block, *inputs)`, and `set_grad_checkpointing(model, enable)`
switches every such loop of a model.

Implementation: Paddle's `paddle.distributed.fleet.utils.recompute` with
`use_reentrant=False` (saved-tensor hooks) and `preserve_rng_state=True`:

- the non-reentrant form gives parameters their gradients even when the block's
  input needs none (the reentrant PyLayer form returns an output with
  `stop_gradient=True` then, and the block would silently not train, e.g. after
  a frozen patch embedding), and leaves DataParallel's gradient hooks on the
  parameters as in a plain backward;
- `preserve_rng_state` replays Paddle's generator (and numpy's, Python's) in the
  recomputation, so dropout, attention dropout and drop path draw the same masks
  twice: loss and gradients equal the run without checkpointing (tested per
  family with drop path on).

Only a block run with gradients, in training mode, in dygraph is checkpointed:
evaluation, `no_grad` and traced graphs (export) run it plainly.
"""
import functools

import paddle

__all__ = ['run_block', 'set_grad_checkpointing', 'GradCheckpointing']


def run_block(owner, block, *inputs, **options):
    """`block(*inputs, **options)`, checkpointed when `owner.grad_checkpointing` is set.

    `options` are non-tensor arguments (a grid size, a flag); they are bound to
    the call rather than passed through `recompute`, which treats its keyword
    arguments as its own.
    """
    if (getattr(owner, 'grad_checkpointing', False) and block.training and paddle.in_dynamic_mode()
            and paddle.is_grad_enabled()):
        from paddle.distributed.fleet.utils import recompute
        function = functools.partial(block, **options) if options else block
        return recompute(function, *inputs, preserve_rng_state=True, use_reentrant=False)
    return block(*inputs, **options)


def set_grad_checkpointing(model, enable=True):
    """Switch checkpointing of every block loop in `model` (each layer declaring a
    `grad_checkpointing` attribute, the model itself included); returns `model`."""
    model = getattr(model, '_layers', model)    # a DataParallel wrapper
    found = False
    for layer in [model] + list(model.sublayers()):
        if 'grad_checkpointing' in layer.__dict__:
            layer.grad_checkpointing = bool(enable)
            found = True
    if not found:
        raise ValueError(f'{type(model).__name__} has no block loop that supports gradient checkpointing')
    return model


class GradCheckpointing:
    """Mixin for a model: `model.set_grad_checkpointing(enable=True)` as in timm."""

    def set_grad_checkpointing(self, enable=True):
        return set_grad_checkpointing(self, enable)
