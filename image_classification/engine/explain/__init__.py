"""Why did the model choose this class?  Class-specific relevance maps for every family.

    from engine.explain import explain
    result = explain(model, image, 'lrp')          # image [1, 3, H, W], normalised
    result.map, result.class_index, result.probability

Modules, one idea each:
  methods    `explain()`, which method serves which family and why (`SUPPORT`)
  capture    forward hooks that read attention probabilities and layer inputs/outputs
  aggregate  per-block matrices -> one token-to-token relevance (rollouts, Grad-CAM)
  lrp        the relevance pass through ViT / DeiT and SP-ViT
  lrp_rules  the LRP rule of each layer, in closed form
`tools/explain.py` is the command line over it.
"""
from .methods import HEADS, METHODS, SUPPORT, Explanation, ExplainError, explain, supported_methods

__all__ = ['explain', 'supported_methods', 'Explanation', 'ExplainError', 'METHODS', 'HEADS', 'SUPPORT']
