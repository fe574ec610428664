"""Every entry point that reads a user's weights refuses a hostile pickle before it runs (issue #19).

For each one (training -pretrained, -teacher_model_path, -resume by folder and through a latest.txt
pointing elsewhere, a hostile .pdopt or EMA file, export_model, explain, generate_label,
port.py --src, PerViT's visualize.py) the hostile file would create a marker file if it were
unpickled without restriction; the test checks that the marker is not created and that the error
names the file and the refused global.
"""
import importlib.util
import os
import pickle
import re

import paddle
import pytest

import hostile
from conftest import REPO
from engine.checkpoint import CheckpointManager
from engine.optim import WarmupCosine
from engine.weights_io import UnsafePickleError
from engine.torch_reader import UnsafeCheckpointError
from test_engine_run import TinyNet, _argv, build_tiny, get_config, make_dataset

from engine.launcher import execute as train_main   # raises the UserError instead of exiting 2

IC = os.path.join(REPO, 'image_classification')
VIT_DEMO = os.path.join(IC, 'ViT', 'configs', 'vit_demo_digits_32.yaml')
TEACHER = os.path.join(IC, 'RegNet', 'configs', 'regnety_400mf_demo_digits_32.yaml')
SYSTEM = r'(posix|os)\.system'


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp('squares'), n_train=8, n_val=4)


@pytest.fixture
def evil(tmp_path):
    """(write(path), marker): write(path) puts a state dict with an os.system payload at `path`."""
    marker = tmp_path / 'pwned'

    def write(path):
        state = {'conv.weight': hostile.Call(os.system, f'touch {marker}')}
        os.makedirs(os.path.dirname(str(path)), exist_ok=True)
        with open(path, 'wb') as f:
            pickle.dump(state, f, protocol=2)
        return str(path)
    return write, marker


def _refused(call, path, marker, error=UnsafePickleError):
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert str(path) in message and re.search(SYSTEM, message), message
    assert not marker.exists()


def test_training_pretrained(data, tmp_path, evil):
    write, marker = evil
    path = write(tmp_path / 'evil.pdparams')
    _refused(lambda: train_main(get_config, build_tiny, argv=_argv(data, str(tmp_path / 'out')) + [
        '-pretrained', path]), path, marker)


def test_training_teacher_model_path(data, tmp_path, evil):
    write, marker = evil
    path = write(tmp_path / 'teacher.pdparams')
    argv = _argv(data, str(tmp_path / 'out'), 'TRAIN.DISTILLATION_TYPE', 'hard', 'TRAIN.TEACHER_CONFIG', TEACHER)
    _refused(lambda: train_main(get_config, build_tiny, argv=argv + ['-teacher_model_path', path]), path, marker)


def _valid_checkpoint(folder):
    """A real checkpoint of the test's TinyNet (4 classes) in `folder`; returns its prefix."""
    paddle.seed(0)
    model = TinyNet(4)
    sched = WarmupCosine(0.01, 0.001, 0.0001, warmup_steps=1, total_steps=8)
    opt = paddle.optimizer.AdamW(learning_rate=sched, parameters=model.parameters())
    from engine.ema import ModelEMA
    return CheckpointManager(str(folder), 'tiny', 1).save(1, model, opt, sched, ema=ModelEMA(model, 0.9))


@pytest.mark.parametrize('bad', ['.pdparams', '-EMA.pdparams', '.pdopt'])
@pytest.mark.parametrize('how', ['folder', 'latest.txt elsewhere'])
def test_training_resume(data, tmp_path, evil, bad, how):
    write, marker = evil
    where = tmp_path / ('run' if how == 'folder' else 'elsewhere')
    prefix = _valid_checkpoint(where)
    path = write(prefix + bad)
    resume = str(where)
    if how != 'folder':   # the output folder's latest.txt points into another folder
        os.makedirs(tmp_path / 'run')
        (tmp_path / 'run' / 'latest.txt').write_text('../elsewhere/tiny-Epoch-1\n')
        resume = str(tmp_path / 'run')
    _refused(lambda: train_main(get_config, build_tiny, argv=_argv(data, str(tmp_path / 'out')) + [
        '-resume', resume]), os.path.basename(path), marker)


def test_export_model(tmp_path, evil):
    write, marker = evil
    path = write(tmp_path / 'evil.pdparams')
    from tools import export_model     # a package module: it imports tools/model_args.py
    _refused(lambda: export_model.main(['-cfg', VIT_DEMO, '-pretrained', path, '-output', str(tmp_path / 'x')]),
             path, marker)


def test_explain(tmp_path, evil):
    write, marker = evil
    path = write(tmp_path / 'evil.pdparams')
    from tools import explain as tool     # a package module: it imports tools/model_args.py
    _refused(lambda: tool.main(['-cfg', VIT_DEMO, '-pretrained', path, '-output', str(tmp_path / 'a.png')]),
             path, marker)


def test_generate_label(data, tmp_path, evil):
    write, marker = evil
    path = write(tmp_path / 'evil.pdparams')
    from tools import generate_label as tool
    _refused(lambda: tool.main(['-cfg', VIT_DEMO, '-pretrained', path, '-data_path', data,
                                '-output', str(tmp_path / 'labels')]), path, marker)


@pytest.mark.parametrize('kind', ['.pdparams', '.pth'])
def test_port_src(tmp_path, evil, kind):
    write, marker = evil
    from port_weights.port import main as port_main
    if kind == '.pdparams':
        path, error = write(tmp_path / 'evil.pdparams'), UnsafePickleError
    else:
        import zipfile
        blob = open(write(tmp_path / 'payload.bin'), 'rb').read()
        path, error = str(tmp_path / 'evil.pth'), UnsafeCheckpointError
        with zipfile.ZipFile(path, 'w') as zf:
            zf.writestr('archive/data.pkl', blob)
    _refused(lambda: port_main(['--src', path, '--config', VIT_DEMO, '--dst', str(tmp_path / 'out.pdparams')]),
             path, marker, error)
    assert not (tmp_path / 'out.pdparams').exists()


def test_pervit_visualize(tmp_path, evil):
    write, marker = evil
    path = write(tmp_path / 'evil.pdparams')
    tool = _load(os.path.join(IC, 'PerViT', 'visualize.py'), '_safe_pervit_visualize')
    cfg = os.path.join(IC, 'PerViT', 'configs', 'pervit_tiny_224.yaml')
    _refused(lambda: tool.main(['-cfg', cfg, '-pretrained', path, '-output', str(tmp_path / 'vis')]), path, marker)
