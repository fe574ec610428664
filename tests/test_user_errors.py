"""A user error (flag, config, data, weights) ends every entry point with one message and exit 2.

Each mode runs as a user runs it, in a subprocess: the message must be there, be the last thing
printed (not buried under the config dump), and come without a Python traceback.
"""
import os
import subprocess
import sys
import time

import pytest

from conftest import python_traceback_free

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIT = os.path.join(REPO, 'image_classification', 'ViT')
DEMO_CFG = os.path.join(VIT, 'configs', 'vit_demo_digits_32.yaml')
ENV = {**os.environ, 'GLOG_minloglevel': '2', 'PYTHONWARNINGS': 'ignore'}


def _run(cmd, cwd, timeout=240):
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=ENV)
    return proc, time.time() - start


def _last_line(text):
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ''


SINGLE = [
    (['-cfg', DEMO_CFG, '-opts', 'TRAIN.GRAD_CLIP', 'abc'],
     'main_single_gpu.py: error: -opts: config key TRAIN.GRAD_CLIP expects float or None, got \'abc\''),
    (['-cfg', DEMO_CFG, '-image_size', '30'],
     'main_single_gpu.py: error: DATA.IMAGE_SIZE = 30 (-image_size), MODEL.PATCH_SIZE = 4 ('),
    (['-eval', '-pretrained', 'x.pdparams'], 'main_single_gpu.py: error: -cfg is required: the YAML of the model '
                                             'variant to evaluate'),
    # a data error, raised after the config dump: the message still ends the output
    (['-cfg', DEMO_CFG, '-data_path', '/nonexistent/digits', '-opts', 'DATA.NUM_WORKERS', '0'],
     "main_single_gpu.py: error: DATA.DATA_PATH '/nonexistent/digits' is not a folder (-data_path)"),
]


@pytest.mark.parametrize('argv,message', SINGLE, ids=['opts-type', 'patch-tiling', 'eval-without-cfg', 'data'])
@pytest.mark.slow
def test_single_process_user_error(argv, message, tmp_path):
    proc, _ = _run([sys.executable, os.path.join(VIT, 'main_single_gpu.py'), '-output', str(tmp_path)] + argv,
                   cwd=VIT)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert 'Traceback' not in proc.stdout + proc.stderr
    assert _last_line(proc.stderr).startswith(message), proc.stderr[-2000:]
    assert proc.stderr.count(' error: ') == 1


@pytest.mark.slow
def test_tools_exit_2_on_user_errors(tmp_path):
    dup = tmp_path / 'dup.yaml'
    dup.write_text('MODEL:\n  TYPE: ViT\n  DEPTH: 1\n  DEPTH: 2\n')
    flops = [sys.executable, os.path.join(REPO, 'tools', 'flops.py'), '-cfg', DEMO_CFG, '-opts', 'DATA.CROP_PCT', '0']
    port = [sys.executable, os.path.join(REPO, 'port_weights', 'port.py'), '--src', str(tmp_path / 'x.pth'),
            '--config', str(dup), '--dst', str(tmp_path / 'y.pdparams')]
    for cmd, message in ((flops, 'flops.py: error: -opts: DATA.CROP_PCT = 0.0 is not allowed: must be in (0, 1]'),
                         (port, f'port.py: error: {dup}, line 4: duplicate key MODEL.DEPTH (first given on line 3)')):
        proc, _ = _run(cmd, cwd=str(tmp_path))
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert 'Traceback' not in proc.stdout + proc.stderr
        assert _last_line(proc.stderr) == message or _last_line(proc.stderr).startswith(message), proc.stderr


@pytest.mark.slow
def test_spawned_ranks_user_error(tmp_path):
    """main_multi_gpu.py run directly spawns the ranks; their DataError comes back as one message."""
    cmd = [sys.executable, os.path.join(VIT, 'main_multi_gpu.py'), '-nprocs', '2', '-cfg', DEMO_CFG,
           '-output', str(tmp_path / 'out'), '-data_path', str(tmp_path / 'missing'),
           '-opts', 'DATA.NUM_WORKERS', '0']
    proc, seconds = _run(cmd, cwd=str(tmp_path))
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert 'Traceback' not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    assert _last_line(proc.stderr) == (f"main_multi_gpu.py: error: DATA.DATA_PATH '{tmp_path}/missing' "
                                       f"is not a folder (-data_path)")
    assert (proc.stdout + proc.stderr).count('is not a folder') == 1
    assert seconds < 120


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['config', 'data'])
def test_launched_ranks_user_error(kind, tmp_path):
    """Under paddle.distributed.launch the launcher shows the failed rank's last log lines: they must end
    with the message (no traceback), the launcher must exit non-zero and the other rank end promptly."""
    opts = (['-opts', 'TRAIN.OPTIMIZER.NAME', 'Adam'] if kind == 'config'
            else ['-data_path', str(tmp_path / 'missing'), '-opts', 'DATA.NUM_WORKERS', '0'])
    message = ("TRAIN.OPTIMIZER.NAME = 'Adam' is not allowed: must be one of 'AdamW', 'SGD' (any case)"
               if kind == 'config' else f"DATA.DATA_PATH '{tmp_path}/missing' is not a folder (-data_path)")
    cmd = [sys.executable, '-m', 'paddle.distributed.launch', '--nproc_per_node', '2',
           '--log_dir', str(tmp_path / 'launch'), os.path.join(VIT, 'main_multi_gpu.py'), '-cfg', DEMO_CFG,
           '-output', str(tmp_path / 'out')] + opts
    proc, seconds = _run(cmd, cwd=str(tmp_path))
    assert proc.returncode != 0
    assert seconds < 120
    assert 'Traceback' not in proc.stdout + proc.stderr, proc.stdout[-3000:]
    detail = proc.stdout.split('ERROR LOG DETAIL')[-1] if 'ERROR LOG DETAIL' in proc.stdout else proc.stdout
    assert message in _last_line(detail), proc.stdout[-3000:]
    for rank in (0, 1):   # each rank's own log ends with the message
        with open(tmp_path / 'launch' / f'workerlog.{rank}', encoding='utf-8', errors='replace') as f:
            log = f.read()
        assert python_traceback_free(log), log[-2000:]
        if message in log:
            assert message in _last_line(log)
