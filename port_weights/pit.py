"""Official PiT checkpoints (naver-ai/pit, `pit_*_NNN.pth`) -> our PiT.

The names are those of naver-ai/pit `pit.py` as its released weights carry
them (`transformers.{s}.blocks.{i}`, `pools.{s}.conv` / `.fc`,
`patch_embed.conv`, `head`, `head_dist`), which ours keep.  timm renamed
the pooling layers and the patch embedding of its own PiT copy later;
those names are refused here rather than guessed.

Layout changes: Linear weights are transposed (torch [out, in] -> Paddle
[in, out]); convolution kernels, the [1, C, H, W] position map and the class
token(s) are stored the same way in both.  The distilled checkpoints'
`head_dist` maps to our `head_dist` and `head` to `head`: the eval output
is their mean, so a swap would go unnoticed by a logits check alone
(`tests/test_pit.py` checks each head).
"""
from port_weights.keymap import Rule, apply_rules, transpose

__all__ = ['RULES', 'convert']

_BLK = r'transformers\.(\d+)\.blocks\.(\d+)'
_OUT = r'transformers.\1.blocks.\2'

RULES = [
    Rule(r'pos_embed', 'pos_embed'),
    Rule(r'cls_token', 'cls_token'),
    Rule(r'patch_embed\.conv\.(weight|bias)', r'patch_embed.conv.\1'),
    Rule(fr'{_BLK}\.norm([12])\.(weight|bias)', fr'{_OUT}.norm\3.\4'),
    Rule(fr'{_BLK}\.attn\.(qkv|proj)\.weight', fr'{_OUT}.attn.\3.weight', transpose),
    Rule(fr'{_BLK}\.attn\.(qkv|proj)\.bias', fr'{_OUT}.attn.\3.bias'),
    Rule(fr'{_BLK}\.mlp\.(fc[12])\.weight', fr'{_OUT}.mlp.\3.weight', transpose),
    Rule(fr'{_BLK}\.mlp\.(fc[12])\.bias', fr'{_OUT}.mlp.\3.bias'),
    Rule(r'pools\.(\d+)\.conv\.(weight|bias)', r'pools.\1.conv.\2'),
    Rule(r'pools\.(\d+)\.fc\.weight', r'pools.\1.fc.weight', transpose),
    Rule(r'pools\.(\d+)\.fc\.bias', r'pools.\1.fc.bias'),
    Rule(r'norm\.(weight|bias)', r'norm.\1'),
    Rule(r'head\.weight', 'head.weight', transpose),
    Rule(r'head\.bias', 'head.bias'),
    Rule(r'head_dist\.weight', 'head_dist.weight', transpose),
    Rule(r'head_dist\.bias', 'head_dist.bias'),
]


def convert(state, config=None):
    """{our name: array} for an official PiT state dict (every key accounted for)."""
    converted, _dropped = apply_rules(state, RULES, source='official PiT checkpoint')
    return converted
