"""Read what a model computes inside, by forward hooks on its named sub-layers.

The explanation methods need tensors the model does not return: each block's
attention probabilities A (kept in the autograd graph, so the gradient of a logit
reaches them), and, for LRP, the input and output of every layer a relevance rule
passes through.  Both are read with forward-post hooks on sub-layers found by
their state-dict names (`blocks.3.attn.qkv`, `blocks.3.norm1`, ...), which the
weight files pin, so no model file carries explanation code.

A is read at the attention's `attn_drop` layer: on the plain attention path the
probabilities pass through it (identity in eval), and
`engine.attention_dispatch.explicit_attention()` makes every attention take that
path instead of a fused kernel that never forms A.
"""
import contextlib

import paddle.nn as nn

from ..attention_dispatch import explicit_attention


class Recorder:
    """Records (inputs, output) of chosen sub-layers of `model` during forward passes.

        with Recorder(model, ['blocks.0.norm1', 'head']) as rec:
            logits = model(x)
        x_in, y = rec['head']          # inputs tuple and output of the last call

    Tensors stay in the graph (nothing is detached or copied).  A name the model
    does not have is a KeyError naming it.
    """

    def __init__(self, model, names):
        layers = dict(model.named_sublayers())
        missing = [n for n in names if n not in layers]
        if missing:
            raise KeyError(f'{type(model).__name__} has no sub-layer(s) {missing}')
        self._layers = {n: layers[n] for n in names}
        self._records, self._handles = {}, []

    def __enter__(self):
        for name, layer in self._layers.items():
            self._handles.append(layer.register_forward_post_hook(self._hook(name)))
        return self

    def _hook(self, name):
        def record(layer, inputs, output):
            self._records[name] = (inputs, output)
        return record

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __getitem__(self, name):
        return self._records[name]

    def __contains__(self, name):
        return name in self._records


def attention_layer_names(model):
    """Names of the `attn_drop` dropout layers the attention probabilities pass through,
    in forward order (sub-layer registration order is block order)."""
    return [name for name, layer in model.named_sublayers()
            if name.endswith('attn.attn_drop') and isinstance(layer, nn.Dropout)]


@contextlib.contextmanager
def recording(model, names):
    """`Recorder(model, names)` active, with every attention on the plain (A-forming) path."""
    with explicit_attention(), Recorder(model, names) as recorder:
        yield recorder
