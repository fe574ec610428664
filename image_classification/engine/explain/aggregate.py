"""From per-block attention quantities to one token-to-token relevance matrix.

Inputs are per block, for one image: A (probabilities), its gradient dA (of the
explained logit), R_A (LRP relevance of A), each [heads, N, N] with the class
token at index 0.  Outputs are [N, N]; the class token's row over the patches,
`class_row`, is the map.

  rollout           identity added for the residual path, rows renormalised, blocks
                    multiplied: of the head-mean of A, attention rollout (Abnar &
                    Zuidema 2020, class-agnostic); of mean_h((dA * R_A)+), Chefer et
                    al.'s CVPR 2021 `transformer_attribution`.
  gradient_rollout  Chefer et al. (ICCV 2021): R = I, then per block
                    R <- R + mean_h((dA * A)+) R.

`with_class_slot` embeds a block that ran on the patches alone (SP-ViT's
spatial-prior blocks, before the class token joins) into the (1 + N)-token frame:
the class slot maps to itself and nothing else, as the token it stands for
passed those blocks unchanged (it did not yet exist).
"""
import numpy as np


def with_class_slot(matrix, value):
    """[..., N, N] -> [..., 1 + N, 1 + N]: `value` at the class token's diagonal, 0 elsewhere in its row
    and column."""
    out = np.zeros(matrix.shape[:-2] + (matrix.shape[-1] + 1,) * 2, matrix.dtype)
    out[..., 1:, 1:] = matrix
    out[..., 0, 0] = value
    return out


def rollout(matrices):
    """Product of the row-normalised (matrix + I) of each block, last block on the left; matrices [N, N]."""
    joint = None
    for m in matrices:
        m = m + np.eye(m.shape[-1])
        m = m / m.sum(-1, keepdims=True)
        joint = m if joint is None else m @ joint
    return joint


def positive_head_mean(a, b):
    """mean over heads of (a * b) clamped at 0: [heads, N, N] x2 -> [N, N]."""
    return np.maximum(a * b, 0).mean(0)


def gradient_rollout(matrices):
    """ICCV'21 accumulation: R = I, then R <- R + M R for each block's matrix M [N, N] in order."""
    relevance = np.eye(matrices[0].shape[-1])
    for m in matrices:
        relevance = relevance + m @ relevance
    return relevance


def class_row(matrix, grid):
    """The class token's row over the patch tokens (index 1 on), as a [grid_h, grid_w] map."""
    return matrix[0, 1:].reshape(grid)


def grad_cam(activations, gradients):
    """Grad-CAM (Selvaraju et al. 2017) on tokens [N, C] with their gradients: channel weights
    = the gradients averaged over the tokens, map = relu(tokens @ weights), [N]."""
    return np.maximum(activations @ gradients.mean(0), 0)
