"""PiT: parity with the official naver-ai/pit code, parameter counts, distilled heads, configs.

Fixtures (tests/fixtures/):
- pit_mini, pit_distilled_mini: copied from the project's golden reference data: the
  official `PoolingTransformer` / `DistilledPoolingTransformer` (naver-ai/pit pit.py)
  with the sizes in meta.json, random weights with perturbed norms (model.pth, official
  key names), an input and the official eval-mode logits (for the distilled model the
  mean of its two heads).
- pit_distilled_mini/logits_head.npy and logits_head_dist.npy: the same official model,
  weights and input, run in training mode (it has no dropout or drop path, so training
  mode only makes it return the pair): the class head's and the distillation head's
  logits separately.  Made with naver-ai/pit pit.py on timm 0.3.4's `Block` (the version
  its README lists), torch 2.13 CPU; that code reproduces logits.npy to 5e-7.

Full-size parameter counts are the official models' (golden README).
"""
import glob
import json
import os

import numpy as np
import paddle
import pytest
import yaml

from engine.families import build_from_config, load_family
from engine.weights import KeyMismatchError, load_checkpoint
from port_weights.pit import convert
from port_weights.port import port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, 'tests', 'fixtures')
CONFIGS = os.path.join(REPO, 'image_classification', 'PiT', 'configs')

OFFICIAL_PARAMS = {
    'pit_ti': 4_847_272, 'pit_ti_distilled': 5_104_336,
    'pit_xs': 10_618_888, 'pit_xs_distilled': 11_003_984,
    'pit_s': 23_461_912, 'pit_s_distilled': 24_039_056,
    'pit_b': 73_764_840, 'pit_b_distilled': 74_790_096,
}


def _mini_config(tmp_path, name, distilled):
    """Our YAML for the official constructor arguments in the fixture's meta.json."""
    with open(os.path.join(FIXTURES, name, 'meta.json')) as f:
        meta = json.load(f)
    a = meta['official_class_args']
    cfg = {
        'DATA': {'IMAGE_SIZE': a['image_size']},
        'MODEL': {'TYPE': 'PiT', 'NAME': name, 'NUM_CLASSES': a['num_classes'],
                  'PATCH_SIZE': a['patch_size'], 'STRIDE': a['stride'], 'BASE_DIMS': a['base_dims'],
                  'DEPTH': a['depth'], 'NUM_HEADS': a['heads'], 'MLP_RATIO': float(a['mlp_ratio']),
                  'DISTILLED': distilled, 'DROPPATH': 0.0},
    }
    path = os.path.join(tmp_path, f'{name}.yaml')
    with open(path, 'w') as f:
        yaml.safe_dump(cfg, f)
    return path, meta


def _params(model):
    return sum(int(np.prod(p.shape)) for p in model.parameters() if p.trainable)


def _run(model, x, training=False):
    model.train() if training else model.eval()
    with paddle.no_grad():
        out = model(paddle.to_tensor(x))
    model.eval()
    return out


def test_pit_mini_matches_official(tmp_path):
    cfg, meta = _mini_config(tmp_path, 'pit_mini', False)
    _, model, _ = port(os.path.join(FIXTURES, 'pit_mini', 'model.pth'), cfg, log=lambda *_: None)
    assert _params(model) == meta['params']
    x = np.load(os.path.join(FIXTURES, 'pit_mini', 'input.npy'))
    ref = np.load(os.path.join(FIXTURES, 'pit_mini', 'logits.npy'))
    out = _run(model, x)
    assert isinstance(out, paddle.Tensor)
    assert np.abs(out.numpy() - ref).max() < 1e-4


def test_pit_distilled_mini_matches_official_each_head(tmp_path):
    d = os.path.join(FIXTURES, 'pit_distilled_mini')
    cfg, meta = _mini_config(tmp_path, 'pit_distilled_mini', True)
    _, model, _ = port(os.path.join(d, 'model.pth'), cfg, log=lambda *_: None)
    assert _params(model) == meta['params']
    x = np.load(os.path.join(d, 'input.npy'))
    mean = _run(model, x).numpy()
    assert np.abs(mean - np.load(os.path.join(d, 'logits.npy'))).max() < 1e-4
    cls, dist = _run(model, x, training=True)   # no dropout / drop path in this config
    ref_cls, ref_dist = np.load(os.path.join(d, 'logits_head.npy')), np.load(os.path.join(d, 'logits_head_dist.npy'))
    assert np.abs(ref_cls - ref_dist).max() > 0.1          # the heads differ, so a swap would show
    assert np.abs(cls.numpy() - ref_cls).max() < 1e-4
    assert np.abs(dist.numpy() - ref_dist).max() < 1e-4


def test_distilled_head_keys_map_to_their_own_heads():
    official = load_checkpoint(os.path.join(FIXTURES, 'pit_distilled_mini', 'model.pth'))
    ours = convert(official)
    for head in ('head', 'head_dist'):
        np.testing.assert_array_equal(ours[f'{head}.weight'], official[f'{head}.weight'].T)
        np.testing.assert_array_equal(ours[f'{head}.bias'], official[f'{head}.bias'])
    assert not np.allclose(official['head.weight'], official['head_dist.weight'])


def test_timm_renamed_keys_are_refused():
    """timm (2023) renamed PiT's pooling layers; we port the official names only."""
    official = load_checkpoint(os.path.join(FIXTURES, 'pit_mini', 'model.pth'))
    renamed = {(k.replace('pools.0.', 'transformers.1.pool.') if k.startswith('pools.0.') else k): v
               for k, v in official.items()}
    with pytest.raises(KeyMismatchError, match='match no rule'):
        convert(renamed)


@pytest.mark.parametrize('name', sorted(OFFICIAL_PARAMS))
@pytest.mark.slow
def test_full_size_parameter_counts(name):
    config, model = build_from_config(os.path.join(CONFIGS, f'{name}_224.yaml'))
    assert config.MODEL.NAME == name
    assert config.MODEL.DISTILLED == name.endswith('_distilled')
    assert _params(model) == OFFICIAL_PARAMS[name]


@pytest.mark.slow
def test_384_config_differs_from_224_only_by_the_position_map():
    _, model = build_from_config(os.path.join(CONFIGS, 'pit_b_distilled_384.yaml'))
    assert tuple(model.pos_embed.shape) == (1, 256, 53, 53)     # floor((384 - 14) / 7) + 1
    assert _params(model) == OFFICIAL_PARAMS['pit_b_distilled'] + 256 * (53 * 53 - 31 * 31)


def test_adapt_state_dict_resizes_pos_embed(tmp_path):
    """A 64-pixel checkpoint ported into a 96-pixel model: pos_embed 7x7 -> 11x11, bicubic."""
    cfg, _ = _mini_config(tmp_path, 'pit_mini', False)
    messages = []
    _, model, state = port(os.path.join(FIXTURES, 'pit_mini', 'model.pth'), cfg,
                           opts=['DATA.IMAGE_SIZE', '96'], log=messages.append)
    assert state['pos_embed'].shape == (1, 16, 11, 11)
    assert any('pos_embed resized (1, 16, 7, 7) -> (1, 16, 11, 11)' in m for m in messages)
    out = _run(model, np.random.default_rng(0).standard_normal((1, 3, 96, 96)).astype('float32'))
    assert out.shape == [1, 10]
    # bicubic interpolation (align_corners=False) keeps a constant map constant
    const = {'pos_embed': np.full((1, 16, 7, 7), 0.25, dtype='float32')}
    model.adapt_state_dict(const)
    np.testing.assert_allclose(const['pos_embed'], 0.25, atol=1e-6)
    same = {'pos_embed': np.zeros((1, 16, 11, 11), dtype='float32')}
    assert model.adapt_state_dict(same) == []


def test_training_output_depends_on_the_config_not_a_flag(tmp_path):
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype('float32')
    plain_cfg, _ = _mini_config(tmp_path, 'pit_mini', False)
    _, plain = build_from_config(plain_cfg)
    assert isinstance(_run(plain, x, training=True), paddle.Tensor)
    dist_cfg, _ = _mini_config(tmp_path, 'pit_distilled_mini', True)
    _, distilled = build_from_config(dist_cfg)
    cls, dist = _run(distilled, x, training=True)
    mean = _run(distilled, x)
    np.testing.assert_allclose(mean.numpy(), (cls.numpy() + dist.numpy()) / 2, atol=1e-6)


def test_no_weight_decay_and_classifier_names_exist(tmp_path):
    cfg, _ = _mini_config(tmp_path, 'pit_distilled_mini', True)
    _, model = build_from_config(cfg)
    names = {n for n, _ in model.named_parameters()}
    assert model.no_weight_decay() <= names
    for prefix in model.CLASSIFIER:
        assert f'{prefix}.weight' in names


def test_imagenet_configs_eval_preprocessing_and_distillation():
    files = sorted(f for f in glob.glob(os.path.join(CONFIGS, '*.yaml')) if 'demo' not in f)
    assert len(files) == 9   # 4 variants x (plain, distilled) at 224 + pit_b_distilled_384
    family = load_family('PiT')
    for path in files:
        c = family.get_config(path)
        assert c.DATA.INTERPOLATION == 'bicubic'
        assert list(c.DATA.MEAN) == [0.485, 0.456, 0.406] and list(c.DATA.STD) == [0.229, 0.224, 0.225]
        assert c.DATA.CROP_PCT == (0.875 if c.DATA.IMAGE_SIZE == 384 else 0.9)   # 384: DeiT's eval code
        if c.MODEL.DISTILLED:
            assert c.TRAIN.DISTILLATION_TYPE == 'hard' and c.TRAIN.TEACHER_CONFIG
        else:
            assert c.TRAIN.DISTILLATION_TYPE == 'none'
