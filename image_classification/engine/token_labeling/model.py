"""The model side of Token Labeling: what a model that takes part returns, and MixToken.

In training such a model returns `DenseOutput(cls_logits, aux_logits, box)`: the
class-token logits, one logit vector per patch token, and the MixToken box it
used (or None).  MixToken replaces a random box of the token grid of each image
by the tokens of the image at the mirrored batch position, and puts the
per-token predictions back afterwards; the class target is mixed by the token
area, 1 - area / N (see `loss.TokenLabelCrossEntropy`).
"""
import math
from typing import NamedTuple

import numpy as np
import paddle

__all__ = ['DenseOutput', 'TokenBox', 'MixToken']


class DenseOutput(dict):
    """What a model returns in token-labeling training: a dict (so that paddle.DataParallel
    finds its tensors, and the trainer does not take it for a (logits, distilled logits)
    tuple) with attribute access:

        cls_logits  [B, classes]
        aux_logits  [B, N, classes], row-major patch-grid order, MixToken undone
        box         the MixToken TokenBox, or None
    """

    def __init__(self, cls_logits, aux_logits, box=None):
        super().__init__(cls_logits=cls_logits, aux_logits=aux_logits, box=box)

    cls_logits = property(lambda self: self['cls_logits'])
    aux_logits = property(lambda self: self['aux_logits'])
    box = property(lambda self: self['box'])


class TokenBox(NamedTuple):
    """A box of the token grid, rows [top, bottom) and columns [left, right)."""
    top: int
    left: int
    bottom: int
    right: int

    def area(self):
        return max(0, self.bottom - self.top) * max(0, self.right - self.left)


class MixToken:
    """CutMix in token space: a random box of the patch grid of image i is replaced by
    the same box of image B-1-i (the batch flipped), after the patch embedding.

    Box sampling is the official one (lam ~ Beta(beta, beta), a box of side
    sqrt(1 - lam) of the grid around a uniform centre, clipped at the borders).
    Mixing is its own inverse: `mix` pastes the box and `unmix_tokens` (the same
    operation on a [B, N, K] token sequence) puts mixed predictions back.
    """

    def __init__(self, beta=1.0):
        self.beta = beta

    def sample(self, grid):
        """A TokenBox of an (H, W) grid, drawn from numpy's global generator (which the
        trainer reseeds before each step from SEED, rank, epoch and step), in the official
        order of draws."""
        h, w = int(grid[0]), int(grid[1])
        lam = np.random.beta(self.beta, self.beta)
        cut = math.sqrt(1. - lam)
        cut_h, cut_w = int(h * cut), int(w * cut)
        cy, cx = np.random.randint(h), np.random.randint(w)
        return TokenBox(int(np.clip(cy - cut_h // 2, 0, h)), int(np.clip(cx - cut_w // 2, 0, w)),
                        int(np.clip(cy + cut_h // 2, 0, h)), int(np.clip(cx + cut_w // 2, 0, w)))

    @staticmethod
    def mask(grid, box):
        """[H, W] float32: 1 inside the box."""
        m = np.zeros((int(grid[0]), int(grid[1])), dtype=np.float32)
        m[box.top:box.bottom, box.left:box.right] = 1.
        return m

    @staticmethod
    def mix(x, box):
        """x [B, C, H, W]: inside `box`, each image's values become those of the flipped batch."""
        if box is None or box.area() == 0:
            return x
        m = paddle.to_tensor(MixToken.mask(x.shape[2:], box), dtype=x.dtype)
        return x * (1. - m) + x.flip([0]) * m

    @staticmethod
    def unmix_tokens(tokens, grid, box):
        """tokens [B, N, K] in row-major grid order: the same swap, on a token sequence."""
        if box is None or box.area() == 0:
            return tokens
        m = paddle.to_tensor(MixToken.mask(grid, box).reshape(1, -1, 1), dtype=tokens.dtype)
        return tokens * (1. - m) + tokens.flip([0]) * m

    mix_tokens = unmix_tokens   # per-token targets of the mixed batch: the label maps cut the same way

    @staticmethod
    def lam(box, num_tokens):
        """Share of each mixed image's tokens that are its own."""
        return 1.0 if box is None else 1.0 - box.area() / num_tokens
