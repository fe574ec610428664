"""Every family's state-dict keys and shapes, pinned.

The weight porters (`port_weights/*`), the parity fixtures and every saved
checkpoint address parameters by their structured names, so a refactor of a
model's layers (e.g. the shared engine `Attention` / `Block`) must leave each
name and shape as it was.  `fixtures/state_dict_keys.json` holds, for small
configs of every family (the parity-fixture sizes, plus the variants that
switch sub-layers on or off: distilled PiT, R50 hybrid and pre-logits ViT,
SP-ViT with and without spatial-prior blocks and with qkv bias, PerViT, VVT,
RegNet), the keys of `state_dict()` in order, each with its shape.  It was written
by `python tests/test_state_dict_keys.py --write` from the code before the
shared blocks existed; rewrite it only for a deliberate change of names.
"""
import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO, 'tests', 'fixtures', 'state_dict_keys.json')

_PIT = ['DATA.IMAGE_SIZE', '64', 'MODEL.NUM_CLASSES', '10', 'MODEL.BASE_DIMS', '[8, 8, 8]',
        'MODEL.DEPTH', '[1, 2, 1]', 'MODEL.NUM_HEADS', '[2, 2, 4]', 'MODEL.MLP_RATIO', '2.0']
_SPVIT = ['DATA.IMAGE_SIZE', '64', 'MODEL.EMBED_DIM', '48', 'MODEL.DEPTH', '2', 'MODEL.NUM_HEADS', '2',
          'MODEL.MLP_RATIO', '3.0', 'MODEL.NUM_CLASSES', '10', 'MODEL.LOCAL_UP_TO_LAYER', '0']

# name: (config file relative to the repository, -opts)
CASES = {
    'pit_mini': ('image_classification/PiT/configs/pit_ti_224.yaml', _PIT),
    'pit_distilled_mini': ('image_classification/PiT/configs/pit_ti_distilled_224.yaml', _PIT),
    'vit_mini': ('tests/fixtures/vit_mini/vit_mini.yaml', []),
    'vit_mini_pre_logits': ('tests/fixtures/vit_mini/vit_mini.yaml', ['MODEL.REPRESENTATION_SIZE', '16']),
    'vit_r50_mini': ('tests/fixtures/vit_r50_mini/vit_r50_mini.yaml', []),
    'spvit_mini': ('image_classification/SPViT/configs/spvit_s_224.yaml', _SPVIT),
    'spvit_sp_mini': ('image_classification/SPViT/configs/spvit_s_224.yaml',
                      _SPVIT + ['MODEL.LOCAL_UP_TO_LAYER', '1', 'MODEL.QKV_BIAS', 'True']),
    'spvit_l_mini': ('image_classification/SPViT/configs/spvit_l_224.yaml',
                     _SPVIT + ['MODEL.LOCAL_UP_TO_LAYER', '1']),
    'pervit_mini': ('tests/fixtures/pervit_mini/pervit_mini.yaml', []),
    'vvt_mini': ('tests/fixtures/vvt_mini/vvt_mini.yaml', []),
    'regnety_mini': ('image_classification/RegNet/configs/regnety_400mf.yaml',
                     ['DATA.IMAGE_SIZE', '64', 'MODEL.NUM_CLASSES', '10']),
}


def keys_and_shapes(name):
    """{key: shape} of the model CASES[name] builds, in state-dict order."""
    from engine.families import build_from_config
    cfg, opts = CASES[name]
    _, model = build_from_config(os.path.join(REPO, cfg), list(opts))
    return {key: list(value.shape) for key, value in model.state_dict().items()}


@pytest.mark.parametrize('name', sorted(CASES))
def test_state_dict_keys_and_shapes_unchanged(name):
    with open(FIXTURE) as f:
        expected = json.load(f)[name]
    got = keys_and_shapes(name)
    assert list(got) == list(expected), f'{name}: state-dict keys changed'
    assert got == expected, f'{name}: a parameter shape changed'


if __name__ == '__main__':
    if sys.argv[1:] != ['--write']:
        sys.exit('usage: python tests/test_state_dict_keys.py --write   (rewrites the fixture)')
    sys.path[:0] = [REPO, os.path.join(REPO, 'image_classification')]
    cases = [(name, keys_and_shapes(name)) for name in sorted(CASES)]
    with open(FIXTURE, 'w') as f:          # one key per line, so that a change reads as a diff
        f.write('{\n' + ',\n'.join(
            f'{json.dumps(name)}: {{\n' + ',\n'.join(f'  {json.dumps(k)}: {json.dumps(v)}' for k, v in keys.items())
            + '\n}' for name, keys in cases) + '\n}\n')
