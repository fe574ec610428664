"""Official VVT checkpoints (OpenNLPLab/Vicinity-Vision-Transformer) -> our VVT.

Official layout: `patch_embed{1-4}`, `block{1-4}.{j}`, `norm{1-4}` at the top
level, q/k/v as three Linears, the Feature Preserving Connection as
`attn.se_fc` (a Sequential: 0 = Linear, 2 = Linear) and the depthwise conv
wrapped twice (`mlp.dwconv.dwconv`).  Ours: `stages.{0-3}.{patch_embed,
blocks.{j}, norm}`, one fused `attn.qkv`, `attn.se_fc1/se_fc2`, `mlp.dwconv`.

One pre-step: q_proj, k_proj, v_proj are stacked (in that order) into `qkv`.
Linear weights are transposed (torch [out, in] -> Paddle [in, out]); conv
kernels have the same layout in both.
"""
import re

import numpy as np

from port_weights.keymap import KeyMismatchError, Rule, apply_rules, transpose

__all__ = ['RULES', 'fuse_qkv', 'convert']


def _stage_rules(i):
    """Rules of official stage `i` (1-based) -> our `stages.{i-1}`."""
    s = f'stages.{i - 1}'
    blk = fr'block{i}\.(\d+)'
    return [
        Rule(fr'patch_embed{i}\.proj\.(weight|bias)', fr'{s}.patch_embed.proj.\1'),
        Rule(fr'patch_embed{i}\.norm\.(weight|bias)', fr'{s}.patch_embed.norm.\1'),
        Rule(fr'{blk}\.norm([12])\.(weight|bias)', fr'{s}.blocks.\1.norm\2.\3'),
        Rule(fr'{blk}\.attn\.qkv\.weight', fr'{s}.blocks.\1.attn.qkv.weight', transpose),
        Rule(fr'{blk}\.attn\.qkv\.bias', fr'{s}.blocks.\1.attn.qkv.bias'),
        Rule(fr'{blk}\.attn\.out_proj\.weight', fr'{s}.blocks.\1.attn.out_proj.weight', transpose),
        Rule(fr'{blk}\.attn\.out_proj\.bias', fr'{s}.blocks.\1.attn.out_proj.bias'),
        Rule(fr'{blk}\.attn\.se_fc\.0\.weight', fr'{s}.blocks.\1.attn.se_fc1.weight', transpose),
        Rule(fr'{blk}\.attn\.se_fc\.2\.weight', fr'{s}.blocks.\1.attn.se_fc2.weight', transpose),
        Rule(fr'{blk}\.mlp\.(fc[12])\.weight', fr'{s}.blocks.\1.mlp.\2.weight', transpose),
        Rule(fr'{blk}\.mlp\.(fc[12])\.bias', fr'{s}.blocks.\1.mlp.\2.bias'),
        Rule(fr'{blk}\.mlp\.dwconv\.dwconv\.(weight|bias)', fr'{s}.blocks.\1.mlp.dwconv.\2'),
        Rule(fr'norm{i}\.(weight|bias)', fr'{s}.norm.\1'),
    ]


RULES = [rule for i in (1, 2, 3, 4) for rule in _stage_rules(i)] + [
    Rule(r'head\.weight', 'head.weight', transpose),
    Rule(r'head\.bias', 'head.bias'),
]


def fuse_qkv(state):
    """A copy of `state` with each block's q_proj, k_proj, v_proj stacked into one `qkv`."""
    state = dict(state)
    prefixes = sorted({m.group(1) for k in state for m in [re.fullmatch(r'(.*\.attn)\.q_proj\.weight', k)] if m})
    for prefix in prefixes:
        for kind in ('weight', 'bias'):
            names = [f'{prefix}.{p}_proj.{kind}' for p in ('q', 'k', 'v')]
            missing = [n for n in names if n not in state]
            if missing:
                raise KeyMismatchError(f'official VVT checkpoint lacks {", ".join(missing)}')
            parts = [state.pop(n) for n in names]
            state[f'{prefix}.qkv.{kind}'] = np.concatenate(parts, axis=0)   # torch [out, in]: rows
    return state


def convert(state, config=None):
    """{our name: array} for an official VVT state dict (every key accounted for)."""
    converted, _dropped = apply_rules(fuse_qkv(state), RULES, source='official VVT checkpoint')
    return converted
