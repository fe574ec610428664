"""timm RegNet checkpoints of the DeiT era (timm 0.3.x layout) -> our RegNet.

The checkpoint this is for is DeiT's teacher, `regnety_160-a5fe301d.pth`
(https://dl.fbaipublicfiles.com/deit/, a `{'model': state_dict}` that
`engine.weights.load_checkpoint` unwraps), in the layout of timm 0.3.x `regnet.py`:
`stem.conv/bn`, `s{1-4}.b{j}.conv{1,2,3}.conv/bn`, `.se.fc1/fc2`,
`.downsample.conv/bn`, `head.fc`.  Ours keeps those names, so the rules only
rename BatchNorm statistics (torch `running_mean/var` -> Paddle
`_mean/_variance`) and transpose the classifier's Linear weight.  Convolution
kernels have the same layout in both.

Not for today's timm `regnety_160` weights: timm's default tag for that name
is now a different checkpoint than DeiT's teacher; port the DeiT file.
"""
from port_weights.keymap import Rule, apply_rules, bn_rules, transpose

__all__ = ['RULES', 'convert']

_CONV_BN = r'(stem|s\d+\.b\d+\.(?:conv[123]|downsample))'

RULES = [
    Rule(fr'{_CONV_BN}\.conv\.weight', r'\1.conv.weight'),
    *bn_rules(fr'{_CONV_BN}\.bn', r'\1.bn'),
    Rule(r'(s\d+\.b\d+)\.se\.(fc[12])\.(weight|bias)', r'\1.se.\2.\3'),
    Rule(r'head\.fc\.weight', 'head.fc.weight', transpose),
    Rule(r'head\.fc\.bias', 'head.fc.bias'),
]


def convert(state, config=None):
    """{our name: array} for a timm-0.3 RegNet state dict (every key accounted for)."""
    converted, _dropped = apply_rules(state, RULES, source='timm RegNet checkpoint')
    return converted
