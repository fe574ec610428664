"""tools/export_model.py and tools/predict.py on a tiny test family (tests/fixtures/tiny_family).

The exported model, run by Paddle Inference, must give the dynamic model's
logits; predict.py must preprocess as the config's evaluation does; weights
that do not fit the model must be refused before anything is written.
"""
import csv
import math
import os
import shutil
import sys
import types

import numpy as np
import paddle
import pytest
from PIL import Image

from conftest import TINY_CFG
from engine.errors import UserError, cli
from port_weights.keymap import KeyMismatchError
from tools import export_model, predict
from tools.onnx_model import INSTALL_HINT

@pytest.fixture(scope='module')
def exported(tiny_trained, tmp_path_factory):
    _, _, weights = tiny_trained
    out = str(tmp_path_factory.mktemp('export') / 'tiny')
    export_model.main(['-cfg', TINY_CFG, '-pretrained', weights, '-output', out])
    return out


def _dynamic_logits(model, x):
    with paddle.no_grad():
        return model(paddle.to_tensor(x)).numpy()


def test_export_writes_files(exported):
    for name in ('inference.json', 'inference.pdiparams', 'config.yaml'):
        assert os.path.isfile(os.path.join(exported, name)), name


@pytest.mark.parametrize('onednn', [True, False])
def test_inference_matches_dynamic_model(tiny_trained, exported, onednn):
    _, model, _ = tiny_trained
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype('float32')
    predictor = predict.create_predictor(exported, threads=1, onednn=onednn)
    out = predict.run(predictor, x)
    np.testing.assert_allclose(out, _dynamic_logits(model, x), rtol=0, atol=1e-5)
    out1 = predict.run(predictor, x[:1])                 # any batch size
    np.testing.assert_allclose(out1, _dynamic_logits(model, x[:1]), rtol=0, atol=1e-5)


def _reference_preprocess(path):
    """tinynet_32.yaml's eval preprocessing, written out: short side to floor(32 / 0.8) = 40
    (bilinear, PIL), centre crop 32, normalise with its MEAN / STD."""
    img = Image.open(path).convert('RGB')
    w, h = img.size
    short = math.floor(32 / 0.8)
    size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    img = img.resize(size, Image.BILINEAR)
    left, top = round((size[0] - 32) / 2.0), round((size[1] - 32) / 2.0)
    a = np.asarray(img.crop((left, top, left + 32, top + 32)), np.float32) / 255.0
    a = (a - np.array([0.4, 0.5, 0.6], np.float32)) / np.array([0.2, 0.25, 0.3], np.float32)
    return a.transpose(2, 0, 1)


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp('images')
    rng = np.random.default_rng(3)
    paths = []
    for name, (h, w) in (('wide.jpg', (45, 70)), ('tall.png', (90, 41))):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        pixels[: h // 2] //= 3                            # some structure, so classes differ
        Image.fromarray(pixels).save(str(folder / name), quality=95)
        paths.append(str(folder / name))
    return paths


def test_predict_preprocesses_as_the_config_says(tiny_trained, exported, images):
    _, model, _ = tiny_trained
    classifier = predict.Classifier(exported, predict.load_config(exported), threads=1)
    indices, probs = classifier.predict(images, k=7)
    ref = predict.softmax(_dynamic_logits(model, np.stack([_reference_preprocess(p) for p in images])))
    # slack: engine.data resamples only the cropped box (PIL `box=`), which rounds a few pixels
    # one level away from resize-then-crop (6e-4 here); using another CROP_PCT, MEAN/STD or
    # filter than the config's moves these probabilities by 0.03 to 0.17
    np.testing.assert_allclose(np.take_along_axis(ref, indices, axis=1), probs, rtol=0, atol=2e-3)
    assert (np.diff(probs, axis=1) <= 0).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)


def test_predict_cli_prints_topk(exported, images, tmp_path, capsys):
    labels = tmp_path / 'names.txt'
    labels.write_text(''.join(f'animal {i}\n' for i in range(7)))
    predict.main(['--model_dir', exported, *images, '--labels', str(labels), '--topk', '3'])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith('preprocessing: resize short side to 40 (32 / crop_pct 0.8, bilinear')
    for n, path in enumerate(images):
        block = lines[1 + 4 * n: 1 + 4 * (n + 1)]
        assert block[0] == path
        for rank, line in enumerate(block[1:], 1):
            fields = line.split()
            assert fields[0] == f'{rank}.' and fields[1] == 'class' and fields[3] == 'prob'
            assert line.endswith(f'animal {int(fields[2])}')
            assert 0.0 < float(fields[4]) <= 1.0


def test_predict_refuses_labels_of_another_size(exported, images, tmp_path):
    labels = tmp_path / 'names.txt'
    labels.write_text('a\nb\nc\n')
    with pytest.raises(ValueError, match='names 3 classes, the model predicts 7'):
        predict.main(['--model_dir', exported, images[0], '--labels', str(labels)])


def test_predict_refuses_config_of_another_image_size(exported, tmp_path):
    cfg = tmp_path / 'tiny_48.yaml'
    cfg.write_text(f"BASE: ['{TINY_CFG}']\nDATA:\n  IMAGE_SIZE: 48\n")
    with pytest.raises(ValueError, match='exported for 32'):
        predict.load_config(exported, str(cfg))


def _export_with_state(state, tmp_path):
    weights = str(tmp_path / 'bad.pdparams')
    paddle.save(state, weights)
    out = str(tmp_path / 'out')
    with pytest.raises(KeyMismatchError) as info:
        export_model.main(['-cfg', TINY_CFG, '-pretrained', weights, '-output', out])
    assert not os.path.exists(out)
    return str(info.value)


def test_wrong_shape_is_refused(tiny_trained, tmp_path):
    state = dict(tiny_trained[1].state_dict())
    state['bn.weight'] = paddle.ones([8])                  # the model has 16 channels there
    message = _export_with_state(state, tmp_path)
    assert 'bn.weight: (8,)' in message and '(16,) in model' in message


def test_head_of_another_class_count_is_refused(tiny_trained, tmp_path):
    # exporting never drops a head: a random one would predict nonsense (-num_classes must fit)
    state = dict(tiny_trained[1].state_dict())
    state['head.weight'] = paddle.zeros([16, 8])           # 8 classes, the config has 7
    message = _export_with_state(state, tmp_path)
    assert 'head.weight: (16, 8) in' in message and '(16, 7) in the model' in message


def test_missing_and_unexpected_keys_are_refused(tiny_trained, tmp_path):
    state = dict(tiny_trained[1].state_dict())
    del state['bn._variance']
    state['head.extra'] = paddle.zeros([1])
    message = _export_with_state(state, tmp_path)
    assert 'missing key(s): bn._variance' in message
    assert 'unexpected key(s): head.extra' in message


def test_onnx_without_paddle2onnx_is_skipped_with_a_message(monkeypatch):
    monkeypatch.setitem(sys.modules, 'paddle2onnx', None)   # makes `import paddle2onnx` fail
    messages = []
    assert export_model.export_onnx('/nonexistent/inference', log=messages.append) is None
    assert INSTALL_HINT in messages[0]


def test_onnx_conversion_that_aborts_is_an_error_not_a_crash(exported, monkeypatch, tmp_path):
    """paddle2onnx aborts its process on an operator it cannot convert (SIGABRT, as VVT's
    `1. / t` did): the conversion runs in a child, so this process gets an error naming it."""
    monkeypatch.setitem(sys.modules, 'paddle2onnx', types.ModuleType('paddle2onnx'))   # "installed"
    monkeypatch.setattr(export_model, '_CONVERT',
                        'import os, sys; print("[ERROR][Paddle2ONNX] unsupported operators", flush=True); os.abort()')
    with pytest.raises(RuntimeError, match=r'could not convert .* \(exit status -6\): '
                                           r'\[ERROR\]\[Paddle2ONNX\] unsupported operators'):
        export_model.export_onnx(os.path.join(exported, 'inference'))


def test_onnx_export_matches(tiny_trained, exported):
    pytest.importorskip('paddle2onnx')
    ort = pytest.importorskip('onnxruntime')
    _, model, _ = tiny_trained
    onnx_file = export_model.export_onnx(os.path.join(exported, 'inference'))
    session = ort.InferenceSession(onnx_file, providers=['CPUExecutionProvider'])
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype('float32')
    out = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(out, _dynamic_logits(model, x), rtol=0, atol=1e-5)


# ---- --backend onnxruntime (tools/onnx_model.py) --------------------------------------------

def _onnx_packages():
    for name in ('paddle2onnx', 'onnxruntime'):
        pytest.importorskip(name, reason=f'{name} is not installed: pip install -r requirements-onnx.txt')


@pytest.fixture(scope='module')
def onnx_exported(exported, tmp_path_factory):
    """A copy of the exported tiny model with its inference.onnx."""
    _onnx_packages()
    folder = str(tmp_path_factory.mktemp('onnx') / 'tiny')
    shutil.copytree(exported, folder)
    export_model.export_onnx(os.path.join(folder, 'inference'), log=pytest.fail)
    return folder


def test_onnxruntime_backend_predicts_as_paddle_inference(onnx_exported, images, tmp_path):
    rows = {}
    for backend in predict.BACKENDS:
        out = tmp_path / f'{backend}.csv'
        assert predict.main(['--model_dir', onnx_exported, *images, '--threads', '1', '--topk', '7',
                             '--csv', str(out), '--backend', backend]) == 0
        rows[backend] = read_csv(out)
    for paddle_row, onnx_row in zip(rows['paddle'], rows['onnxruntime']):
        assert onnx_row[:2] == paddle_row[:2]                        # path, top-1 class
        np.testing.assert_allclose([float(p) for p in onnx_row[2::2]], [float(p) for p in paddle_row[2::2]],
                                   rtol=0, atol=2e-6)                # the CSV's 6 decimals


def test_onnxruntime_backend_without_the_package_is_one_message(exported, images, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)         # makes `import onnxruntime` fail
    with pytest.raises(SystemExit) as info:
        cli(predict.main, ['--model_dir', exported, images[0], '--backend', 'onnxruntime'])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert 'needs the onnxruntime package' in err and INSTALL_HINT in err and 'Traceback' not in err


def test_onnxruntime_backend_without_the_onnx_file_says_how_to_make_it(exported, images, tmp_path, capsys):
    pytest.importorskip('onnxruntime', reason='onnxruntime is not installed: pip install -r requirements-onnx.txt')
    folder = tmp_path / 'no_onnx'
    shutil.copytree(exported, folder, ignore=shutil.ignore_patterns('*.onnx'))
    with pytest.raises(SystemExit) as info:
        cli(predict.main, ['--model_dir', str(folder), images[0], '--backend', 'onnxruntime'])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith(f'error: {folder / "inference.onnx"} not found: --backend onnxruntime runs the ONNX model '
                        f'that `tools/export_model.py ... -output {folder} --onnx` writes '
                        f'(paddle2onnx needed: {INSTALL_HINT})')


@pytest.mark.parametrize('flag', [['--device', 'gpu'], ['--no-onednn']])
def test_onnxruntime_backend_refuses_paddle_only_flags(exported, images, flag, capsys):
    with pytest.raises(SystemExit) as info:
        predict.main(['--model_dir', exported, images[0], '--backend', 'onnxruntime', *flag])
    assert info.value.code == 2
    assert '--backend onnxruntime runs on the CPU' in capsys.readouterr().err


def test_benchmark_exported_step_on_onnxruntime(capsys):
    """`tools/benchmark.py --mode exported --backend onnxruntime` times the converted model."""
    _onnx_packages()
    from tools.benchmarking.inference import inference_step
    model = _PlainConvNet()
    model.eval()
    x = np.random.default_rng(9).standard_normal((2, 3, 32, 32)).astype('float32')
    step, onednn = inference_step(model, 32, x, 'cpu', 1, backend='onnxruntime')
    assert onednn is None
    np.testing.assert_allclose(step(), _dynamic_logits(model, x), rtol=0, atol=1e-5)


def test_benchmark_onnxruntime_without_paddle2onnx_is_a_user_error(monkeypatch):
    from tools.benchmarking.inference import inference_step
    monkeypatch.setitem(sys.modules, 'paddle2onnx', None)
    model = _PlainConvNet()
    model.eval()
    with pytest.raises(UserError, match=r'--backend onnxruntime: paddle2onnx is not installed: pip install'):
        inference_step(model, 32, np.zeros((1, 3, 32, 32), np.float32), 'cpu', 1, backend='onnxruntime')


# ---- the oneDNN fallback (predict.InferenceModel) -------------------------------------------
GLOG_LINE = 'W1203 10:27:20.933746 11405 pir_interpreter.cc:2045] onednn_op.fused_matmul raises an exception dnnl::error'


class _FailingRun:
    """A predictor whose run() fails as Paddle's oneDNN kernels do: a bare std::exception,
    the op named only in the C++ log."""

    def __init__(self, predictor):
        self._predictor = predictor

    def __getattr__(self, name):
        return getattr(self._predictor, name)

    def run(self):
        os.write(2, (GLOG_LINE + '\n').encode())
        raise RuntimeError('std::exception')


def _onednn_breaks(monkeypatch, when):
    """Make oneDNN fail `when` = 'build' or 'run', as Paddle 3.3.1's does for some graphs."""
    create = predict.create_predictor

    def patched(model_dir, device='cpu', threads=None, onednn=True, **kwargs):
        if onednn and when == 'build':
            os.write(2, (GLOG_LINE + '\n').encode())
            raise RuntimeError('std::exception')
        predictor = create(model_dir, device, threads, onednn, **kwargs)
        return _FailingRun(predictor) if onednn and when == 'run' else predictor

    monkeypatch.setattr(predict, 'create_predictor', patched)


@pytest.mark.parametrize('when, what', [('build', 'build the predictor'), ('run', 'run this model')])
def test_onednn_failure_falls_back_once_naming_the_error(tiny_trained, exported, monkeypatch, capfd, when, what):
    config, model, _ = tiny_trained
    _onednn_breaks(monkeypatch, when)
    messages = []
    classifier = predict.Classifier(exported, config, threads=1, log=messages.append)
    x = np.random.default_rng(4).standard_normal((2, 3, 32, 32)).astype('float32')
    for batch in (x, x[:1], x):
        np.testing.assert_allclose(classifier.logits(batch), _dynamic_logits(model, batch), rtol=0, atol=1e-5)
    assert not classifier.model.onednn
    assert messages == [f'oneDNN could not {what} (onednn_op.fused_matmul raises an exception dnnl::error; '
                        'RuntimeError: std::exception); running without oneDNN']
    assert 'dnnl::error' not in capfd.readouterr().err      # said once, in the message


def test_a_failure_not_of_onednn_is_raised_as_it_is(tiny_trained, exported, capfd):
    """A batch that fails without oneDNN too (4 channels for a 3-channel model) raises the
    plain predictor's error, with no message, and oneDNN stays in use."""
    config, model, _ = tiny_trained
    messages = []
    classifier = predict.Classifier(exported, config, threads=1, log=messages.append)
    bad = np.zeros((1, 4, 32, 32), np.float32)
    with pytest.raises((RuntimeError, ValueError)) as info:
        classifier.logits(bad)
    assert 'std::exception' not in str(info.value)            # Paddle's own message on the shape
    assert classifier.model.onednn and not messages
    x = np.random.default_rng(5).standard_normal((2, 3, 32, 32)).astype('float32')
    np.testing.assert_allclose(classifier.logits(x), _dynamic_logits(model, x), rtol=0, atol=1e-5)
    with pytest.raises((RuntimeError, ValueError)):            # after a good batch: no retry
        classifier.logits(bad)
    assert classifier.model.onednn and not messages


class _FoldedReshapeTranspose(paddle.nn.Layer):
    """The op pattern PerViT's position encoding had: a constant 4-D tensor @ a parameter
    reshaped then transposed.  Paddle Inference 3.3.1's oneDNN fuses the reshape and the
    transpose into a `fused_matmul` that raises dnnl::error for a 4-D input; all inputs
    being constant, `constant_folding_pass` runs it while the predictor is built."""

    def __init__(self):
        super().__init__()
        self.w = self.create_parameter([7, 3, 3])
        self.patches = np.random.default_rng(6).standard_normal((4, 5, 5, 9)).astype('float32')

    def forward(self, x):
        folded = paddle.matmul(paddle.to_tensor(self.patches), self.w.reshape([7, 9]).t()).mean(axis=[0, 1, 2])
        return x.mean(axis=[2, 3]).matmul(paddle.ones([3, 7])) + folded


@pytest.fixture()
def unbuildable(tmp_path):
    """(model, folder) of `_FoldedReshapeTranspose` exported; skips where Paddle's oneDNN builds it."""
    model = _FoldedReshapeTranspose()
    model.eval()
    export_model.export(model, 32, str(tmp_path))
    try:
        predict.create_predictor(str(tmp_path), threads=1, onednn=True)
    except RuntimeError:
        return model, str(tmp_path)
    pytest.skip(f'Paddle {paddle.__version__} builds the folded reshape-transpose matmul with oneDNN')


def test_onednn_that_cannot_build_the_graph_is_dropped(tiny_trained, unbuildable):
    """The real failure, through a real predictor."""
    model, folder = unbuildable
    messages = []
    classifier = predict.Classifier(folder, tiny_trained[0], threads=1, log=messages.append)
    x = np.random.default_rng(7).standard_normal((2, 3, 32, 32)).astype('float32')
    np.testing.assert_allclose(classifier.logits(x), _dynamic_logits(model, x), rtol=0, atol=1e-5)
    assert not classifier.model.onednn and len(messages) == 1
    assert messages[0].startswith('oneDNN could not build the predictor (')
    assert messages[0].endswith('RuntimeError: std::exception); running without oneDNN')


def test_benchmark_inference_takes_the_same_decision(unbuildable, capsys):
    """`tools/benchmark.py --inference` times the graph without oneDNN where it cannot be built
    (it died in create_predictor), and with oneDNN where it can."""
    from tools.benchmarking.inference import inference_step
    model, _ = unbuildable
    x = np.random.default_rng(8).standard_normal((2, 3, 32, 32)).astype('float32')
    step, onednn = inference_step(model, 32, x, 'cpu', 1)
    assert onednn is False
    assert 'oneDNN could not build the predictor' in capsys.readouterr().err
    np.testing.assert_allclose(step(), _dynamic_logits(model, x), rtol=0, atol=1e-5)
    plain = _PlainConvNet()
    plain.eval()
    step, onednn = inference_step(plain, 32, x, 'cpu', 1)
    assert onednn is True
    np.testing.assert_allclose(step(), _dynamic_logits(plain, x), rtol=0, atol=1e-5)


class _PlainConvNet(paddle.nn.Layer):
    """A conv and a linear head: a graph oneDNN runs."""

    def __init__(self):
        super().__init__()
        self.conv = paddle.nn.Conv2D(3, 4, 3, padding=1)
        self.head = paddle.nn.Linear(4, 7)

    def forward(self, x):
        return self.head(self.conv(x).mean([2, 3]))


@pytest.mark.slow       # two exports of a small PiT
def test_weights_of_another_image_size_need_adapt(tmp_path, capsys):
    """An export runs the weights as trained: position embeddings are resized only with --adapt."""
    import paddlevit
    small = ['MODEL.DEPTH', '[1, 1, 1]', 'MODEL.NUM_CLASSES', '5']
    weights = str(tmp_path / 'pit_64.pdparams')
    paddle.save(paddlevit.create_model('pit_ti_224', image_size=64, **dict(zip(small[0::2], small[1::2])))
                .state_dict(), weights)
    argv = ['-model', 'pit_ti_224', '-pretrained', weights, '-image_size', '96', '-opts', *small]
    with pytest.raises(KeyMismatchError, match='pos_embed'):
        export_model.main([*argv, '-output', str(tmp_path / 'refused')])
    assert not os.path.exists(str(tmp_path / 'refused'))
    export_model.main([*argv, '-output', str(tmp_path / 'adapted'), '--adapt'])
    out = capsys.readouterr().out
    assert 'WARNING: pretrained: ' in out and 'pos_embed' in out
    assert os.path.isfile(str(tmp_path / 'adapted' / 'inference.pdiparams'))


# ---- predict.py as users run it: folders, list files, batches, the CSV, accuracy, bad images ----
# every expected figure is computed from `Classifier.predict` on the same files, one by one

@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    """A folder of 5 images (one in a sub-folder, one with an upper-case extension), a text file
    that is not an image, and a hidden file."""
    root = tmp_path_factory.mktemp('photos')
    (root / 'sub').mkdir()
    rng = np.random.default_rng(5)
    for i, name in enumerate(['b.jpg', 'a.png', 'sub/c.jpg', 'd.JPEG', 'e.png']):
        pixels = rng.integers(0, 256, (40 + 7 * i, 60 - 5 * i, 3), dtype=np.uint8)
        pixels[: 10 + 4 * i] //= 4
        Image.fromarray(pixels).save(str(root / name), format='PNG' if name.endswith('png') else 'JPEG')
    (root / 'notes.txt').write_text('not an image\n')
    (root / '.hidden.jpg').write_bytes(b'')
    return root


IMAGES = ['a.png', 'b.jpg', 'd.JPEG', 'e.png', 'sub/c.jpg']      # sorted, as the folder is read


@pytest.fixture(scope='module')
def reference(exported, folder):
    """{relative path: (top-7 classes, probabilities)} of each image predicted alone."""
    classifier = predict.Classifier(exported, predict.load_config(exported), threads=1)
    return {name: tuple(a[0] for a in classifier.predict([str(folder / name)], k=7)) for name in IMAGES}


def read_csv(path):
    with open(path, newline='', encoding='utf-8') as f:
        return list(csv.reader(f))


def predict_cli(exported, *args):
    return predict.main(['--model_dir', exported, '--threads', '1', '--quiet', *map(str, args)])


@pytest.mark.parametrize('batch_size', [1, 3])
def test_folder_to_csv_at_any_batch_size(exported, folder, reference, tmp_path, capsys, batch_size):
    out = tmp_path / 'top.csv'
    assert predict_cli(exported, folder, '--csv', out, '--topk', 2, '--batch_size', batch_size) == 0
    rows = read_csv(out)
    assert [os.path.relpath(r[0], folder).replace(os.sep, '/') for r in rows] == IMAGES
    for row, name in zip(rows, IMAGES):
        indices, probs = reference[name]
        assert [int(c) for c in row[1::2]] == list(indices[:2])
        np.testing.assert_allclose([float(p) for p in row[2::2]], probs[:2], atol=1e-5)
    summary = capsys.readouterr().out.splitlines()[-1]
    assert summary.startswith('5 images in ') and 'images/s' in summary and 'skipped' not in summary


def test_csv_names_classes(exported, folder, tmp_path):
    names = tmp_path / 'names.txt'
    names.write_text(''.join(f'kind {i}\n' for i in range(7)))
    out = tmp_path / 'top.csv'
    predict_cli(exported, folder / 'a.png', '--csv', out, '--topk', 3, '--labels', names)
    row, = read_csv(out)
    assert row[0] == str(folder / 'a.png') and len(row) == 1 + 3 * 3
    assert all(row[3 + 3 * r] == f'kind {row[1 + 3 * r]}' for r in range(3))


def test_list_with_labels_prints_accuracy(exported, folder, reference, tmp_path, capsys):
    rank = {'a.png': 0, 'b.jpg': 0, 'd.JPEG': 3, 'e.png': 6, 'sub/c.jpg': 1}   # of the true label
    labels = {name: int(reference[name][0][rank[name]]) for name in IMAGES}
    lines = ''.join(f'{os.path.join("..", folder.name, name)} {labels[name]}\n' for name in IMAGES)
    (folder.parent / 'lists').mkdir(exist_ok=True)
    listed = folder.parent / 'lists' / 'val_list.txt'          # paths are relative to the list's folder
    listed.write_text(lines)
    assert predict_cli(exported, listed, '--batch_size', 2) == 0
    top1 = sum(reference[n][0][0] == labels[n] for n in IMAGES)
    top5 = sum(labels[n] in reference[n][0][:5] for n in IMAGES)
    assert (top1, top5) == (2, 4)
    assert capsys.readouterr().out.splitlines()[-1] == \
        f'accuracy over 5 labelled images: top-1 {100 * top1 / 5:.2f}%, top-5 {100 * top5 / 5:.2f}%'


def test_list_of_paths_only(exported, folder, reference, tmp_path):
    listed = folder / 'paths.txt'
    listed.write_text('sub/c.jpg\n\nb.jpg\n')
    out = tmp_path / 'top.csv'
    predict_cli(exported, listed, '--csv', out, '--topk', 1)
    assert [(r[0], int(r[1])) for r in read_csv(out)] == \
        [(str(folder / n), reference[n][0][0]) for n in ('sub/c.jpg', 'b.jpg')]


def test_bad_image_is_skipped_named_and_counted(exported, folder, reference, tmp_path, capsys, caplog):
    bad = tmp_path / 'broken.jpg'
    bad.write_bytes(b'\xff\xd8 truncated')
    out = tmp_path / 'top.csv'
    predict_cli(exported, folder / 'a.png', bad, folder / 'b.jpg', tmp_path / 'gone.jpg', '--csv', out, '--topk', 1)
    assert [r[0] for r in read_csv(out)] == [str(folder / 'a.png'), str(folder / 'b.jpg')]
    captured = capsys.readouterr()
    logged = caplog.text                      # the engine logs each skipped image, to stderr
    assert str(bad) in logged and str(tmp_path / 'gone.jpg') in logged
    assert captured.out.splitlines()[-1].startswith('2 images in ')
    assert 'skipped 2 unreadable image(s)' in captured.out


def test_wrong_list_line_names_file_and_line(exported, folder, capsys):
    listed = folder / 'wrong.txt'
    listed.write_text('a.png 1\nb.jpg one\n')
    with pytest.raises(SystemExit) as stop:
        cli(predict.main, ['--model_dir', exported, '--quiet', str(listed)])
    assert stop.value.code == 2
    assert f'{listed}:2: label \'one\' is not an integer' in capsys.readouterr().err


def test_progress_bar_only_on_a_terminal(capsys, monkeypatch):
    predict.Progress(4).draw(2)
    assert capsys.readouterr().err == ''                       # pytest's stderr is not a terminal
    monkeypatch.setattr(type(__import__('sys').stderr), 'isatty', lambda self: True, raising=False)
    predict.Progress(4, quiet=True).draw(2)
    assert capsys.readouterr().err == ''
    predict.Progress(4, width=8).draw(2)
    assert capsys.readouterr().err.startswith('\r[####....] 2/4 images, ')


def test_onednn_or_plain_kernels_by_the_family_rule(exported, images, monkeypatch, predict_onednn):
    """predict.py's CPU default is an explicit rule by family (`onednn_by_default`), which
    `--onednn on|off` (and `--no-onednn`) override; the benchmark's exported step follows it."""
    import paddlevit
    for name, onednn in (('vvt_tiny_224', False), ('pervit_tiny_224', False), ('vit_small_patch16_224', True),
                         ('pit_s_224', True), ('spvit_s_224', True)):
        assert predict.onednn_by_default(paddlevit.model_config(name)) is onednn, name
    assert predict.onednn_by_default(None) is True
    for name in ('vvt_tiny_224', 'vit_small_patch16_224', 'spvit_s_224'):      # an export with --cpu_kernels
        assert predict.onednn_by_default(paddlevit.model_config(name), cpu_kernels=True) is False, name
    family = predict.load_config(exported).MODEL.TYPE
    for flags, expected in (([], family not in predict.PLAIN_KERNEL_FAMILIES), (['--onednn', 'on'], True),
                            (['--onednn', 'off'], False), (['--no-onednn'], False)):
        assert predict_onednn(['--model_dir', exported, images[0], *flags]) is expected, flags
    monkeypatch.setattr(predict, 'PLAIN_KERNEL_FAMILIES', frozenset({family}))
    assert predict_onednn(['--model_dir', exported, images[0]]) is False
