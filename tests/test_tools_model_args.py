"""Every tool takes a model by name (`-model`) or by config file (`-cfg`), both through
`paddlevit.create_model` (tools/model_args.py): the same model either way gives the same result,
and an unknown name is one message listing the close names, exit status 2."""
import glob
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

from conftest import REPO
from engine.config import ConfigError
from engine.token_labeling import load_label_map
from test_engine_run import COLORS, make_dataset
from tools import export_model, flops, generate_label, predict

PIT = os.path.join(REPO, 'image_classification', 'PiT', 'configs', 'pit_ti_224.yaml')
PIT_SMALL = ['MODEL.DEPTH', '[1, 1, 1]', 'MODEL.NUM_CLASSES', '5']
REGNET = os.path.join(REPO, 'image_classification', 'RegNet', 'configs', 'regnety_400mf.yaml')
REGNET_SMALL = ['MODEL.DEPTH', '4', 'MODEL.NUM_CLASSES', str(len(COLORS)), 'DATA.CROP_PCT', '1.0']


def _weights(tmp_path, name, opts, image_size=None):
    import paddlevit
    paddle.seed(3)
    model = paddlevit.create_model(name, image_size=image_size, **dict(zip(opts[0::2], opts[1::2])))
    path = str(tmp_path / f'{name}.pdparams')
    paddle.save(model.state_dict(), path)
    return path


@pytest.mark.slow       # two traced programs
def test_flops_by_name_and_by_file(capsys):
    lines = []
    for how in (['-model', 'pit_ti_224'], ['-cfg', PIT]):
        flops.main([*how, '-image_size', '64', '-opts', *PIT_SMALL])
        lines.append(capsys.readouterr().out.split('  [')[0])     # without the [source] it names
    assert lines[0] == lines[1] and lines[0].startswith('pit_ti  image 64  params ')


@pytest.mark.slow       # two exports and two predictors
def test_export_and_predict_by_name_and_by_file(tmp_path, capsys):
    weights = _weights(tmp_path, 'pit_ti_224', PIT_SMALL, image_size=64)
    folders = []
    for tag, how in (('name', ['-model', 'pit_ti_224']), ('file', ['-cfg', PIT])):
        out = str(tmp_path / tag)
        export_model.main([*how, '-pretrained', weights, '-output', out, '-image_size', '64', '-opts', *PIT_SMALL])
        folders.append(out)
    with open(os.path.join(folders[0], 'config.yaml')) as a, open(os.path.join(folders[1], 'config.yaml')) as b:
        assert a.read() == b.read()
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype('float32')
    logits = [predict.InferenceModel(folder, threads=1, onednn=False).logits(x) for folder in folders]
    np.testing.assert_array_equal(logits[0], logits[1])
    # predict's -model / -cfg name the preprocessing; both give the exported config's
    configs = [predict.load_config(folders[0], source, ['DATA.IMAGE_SIZE', '64', *PIT_SMALL])
               for source in ('pit_ti_224', PIT, None)]
    assert configs[0].dump() == configs[1].dump()
    assert configs[0].DATA.dump() == configs[2].DATA.dump()
    with pytest.raises(ValueError, match='exported for 64'):     # the name's own 224 does not fit
        predict.load_config(folders[0], 'pit_ti_224')


def test_generate_label_by_name_and_by_file(tmp_path):
    root = make_dataset(str(tmp_path / 'data'), n_train=4, n_val=1, size=40)
    weights = _weights(tmp_path, 'regnety_400mf', REGNET_SMALL, image_size=32)
    maps = []
    for tag, how in (('name', ['-model', 'regnety_400mf']), ('file', ['-cfg', REGNET])):
        out = str(tmp_path / tag)
        assert generate_label.main([*how, '-pretrained', weights, '-data_path', root, '-output', out,
                                    '-topk', '2', '-batch_size', '2', '-num_workers', '0',
                                    '-opts', 'DATA.IMAGE_SIZE', '32', *REGNET_SMALL]) == 0
        maps.append(sorted(glob.glob(os.path.join(out, '**', '*.npz'), recursive=True)))
    assert len(maps[0]) == 4 and [os.path.relpath(p, str(tmp_path / 'name')) for p in maps[0]] == \
        [os.path.relpath(p, str(tmp_path / 'file')) for p in maps[1]]
    for a, b in zip(*maps):
        a, b = load_label_map(a), load_label_map(b)
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.indices, b.indices)
        assert a.region == b.region


@pytest.mark.parametrize('tool', [flops, export_model, generate_label, predict])
def test_unknown_name_lists_close_names(tool, tmp_path):
    argv = {flops: [], export_model: ['-pretrained', 'x.pdparams', '-output', str(tmp_path)],
            generate_label: ['-pretrained', 'x.pdparams', '-data_path', str(tmp_path), '-output', str(tmp_path)],
            predict: ['--model_dir', str(tmp_path), 'x.jpg']}
    with pytest.raises(ConfigError, match=r"unknown model 'pit_s_22'.*similar: pit_s_224\b"):
        tool.main(['-model', 'pit_s_22', *argv[tool]])


@pytest.mark.slow       # a measuring child process
def test_benchmark_unknown_name_stops_with_the_message(capsys):
    from tools import benchmark
    assert benchmark.main(['-model', 'pit_s_22', '--mode', 'eval', '--iters', '1', '--warmup', '1']) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "benchmark.py: error: unknown model 'pit_s_22'; list_models() gives the")


@pytest.mark.slow       # a subprocess
def test_unknown_name_is_one_message_and_exit_2():
    proc = subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'flops.py'), '-model', 'vit_smal_patch16_224'],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("flops.py: error: unknown model 'vit_smal_patch16_224'"), proc.stderr
    assert 'vit_small_patch16_224' in last and 'pervit' not in last


def test_model_and_cfg_are_exclusive(capsys):
    with pytest.raises(SystemExit) as info:
        flops.main(['-model', 'pit_ti_224', '-cfg', PIT])
    assert info.value.code == 2 and 'not allowed with argument' in capsys.readouterr().err
