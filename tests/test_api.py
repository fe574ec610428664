"""The `paddlevit` package (issue #17): install, list_models / create_model / create_transform,
the one family registry, the README's snippet, and PaddleViT's per-folder snippet."""
import glob
import os
import re
import subprocess
import sys

import numpy as np
import paddle
import pytest

from conftest import REPO
from engine.config import ConfigError
from engine.data.transforms import build_transform
from engine.families import FAMILIES, load_family
from engine.weights import KeyMismatchError
from resolved_configs import set_by_files

IC = os.path.join(REPO, 'image_classification')


@pytest.fixture(scope='module')
def paddlevit():
    """`import paddlevit` as an install gives it: the name bound to image_classification/
    (pyproject.toml's package-dir; conftest binds it when the test venv has no install)."""
    import paddlevit
    return paddlevit


def _config_stems():
    """Model names as the config files spell them, found without the registry's help."""
    return sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(IC, '*', 'configs', '*.yaml')))


def test_list_models_names_every_config_and_filters(paddlevit):
    names = paddlevit.list_models()
    assert names == _config_stems() and len(names) >= 40
    assert paddlevit.list_models('pit_*') == [n for n in names if n.startswith('pit_')]
    assert 'pit_s_224' in paddlevit.list_models('pit_*') and 'pit_b_distilled_384' in names
    assert paddlevit.list_models('VIT_BASE_PATCH16_*') == ['vit_base_patch16_224', 'vit_base_patch16_384']
    assert set(paddlevit.list_models('*_384')) == {n for n in names if n.endswith('_384')}
    assert paddlevit.list_models('no_such_*') == []


def test_registry_is_the_only_table():
    """port.py and the entry points read FAMILIES: a key map and hooks come from the registry."""
    from port_weights.port import porter_for
    for name in FAMILIES:
        assert porter_for(name).__name__ == f'port_weights.{FAMILIES[name].porter}'
        assert hasattr(porter_for(name), 'convert')
    assert type(load_family('PerViT').make_hooks()).__name__ == 'PerViTHooks'
    assert type(load_family('SPViT').make_hooks()).__name__ == 'SPViTHooks'
    assert load_family('PiT').make_hooks() is None
    for script in glob.glob(os.path.join(IC, '*', 'main_*.py')):
        text = open(script).read()
        assert 'sys.path' not in text and 'load_family(' in text, script
    for script in (glob.glob(os.path.join(REPO, 'tools', '*.py'))
                   + glob.glob(os.path.join(REPO, 'port_weights', '*.py'))
                   + glob.glob(os.path.join(IC, '*', '*.py')) + glob.glob(os.path.join(IC, 'engine', '*.py'))):
        assert 'sys.path.insert' not in open(script).read(), script


# per family: the fewest blocks its config allows, so that every variant builds in well under a second
SHRINK = {'ViT': {'MODEL.DEPTH': 1}, 'PiT': {'MODEL.DEPTH': [1, 1, 1]},
          'PerViT': {'MODEL.DEPTHS': [1, 1, 1, 1]}, 'SPViT': {'MODEL.DEPTH': 2, 'MODEL.LOCAL_UP_TO_LAYER': 1},
          'VVT': {'MODEL.DEPTHS': [1, 1, 1, 1]}, 'RegNet': {'MODEL.DEPTH': 4}}


@pytest.mark.parametrize('name', _config_stems())
@pytest.mark.slow
def test_create_model_every_variant(paddlevit, name):
    model_type = paddlevit.model_config(name).MODEL.TYPE
    model = paddlevit.create_model(name, num_classes=7, **SHRINK[model_type])
    config = model.config
    assert config.MODEL.NUM_CLASSES == 7 and not model.training
    data = set_by_files(glob.glob(os.path.join(IC, '*', 'configs', name + '.yaml'))[0]).get('DATA', {})
    size = config.DATA.IMAGE_SIZE
    assert model.data_config['input_size'] == (3, size, size)
    assert size == data.get('IMAGE_SIZE', size)
    for key, field in (('CROP_PCT', 'crop_pct'), ('INTERPOLATION', 'interpolation'), ('EVAL_RESIZE', 'resize')):
        if key in data:
            assert model.data_config[field] == data[key], key
    if 'MEAN' in data:
        assert model.data_config['mean'] == tuple(data['MEAN'])
    with paddle.no_grad():
        out = model(paddle.zeros([1, 3, size, size]))
    out = out[0] if isinstance(out, (tuple, list)) else out
    assert out.shape[-1] == 7


@pytest.mark.parametrize('name,params', [('pit_s_224', 23_461_912), ('vvt_tiny_224', 12_882_440),
                                         ('vit_tiny_patch16_224', 5_717_416)])
@pytest.mark.slow
def test_full_size_parameter_counts(paddlevit, name, params):
    """The zoo's counts (family READMEs; ViT-Ti as timm counts it) from a model made by name."""
    model = paddlevit.create_model(name)
    assert sum(int(np.prod(p.shape)) for p in model.parameters()) == params


def test_pretrained_strict_head_reset_and_resize(paddlevit, tmp_path):
    small = dict(image_size=64, **SHRINK['PiT'])
    paddle.seed(0)
    source = paddlevit.create_model('pit_ti_224', num_classes=5, **small)
    path = str(tmp_path / 'w.pdparams')
    paddle.save(source.state_dict(), path)
    x = paddle.rand([2, 3, 64, 64])
    same = paddlevit.create_model('pit_ti_224', pretrained=path, num_classes=5, **small)
    np.testing.assert_array_equal(same(x).numpy(), source(x).numpy())
    # another class count without num_classes: refused (a random head would predict nonsense)
    with pytest.raises(KeyMismatchError, match='classifier head'):
        paddlevit.create_model('pit_ti_224', pretrained=path, **small)
    # with num_classes: the head is fresh, the body is the checkpoint's
    tuned = paddlevit.create_model('pit_ti_224', pretrained=path, num_classes=3, **small)
    assert tuned(x).shape == [2, 3]
    np.testing.assert_array_equal(tuned.state_dict()['pos_embed'].numpy(), source.state_dict()['pos_embed'].numpy())
    # another image size: the position embedding is resized as -pretrained does
    bigger = paddlevit.create_model('pit_ti_224', pretrained=path, num_classes=5,
                                    **dict(small, image_size=96))
    assert bigger(paddle.rand([1, 3, 96, 96])).shape == [1, 5]
    # a checkpoint of another model: a key error, not a warning
    paddle.save({'nothing': paddle.zeros([1])}, str(tmp_path / 'bad.pdparams'))
    with pytest.raises(KeyMismatchError):
        paddlevit.create_model('pit_ti_224', pretrained=str(tmp_path / 'bad.pdparams'), **small)


def test_unknown_model_is_a_user_error(paddlevit):
    with pytest.raises(ConfigError, match="unknown model 'pit_q_224'.*similar: pit_b_224"):
        paddlevit.create_model('pit_q_224')


@pytest.mark.parametrize('name', ['pit_ti_224', 'vit_tiny_patch16_384', 'regnety_400mf'])
def test_create_transform_equals_the_engines_eval_transform(paddlevit, name):
    """'shorter' + bicubic (PiT), 'squash' + bilinear + 0.5 mean (ViT 384), RegNet's."""
    config = paddlevit.model_config(name)
    model = paddlevit.create_model(name, **SHRINK[config.MODEL.TYPE])
    ours, engine = paddlevit.create_transform(model), build_transform(config, 'val')
    image = np.random.default_rng(1).integers(0, 256, (331, 457, 3), dtype=np.uint8)
    np.testing.assert_array_equal(ours(image), engine(image))
    np.testing.assert_array_equal(paddlevit.create_transform(model.data_config)(image), engine(image))


def _readme_snippet():
    text = open(os.path.join(REPO, 'README.md')).read()
    section = text.split('\n## Python API\n', 1)[1].split('\n## ', 1)[0]
    return re.search(r'```python\n(.*?)```', section, re.S).group(1)


@pytest.mark.slow
def test_readme_python_api_snippet_runs(paddlevit, tmp_path):
    """The README's snippet, as written, in a fresh process outside the repository."""
    env = dict(os.environ)   # the fixture's alias folder (where `paddlevit` is) first
    env['PYTHONPATH'] = os.pathsep.join([os.path.dirname(os.path.dirname(paddlevit.__spec__.origin)),
                                         env['PYTHONPATH']])
    result = subprocess.run([sys.executable, '-c', _readme_snippet()], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "'pit_b_224'" in result.stdout and '[1, 10]' in result.stdout


SEED = """import paddle
from config import get_config
from pit import build_pit as build_model
# config files in ./configs/
config = get_config('./configs/pit_b_224.yaml')
# build model
model = build_model(config)
# load pretrained weights
model_state_dict = paddle.load('./pit_b_224.pdparams')
model.set_state_dict(model_state_dict)
print('OK', type(model).__name__)
"""


# the smallest variant of each family (the seed's own pit_b_224 for PiT)
SMALLEST = {'ViT': 'vit_tiny_patch16_224.yaml', 'PerViT': 'pervit_tiny_224.yaml', 'SPViT': 'spvit_s_224.yaml',
            'VVT': 'vvt_tiny_224.yaml', 'RegNet': 'regnety_400mf.yaml'}


@pytest.mark.slow
@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_paddlevit_seed_snippet_in_each_family_folder(family):
    """PaddleViT's README usage (the seed's text; `import paddle` added, which it forgets), run
    from inside each family folder, with `engine` importable as an install (here PYTHONPATH) gives it."""
    folder = os.path.join(IC, family)
    spec = FAMILIES[family]
    code = SEED.replace("from pit import build_pit", f"from {spec.module} import {spec.builder}")
    weights = None
    if family == 'PiT':   # verbatim, with the weights file the seed assumes
        weights = os.path.join(folder, 'pit_b_224.pdparams')
        pit = load_family('PiT')
        model = pit.build_model(pit.get_config(os.path.join(folder, 'configs', 'pit_b_224.yaml')))
        paddle.save(model.state_dict(), weights)
    else:
        code = code.replace('pit_b_224.yaml', SMALLEST[family])
        code = '\n'.join(line for line in code.splitlines() if 'state_dict' not in line)
    try:
        result = subprocess.run([sys.executable, '-c', code], cwd=folder, capture_output=True, text=True,
                                timeout=300)
    finally:
        if weights and os.path.exists(weights):
            os.remove(weights)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith('OK')


@pytest.mark.slow
def test_pip_install_gives_a_working_package(tmp_path):
    """`pip install .` (a wheel, no editable link) into a fresh target: the package works from
    another folder without the repository on the path, family folders and configs included."""
    target = tmp_path / 'site'
    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--target', str(target), REPO],
                   check=True, timeout=600, cwd=tmp_path)
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env['PYTHONPATH'] = str(target)
    code = ("import paddlevit, engine, engine.token_labeling, port_weights.port\n"
            "assert paddlevit.__file__.startswith(%r), paddlevit.__file__\n"
            "assert engine.__file__.startswith(%r)\n"
            "m = paddlevit.create_model('vvt_tiny_224', num_classes=4, image_size=64)\n"
            "print(len(paddlevit.list_models()), m.data_config['input_size'])\n") % (str(target), str(target))
    result = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[0] == str(len(_config_stems()))
    assert os.path.isfile(target / 'engine' / 'cpu' / 'csrc' / 'fused_cpu_ops.cc')
    assert os.path.isfile(target / 'paddlevit' / 'PiT' / 'run_train_multi.sh')
