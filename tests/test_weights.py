"""Every entry point loads weights through `engine.weights.load_weights`, and the engine never
imports `port_weights` (which imports the engine).

The callers are told apart by their behaviour: a checkpoint that does not fit gives, from
the port, `paddlevit.create_model`, the distillation teacher, `-resume` and PerViT's
visualisation, the message `load_weights` gives for it (only the file named differs); the
EMA choice, the head drop and the resize are the function's.
"""
import ast
import glob
import importlib.util
import json
import os

import numpy as np
import paddle
import pytest
import yaml

from conftest import FIXTURES, REPO
from engine.checkpoint import CheckpointManager, resume
from engine.distillation import build_teacher
from engine.ema import ModelEMA
from engine.families import build_from_config, load_family
from engine.optim import WarmupCosine
from engine.weights import KeyMismatchError, MissingEMAError, load_checkpoint, load_weights
from port_weights.port import port

REGNET = os.path.join(FIXTURES, 'regnety_mini')


# ----------------------------------------------------------------------------- no arrow back up

def _port_weights_imports(source, filename):
    """Line numbers of `source` that import `port_weights`: import statements, and
    importlib.import_module / __import__ of a literal or f-string naming it."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ''] if node.level == 0 else []
        elif isinstance(node, ast.Call) and node.args and \
                getattr(node.func, 'attr', getattr(node.func, 'id', None)) in ('import_module', '__import__'):
            arg = node.args[0]
            if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
                arg = arg.values[0]
            names = [arg.value] if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else []
        else:
            continue
        if any(n == 'port_weights' or n.startswith('port_weights.') for n in names):
            found.append(node.lineno)
    return found


def test_the_detector_finds_every_form_of_import():
    source = ('import port_weights.keymap\nfrom port_weights import port\n'
              'importlib.import_module(f"port_weights.{name}")\n__import__("port_weights")\n'
              'import port_weightsx\nfrom .port_weights import x\n')
    assert _port_weights_imports(source, 'sample.py') == [1, 2, 3, 4]


def test_nothing_under_image_classification_imports_port_weights():
    files = glob.glob(os.path.join(REPO, 'image_classification', '**', '*.py'), recursive=True)
    assert len(files) > 40
    offenders = []
    for path in files:
        with open(path, encoding='utf-8') as f:
            offenders += [f'{os.path.relpath(path, REPO)}:{line}' for line in _port_weights_imports(f.read(), path)]
    assert not offenders, f'port_weights imports the engine; the engine must not import it: {offenders}'


# ----------------------------------------------------------------------------- one message from every caller

def _regnet_config(tmp_path, se_ratio):
    """The fixture's RegNetY (official SE ratio 0.25) with squeeze-excitation layers of `se_ratio`."""
    with open(os.path.join(REGNET, 'meta.json')) as f:
        meta = json.load(f)
    a = meta['official_class_args']['cfg']
    cfg = {'DATA': {'IMAGE_SIZE': meta['img_size']},
           'MODEL': {'TYPE': 'RegNet', 'NAME': 'regnety_mini', 'NUM_CLASSES': 10, 'STEM_WIDTH': a['stem_width'],
                     'W0': a['w0'], 'WA': float(a['wa']), 'WM': float(a['wm']), 'DEPTH': a['depth'],
                     'GROUP_W': a['group_w'], 'SE_RATIO': se_ratio, 'BOTTLE_RATIO': a['bottle_ratio']}}
    path = str(tmp_path / f'regnety_mini_se{se_ratio}.yaml')
    with open(path, 'w') as f:
        yaml.safe_dump(cfg, f)
    return path, cfg


def _message(call, source):
    with pytest.raises(KeyMismatchError) as info:
        call()
    message = str(info.value)
    assert source in message
    return message.replace(source, '<file>')


def test_a_misfit_gives_one_message_from_port_create_model_teacher_and_resume(tmp_path):
    import image_classification as paddlevit   # the package installed as `paddlevit`
    official = os.path.join(REGNET, 'model.pth')
    fits, _ = _regnet_config(tmp_path, 0.25)
    other, cfg = _regnet_config(tmp_path, 0.5)            # wider squeeze-excitation than the checkpoint's
    _, _, state = port(official, fits, log=lambda *_: None)
    weights = str(tmp_path / 'mini.pdparams')
    paddle.save({k: paddle.to_tensor(v) for k, v in state.items()}, weights)

    _, model = build_from_config(other)
    expected = _message(lambda: load_weights(model, weights, log=None), weights)
    assert expected.startswith('<file> does not fit the model: ') and 'shape mismatch(es): ' in expected

    messages = {'port': _message(lambda: port(official, other, log=lambda *_: None), official)}
    m = cfg['MODEL']
    messages['create_model'] = _message(lambda: paddlevit.create_model(
        'regnety_400mf', pretrained=weights, image_size=cfg['DATA']['IMAGE_SIZE'],
        **{f'MODEL.{k}': m[k] for k in ('NUM_CLASSES', 'STEM_WIDTH', 'W0', 'WA', 'WM', 'DEPTH', 'GROUP_W',
                                        'SE_RATIO', 'BOTTLE_RATIO')}), weights)
    student = load_family('PiT').get_config(opts=[
        'DATA.IMAGE_SIZE', '32', 'MODEL.NUM_CLASSES', '10', 'MODEL.BASE_DIMS', '[16, 16, 16]',
        'MODEL.DEPTH', '[1, 1, 1]', 'MODEL.NUM_HEADS', '[2, 2, 4]', 'MODEL.DISTILLED', 'True',
        'TRAIN.DISTILLATION_TYPE', 'hard', 'TRAIN.TEACHER_CONFIG', other, 'TRAIN.TEACHER_MODEL', weights])
    messages['teacher'] = _message(lambda: build_teacher(student, log=lambda *_: None), weights)
    assert messages == {caller: expected for caller in messages}

    # -resume: a checkpoint written by another variant
    paddle.seed(0)
    _, small = build_from_config(fits)
    opt = paddle.optimizer.AdamW(WarmupCosine(1e-3, 0, 0, 10, 1), parameters=small.parameters())
    manager = CheckpointManager(str(tmp_path / 'run'), 'mini', 10, 2)
    manager.save(1, small, opt, opt._learning_rate)
    prefix = manager.prefix('Epoch-1')
    opt2 = paddle.optimizer.AdamW(WarmupCosine(1e-3, 0, 0, 10, 1), parameters=model.parameters())
    assert _message(lambda: resume(prefix, model, opt2, opt2._learning_rate), prefix + '.pdparams') == expected


def test_pervit_visualisation_loads_through_the_shared_function(tmp_path):
    spec = importlib.util.spec_from_file_location(
        '_pervit_visualize', os.path.join(REPO, 'image_classification', 'PerViT', 'visualize.py'))
    visualize = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(visualize)
    cfg = os.path.join(FIXTURES, 'pervit_mini', 'pervit_mini.yaml')
    _, model = build_from_config(cfg)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    first = sorted(state)[0]
    state[first] = np.zeros([3, 1], np.float32)          # mis-shaped
    bad = str(tmp_path / 'bad.pdparams')
    paddle.save({k: paddle.to_tensor(v) for k, v in state.items()}, bad)
    expected = _message(lambda: load_weights(model, bad, log=None), bad)
    assert f'{first}: (3, 1) in <file>' in expected
    assert _message(lambda: visualize.main(['-cfg', cfg, '-pretrained', bad, '-output', str(tmp_path)]),
                    bad) == expected


# ----------------------------------------------------------------------------- options of the function

class _Net(paddle.nn.Layer):
    def __init__(self, num_classes=4):
        super().__init__()
        self.body = paddle.nn.Linear(3, 5)
        self.head = paddle.nn.Linear(5, num_classes)


def _save(state_or_model, path):
    state = state_or_model.state_dict() if isinstance(state_or_model, paddle.nn.Layer) else state_or_model
    paddle.save(state, path)
    return path


def test_ema_is_taken_from_beside_our_checkpoint_or_refused(tmp_path):
    paddle.seed(1)
    weights, average = _Net(), _Net()
    _save(weights, str(tmp_path / 'net-Best.pdparams'))
    _save(average, str(tmp_path / 'net-Best-EMA.pdparams'))
    for ema, source in ((False, weights), (True, average)):
        model = _Net()
        loaded = load_weights(model, str(tmp_path / 'net-Best'), ema=ema, log=None)
        for key, value in source.state_dict().items():
            np.testing.assert_array_equal(model.state_dict()[key].numpy(), value.numpy())
            np.testing.assert_array_equal(loaded[key], value.numpy())
    _save(weights, str(tmp_path / 'alone.pdparams'))
    with pytest.raises(MissingEMAError, match=r'alone-EMA\.pdparams .*does not exist'):
        load_weights(_Net(), str(tmp_path / 'alone.pdparams'), ema=True, log=None)
    # a resumed EMA is the -EMA file of the checkpoint, as load_weights(ema=True) picks it
    model = _Net()
    opt = paddle.optimizer.SGD(0.1, parameters=model.parameters())
    ema = ModelEMA(model, 0.9)
    ema.module.head.bias.set_value(paddle.full([4], 2.0))
    manager = CheckpointManager(str(tmp_path / 'run'), 'net', 10, 2)
    sched = WarmupCosine(0.1, 0, 0, 10, 1)
    manager.save(1, model, opt, sched, ema=ema)
    picked = load_checkpoint(manager.prefix('Epoch-1') + '.pdparams', ema=True)
    np.testing.assert_array_equal(picked['head.bias'], np.full([4], 2.0, np.float32))


def test_head_is_dropped_only_on_request_and_logged(tmp_path):
    paddle.seed(2)
    path = _save(_Net(num_classes=9), str(tmp_path / 'nine.pdparams'))
    model = _Net()
    before = model.head.weight.numpy().copy()
    messages = []
    load_weights(model, path, what='teacher', drop_head=True, log=messages.append)
    np.testing.assert_array_equal(model.head.weight.numpy(), before)
    assert messages[0] == 'teacher: dropped classifier head.weight (5, 9) (model has (5, 4)): it starts from ' \
                          'its initialisation'
    with pytest.raises(KeyMismatchError, match=r'the classifier head of .*nine\.pdparams does not fit'):
        load_weights(_Net(), path, log=None)


def test_resize_runs_the_models_adaptation_only_when_asked(tmp_path):
    class Grid(_Net):
        def adapt_state_dict(self, state):
            state['body.weight'] = state['body.weight'][:3]
            return ['body.weight: cut to 3 rows']

    path = _save({**_Net().state_dict(), 'body.weight': paddle.ones([6, 5])}, str(tmp_path / 'wide.pdparams'))
    with pytest.raises(KeyMismatchError, match=r'body\.weight: \(6, 5\) in .*wide\.pdparams, \(3, 5\) in model'):
        load_weights(Grid(), path, log=None)
    messages = []
    model = Grid()
    load_weights(model, path, what='pretrained', resize=True, log=messages.append)
    np.testing.assert_array_equal(model.body.weight.numpy(), np.ones([3, 5], np.float32))
    assert messages[0] == 'WARNING: pretrained: body.weight: cut to 3 rows'
