"""Official PerViT checkpoints (juhongm999/pervit, `model/pervit.py`) -> our PerViT.

The official `checkpoint.pth` holds {'model': state_dict, 'optimizer': ..., 'args': ...};
`load_checkpoint` keeps the model part.  Every official key is mapped or dropped
here; Linear weights are transposed, everything else keeps its layout.
"""
from port_weights.keymap import Rule, apply_rules, bn_rules, transpose

B = r'blocks\.(\d+)\.'

RULES = [
    # convolutional stem: conv_layers.conv_layers.<i> = Sequential(Conv2d, BatchNorm2d, ReLU)
    Rule(r'conv_layers\.conv_layers\.(\d+)\.0\.(weight|bias)', r'stem.convs.\1.conv.\2'),
    *bn_rules(r'conv_layers\.conv_layers\.(\d+)\.1', r'stem.convs.\1.bn'),
    Rule(r'conv_layers\.conv1x1\.(weight|bias)', r'stem.proj.\1'),
    # distance embedding shared by all blocks: Linear(1, 4 * heads)
    Rule(r'rpe_proj\.weight', 'rpe_proj.weight', transpose),
    Rule(r'rpe_proj\.bias', 'rpe_proj.bias'),
    # blocks
    Rule(B + r'conv\.proj\.(weight|bias)', r'blocks.\1.cpe.proj.\2'),
    Rule(B + r'norm([12])\.(weight|bias)', r'blocks.\1.norm\2.\3'),
    Rule(B + r'attn\.activation\.(conv[12]|gn[12])\.(weight|bias)', r'blocks.\1.attn.ppe.\2.\3',
         why='the peripheral position encoding (official name: activation)'),
    Rule(B + r'attn\.to_qkv\.weight', r'blocks.\1.attn.qkv.weight', transpose),
    Rule(B + r'attn\.proj\.weight', r'blocks.\1.attn.proj.weight', transpose),
    Rule(B + r'attn\.proj\.bias', r'blocks.\1.attn.proj.bias'),
    Rule(B + r'mlp\.(fc[12])\.weight', r'blocks.\1.mlp.\2.weight', transpose),
    Rule(B + r'mlp\.(fc[12])\.bias', r'blocks.\1.mlp.\2.bias'),
    Rule(B + r'res_path\.weight', r'blocks.\1.res_path.weight', transpose),
    Rule(B + r'res_path\.bias', r'blocks.\1.res_path.bias'),
    # final norm and classifier
    Rule(r'norm\.(weight|bias)', r'norm.\1'),
    Rule(r'head\.weight', 'head.weight', transpose),
    Rule(r'head\.bias', 'head.bias'),
]


def convert(state, config):
    """{our name: array} for an official PerViT state dict (any of T / S / M)."""
    converted, _dropped = apply_rules(state, RULES, source='official PerViT checkpoint')
    return converted
