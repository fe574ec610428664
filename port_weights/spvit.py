"""Official SP-ViT checkpoints (ZhouYuxuanYX/SP-ViT, tlt/models/spvit.py) -> our SPViT.

Names are the official ones except the depthwise position convolution, a
one-element Sequential there (`pos_block.proj.0`) and a plain Conv2D here
(`pos_block.proj`).  Linear weights are transposed (torch [out, in] -> Paddle
[in, out]), including the spatial-prior MLP's `attn.w1` (Linear(2, dim));
`attn.w2` [dim, 1] and `attn.b2` [heads] are plain parameters and keep their
layout.  BatchNorm running statistics become `_mean` / `_variance`.  Training
checkpoints (`state_dict`, `state_dict_ema`, `module.`) are unwrapped by
`engine.weights.load_checkpoint`; LV-ViT checkpoints (zihangJiang/TokenLabeling) have the
same names and convert too.
"""
from port_weights.keymap import Rule, apply_rules, bn_rules, transpose

__all__ = ['RULES', 'convert']

_BLK = r'blocks\.(\d+)'

RULES = [
    Rule(r'cls_token', 'cls_token'),
    Rule(r'pos_embed', 'pos_embed'),
    Rule(r'patch_embed\.(conv[123])\.weight', r'patch_embed.\1.weight'),
    *[rule for i in (1, 2, 3) for rule in bn_rules(fr'patch_embed\.bn{i}', f'patch_embed.bn{i}')],
    Rule(r'patch_embed\.proj\.(weight|bias)', r'patch_embed.proj.\1'),
    Rule(fr'{_BLK}\.norm([12])\.(weight|bias)', r'blocks.\1.norm\2.\3'),
    # plain attention
    Rule(fr'{_BLK}\.attn\.qkv\.weight', r'blocks.\1.attn.qkv.weight', transpose),
    Rule(fr'{_BLK}\.attn\.qkv\.bias', r'blocks.\1.attn.qkv.bias'),
    # spatial-prior attention
    Rule(fr'{_BLK}\.attn\.(qk|v|w1)\.weight', r'blocks.\1.attn.\2.weight', transpose),
    Rule(fr'{_BLK}\.attn\.(qk|v|w1)\.bias', r'blocks.\1.attn.\2.bias'),
    Rule(fr'{_BLK}\.attn\.(w2|b2)', r'blocks.\1.attn.\2'),
    # both
    Rule(fr'{_BLK}\.attn\.proj\.weight', r'blocks.\1.attn.proj.weight', transpose),
    Rule(fr'{_BLK}\.attn\.proj\.bias', r'blocks.\1.attn.proj.bias'),
    Rule(fr'{_BLK}\.mlp\.(fc[12])\.weight', r'blocks.\1.mlp.\2.weight', transpose),
    Rule(fr'{_BLK}\.mlp\.(fc[12])\.bias', r'blocks.\1.mlp.\2.bias'),
    Rule(fr'{_BLK}\.pos_block\.proj\.0\.(weight|bias)', r'blocks.\1.pos_block.proj.\2'),
    Rule(r'norm\.(weight|bias)', r'norm.\1'),
    Rule(r'(head|aux_head)\.weight', r'\1.weight', transpose),
    Rule(r'(head|aux_head)\.bias', r'\1.bias'),
]


def convert(state, config=None):
    """{our name: array} for an official SP-ViT / LV-ViT state dict (every key accounted for)."""
    converted, _dropped = apply_rules(state, RULES, source='official SP-ViT checkpoint')
    return converted
