"""RegNetY: parity with timm's DeiT-era `regnet.py`, the teacher's parameter count and widths.

Fixture tests/fixtures/regnety_mini/ was made like the project's golden data, with the
code DeiT's teacher checkpoint was written for: `RegNet` from
huggingface/pytorch-image-models tag v0.3.4 `timm/models/regnet.py` (DeiT pins timm
0.3.2; regnet.py and the layers it uses are unchanged from v0.3.3 to v0.3.4), run
unmodified on torch 2.13 CPU (only its imports were satisfied: a `torch._six` alias
and stubs for timm's registry/helpers).  Tiny design-space config (meta.json):
w0=16, wa=12, wm=1.5, depth=5, group_w=12, se_ratio=0.25, stem_width=8, 10 classes;
it gives stage widths [12, 24, 36, 60] (the group-width rounding changes two of them)
and depths [1, 1, 1, 2], so it covers grouped convs, SE, projected and identity
shortcuts.  Every BatchNorm got random weight, bias, running mean and variance, the
classifier N(0, 0.1) weights; model.pth is its `state_dict()` (timm names), input.npy
a (2, 3, 64, 64) normal input, logits.npy the eval-mode output.
"""
import json
import os

import numpy as np
import paddle
import pytest
import yaml

from engine.families import build_from_config
from port_weights.port import port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO, 'tests', 'fixtures', 'regnety_mini')
CONFIGS = os.path.join(REPO, 'image_classification', 'RegNet', 'configs')


def _params(model):
    """Parameters as PyTorch counts them (Paddle also lists BatchNorm statistics, not trainable)."""
    return sum(int(np.prod(p.shape)) for p in model.parameters() if p.trainable)


def _stages(model):
    return [(getattr(model, s).b1.conv3.conv.weight.shape[0], len(getattr(model, s).names))
            for s in model.stage_names]


def test_regnety_mini_matches_timm(tmp_path):
    with open(os.path.join(FIXTURE, 'meta.json')) as f:
        meta = json.load(f)
    a = meta['official_class_args']['cfg']
    cfg = {'DATA': {'IMAGE_SIZE': meta['img_size']},
           'MODEL': {'TYPE': 'RegNet', 'NAME': 'regnety_mini', 'NUM_CLASSES': meta['official_class_args']['num_classes'],
                     'STEM_WIDTH': a['stem_width'], 'W0': a['w0'], 'WA': float(a['wa']), 'WM': float(a['wm']),
                     'DEPTH': a['depth'], 'GROUP_W': a['group_w'], 'SE_RATIO': a['se_ratio'],
                     'BOTTLE_RATIO': a['bottle_ratio']}}
    path = os.path.join(tmp_path, 'regnety_mini.yaml')
    with open(path, 'w') as f:
        yaml.safe_dump(cfg, f)
    _, model, _ = port(os.path.join(FIXTURE, 'model.pth'), path, log=lambda *_: None)
    assert _params(model) == meta['params']
    assert _stages(model) == list(zip(meta['stage_widths'], meta['stage_depths']))
    with paddle.no_grad():
        out = model(paddle.to_tensor(np.load(os.path.join(FIXTURE, 'input.npy')))).numpy()
    assert np.abs(out - np.load(os.path.join(FIXTURE, 'logits.npy'))).max() < 1e-4


@pytest.mark.slow
def test_regnety_160_is_deits_teacher():
    """83,590,140 parameters (golden README); RegNetY-16GF widths/depths of the RegNet paper."""
    config, model = build_from_config(os.path.join(CONFIGS, 'regnety_160.yaml'))
    assert _params(model) == 83_590_140
    assert _stages(model) == [(224, 2), (448, 4), (1232, 11), (3024, 1)]
    assert config.DATA.CROP_PCT == 0.875 and config.DATA.INTERPOLATION == 'bicubic'
    keys = set(model.state_dict())
    for k in ('stem.conv.weight', 'stem.bn._mean', 's1.b1.se.fc1.weight', 's1.b1.downsample.conv.weight',
              's3.b11.conv3.bn.weight', 'head.fc.weight'):
        assert k in keys


def test_regnety_400mf():
    """timm 0.3 `regnety_004` has 4,344,144 parameters (counted with that code)."""
    _, model = build_from_config(os.path.join(CONFIGS, 'regnety_400mf.yaml'))
    assert _params(model) == 4_344_144
    assert _stages(model) == [(48, 1), (104, 3), (208, 6), (440, 6)]
