"""`tools/export_model.py --cpu_kernels`: a CPU graph in which the fused kernels of engine/cpu
are ops, run by Paddle Inference once `engine.cpu.exported` has checked the folder and
registered them (tests/fixtures/tiny_family; every family: test_export_families.py).

A portable export never holds them; a kernels export gives the dynamic model's logits, runs on
the CPU only, and is refused (one message, exit 2 from the tools) where the kernels are off,
on a GPU, or when its record is hostile or of another kernel source.
"""
import os
import shutil

import numpy as np
import paddle
import pytest

from conftest import TINY_CFG, kernel_ops_in_graph
from engine.cpu import dispatch, exported as cpu_exported
from engine.errors import UserError, cli
from tools import export_model, predict

pytestmark = pytest.mark.skipif(not dispatch.enabled() or not dispatch.kernels().available(),
                                reason='the fused CPU kernels are not available on this machine')


@pytest.fixture(scope='module')
def tiny(tiny_trained, tmp_path_factory):
    """(model in eval mode, weights path, portable export, kernels export)."""
    _, model, weights = tiny_trained
    root = tmp_path_factory.mktemp('cpu_kernels')
    portable, kernels = str(root / 'portable'), str(root / 'kernels')
    export_model.main(['-cfg', TINY_CFG, '-pretrained', weights, '-output', portable])
    export_model.main(['-cfg', TINY_CFG, '-pretrained', weights, '-output', kernels, '--cpu_kernels'])
    return model, weights, portable, kernels


def test_only_the_kernels_export_holds_the_kernels(tiny):
    _, _, portable, kernels = tiny
    assert kernel_ops_in_graph(portable) == set()
    assert not os.path.exists(os.path.join(portable, cpu_exported.RECORD))
    # TinyNet: its Mlp's Linear and GELU + Linear, its attention (its nn.Linear / nn.LayerNorm stay Paddle's)
    assert {'fused_linear', 'fused_gelu_linear', 'fused_attention'} <= kernel_ops_in_graph(kernels)
    assert cpu_exported.read_record(kernels)['source_sha256'] == cpu_exported._source_sha256()


@pytest.mark.parametrize('onednn', [False, True], ids=['plain', 'onednn'])
def test_kernels_export_predicts_as_the_dynamic_model(tiny, onednn):
    """Both exports give the dynamic model's logits; the kernels one on plain kernels only."""
    model, _, portable, kernels = tiny
    if onednn:
        with pytest.raises(UserError, match='runs on plain kernels only'):
            predict.InferenceModel(kernels, threads=2, onednn=True)
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype('float32')
    with paddle.no_grad():
        reference = model(paddle.to_tensor(x)).numpy()
    for folder in ((portable,) if onednn else (kernels, portable)):
        runner = predict.InferenceModel(folder, threads=2, onednn=onednn, log=pytest.fail)
        np.testing.assert_allclose(runner.logits(x), reference, rtol=0, atol=1e-5, err_msg=folder)
        np.testing.assert_allclose(runner.logits(x[:1]), reference[:1], rtol=0, atol=1e-5, err_msg=folder)


def test_a_portable_export_over_a_kernels_one_drops_the_record(tiny, tmp_path):
    _, weights, _, kernels = tiny
    folder = str(tmp_path / 'again')
    shutil.copytree(kernels, folder)
    export_model.main(['-cfg', TINY_CFG, '-pretrained', weights, '-output', folder])
    assert not os.path.exists(os.path.join(folder, cpu_exported.RECORD)) and kernel_ops_in_graph(folder) == set()
    assert cpu_exported.prepare(folder, 'cpu') is False


def test_kernels_export_runs_on_the_cpu_only(tiny):
    kernels = tiny[3]
    with pytest.raises(UserError, match=r'runs on the CPU only, not on gpu: export it again without --cpu_kernels'):
        predict.create_predictor(kernels, device='gpu')


def _with_record(kernels, tmp_path, content):
    folder = str(tmp_path / 'model')
    shutil.copytree(kernels, folder)
    with open(os.path.join(folder, cpu_exported.RECORD), 'wb') as f:
        f.write(content)
    return folder


@pytest.mark.parametrize('content, message', [
    (b'{"source_sha256": "' + b'0' * 64 + b'"}', r'another version of the fused CPU kernels .*export it again'),
    (b'{"source_sha256": "rm -rf /"}', r'"source_sha256" must be the 64 hex digits of a SHA-256'),
    (b'[1, 2]', r'"source_sha256" must be the 64 hex digits'),
    (b'\xff\xfe not json', r'not JSON'),
    (b' ' * (cpu_exported.MAX_RECORD_BYTES + 1), r'larger than 4096 bytes'),
], ids=['other_source', 'bad_digest', 'not_an_object', 'not_json', 'too_large'])
def test_a_bad_record_is_one_message_naming_the_file(tiny, tmp_path, content, message):
    folder = _with_record(tiny[3], tmp_path, content)
    with pytest.raises(UserError, match=message) as caught:
        predict.create_predictor(folder)
    assert folder in str(caught.value)


def test_predict_cli_says_it_once_with_exit_2(tiny, tmp_path, capsys):
    folder = _with_record(tiny[3], tmp_path, b'{"source_sha256": "' + b'a' * 64 + b'"}')
    image = str(tmp_path / 'x.png')
    from PIL import Image
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(image)
    with pytest.raises(SystemExit) as info:
        cli(predict.main, ['--model_dir', folder, image])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert 'another version of the fused CPU kernels' in err and 'Traceback' not in err


def test_kernels_switched_off_refuse_both_ways(tiny, tmp_path, monkeypatch):
    model, _, _, kernels = tiny
    monkeypatch.setenv('PADDLEVIT_FUSED_CPU_OPS', '0')
    with pytest.raises(UserError, match=r'needs the fused CPU kernels, which are off here'):
        predict.create_predictor(kernels)
    with pytest.raises(UserError, match=r'--cpu_kernels needs the fused CPU kernels, which are off here'):
        export_model.export(model, 32, str(tmp_path / 'off'), cpu_kernels=True)
    assert not os.path.exists(str(tmp_path / 'off'))


def test_kernels_and_onnx_are_refused_together(capsys):
    with pytest.raises(SystemExit) as info:
        export_model.main(['-model', 'vit_tiny_patch16_224', '-pretrained', 'x.pdparams', '-output', 'out',
                           '--cpu_kernels', '--onnx'])
    assert info.value.code == 2
    assert 'paddle2onnx knows nothing of the fused CPU kernels' in capsys.readouterr().err



def test_predict_runs_a_kernels_export_on_plain_kernels_by_default(tiny, tmp_path, predict_onednn):
    """`onednn_by_default(config, cpu_kernels=True)` is False for every family (oneDNN ran none
    faster); predict.py reads that from the folder's record."""
    _, _, portable, kernels = tiny
    image = str(tmp_path / 'x.png')
    from PIL import Image
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(image)
    for folder, flags, expected in ((kernels, [], False), (portable, ['--onednn', 'off'], False), (portable, [], True)):
        assert predict_onednn(['--model_dir', folder, image, *flags]) is expected, (folder, flags)
