"""What a person sees of a run, and the per-epoch record it leaves (issue #17, item 6).

- the console of a run shows a short header (model, parameters, data counts, eval transform,
  global batch and LR), the progress lines with the whole run's ETA and the epoch summaries,
  and no config dump; log.txt holds the full config and the command;
- Paddle's known noise (ccache, amp_guard on the CPU, PIR glog lines, DataLoader workers at
  exit) is absent from the console of a CPU `-eval` subprocess;
- metrics.csv and curves.png exist after 2 epochs and a resumed run continues them, dropping
  the rows of epochs after the one it resumed from;
- the ETA covers the whole run: the formula.
"""
import csv
import os
import re
import subprocess
import sys

import pytest

from engine.launcher import execute as main
from engine.metrics_log import MetricsLog, load_history
from engine.trainer import run_eta, validations_left
from test_engine_run import _argv, build_tiny, get_config, make_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIT = os.path.join(REPO, 'image_classification', 'ViT')
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp('squares'))


def _rows(folder):
    with open(os.path.join(folder, 'metrics.csv'), newline='') as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_console_shows_a_header_the_log_holds_the_config(data, tmp_path, capsys):
    out = str(tmp_path / 'run')
    main(get_config, build_tiny, argv=_argv(data, out))
    console = capsys.readouterr().out
    log = open(os.path.join(out, 'log.txt')).read()

    # the full config and the command line: in the log file only
    for text in ('config:\n', 'TRAIN_INTERPOLATION: bicubic', 'RAND_AUGMENT_MAGNITUDE: 9', 'MASTER_LOG command: '):
        assert text in log
        assert text not in console
    assert f'full config and command: {os.path.join(out, "log.txt")}' in console
    # the header a person reads
    assert 'model tiny (Tiny): 260 trainable parameters' in console
    assert 'validation: 21 images, eval transform: resize short side to 18' in console
    assert re.search(r'training: 32 images, 4 steps/epoch, global batch 8, lr \d\.\d{3}e-0\d', console)
    assert len(console.splitlines()) < 30, console   # 2 epochs of a tiny run: no wall of text
    # progress every REPORT_FREQ (2) of 4 steps, with the run's ETA, and the summaries users grep
    progress = re.findall(r'Epoch\[00\d/002\], Step\[\d{4}/0004\], .* ETA run: \d+:\d\d:\d\d '
                          r'\(epoch: \d+:\d\d:\d\d\)', console)
    assert len(progress) == 4
    for text in (console, log):
        assert re.search(r'MASTER_LOG ----- Epoch\[002/002\], Validation Loss: [\d.]+, '
                         r'Validation Acc@1: [\d.]+, Validation Acc@5: [\d.]+', text)


@pytest.mark.slow
def test_metrics_and_curves_continue_after_resume(data, tmp_path):
    out = str(tmp_path / 'run')
    full = main(get_config, build_tiny, argv=_argv(data, out))
    rows = _rows(out)
    assert [r['epoch'] for r in rows] == ['1', '2']
    assert list(rows[0]) == ['epoch', 'train_loss', 'val_loss', 'acc1', 'acc5', 'ema_acc1', 'lr',
                             'images_scored', 'images_skipped', 'seconds']
    assert float(rows[1]['train_loss']) == pytest.approx(full['train_loss'], abs=1e-6)
    assert float(rows[1]['acc1']) == pytest.approx(full['acc1'], abs=1e-6)
    assert float(rows[1]['ema_acc1']) == pytest.approx(full['ema_acc1'], abs=1e-6)
    assert rows[0]['images_scored'] == '21' and rows[0]['images_skipped'] == '0'
    assert float(rows[0]['lr']) == pytest.approx(1e-6)   # warmup starts at WARMUP_START_LR
    assert float(rows[1]['lr']) > float(rows[0]['lr'])
    assert open(os.path.join(out, 'curves.png'), 'rb').read(8) == PNG_MAGIC
    assert not [n for n in os.listdir(out) if n.endswith('.tmp')]

    # resume from epoch 1 in the same folder, one more epoch: epoch 1's row is kept, the old
    # epoch 2 row is replaced by the resumed run's, epoch 3's is added, both files are rewritten
    os.utime(os.path.join(out, 'curves.png'), (0, 0))
    main(get_config, build_tiny, argv=_argv(data, out, 'TRAIN.NUM_EPOCHS', '3') + [
        '-resume', os.path.join(out, 'tiny-Epoch-1')])
    resumed = _rows(out)
    assert [r['epoch'] for r in resumed] == ['1', '2', '3']
    assert resumed[0] == rows[0]
    assert resumed[1]['lr'] == rows[1]['lr']   # right after the 1-epoch warmup: the base LR either way
    assert os.path.getmtime(os.path.join(out, 'curves.png')) > 1e9

    # resumed into a new -output: the history comes from the checkpoint's folder
    other = str(tmp_path / 'other')
    main(get_config, build_tiny, argv=_argv(data, other, 'TRAIN.NUM_EPOCHS', '3') + [
        '-resume', os.path.join(out, 'tiny-Epoch-2')])
    assert [r['epoch'] for r in _rows(other)] == ['1', '2', '3']
    assert _rows(other)[:2] == resumed[:2]


@pytest.mark.slow
def test_resume_drops_rows_of_later_epochs(tmp_path):
    """An interrupted run left rows 1-3; resumed from epoch 1, rows 2 and 3 are gone at its next write."""
    folder = str(tmp_path)
    log = MetricsLog(folder)
    for epoch in (1, 2, 3):
        log.add(dict(epoch=epoch, train_loss=2.0 - epoch / 10, val_loss=1.5, acc1=10.0 * epoch, acc5=50.0,
                     lr=1e-3, images_scored=9, images_skipped=1, seconds=3.0))
    assert 'ema_acc1' not in _rows(folder)[0]   # no EMA: no empty column
    resumed = MetricsLog(folder, resume_prefix=os.path.join(folder, 'm-Epoch-1'), resumed_epoch=1)
    assert [r['epoch'] for r in resumed.history] == [1]
    assert resumed.history[0]['acc1'] == 10.0 and resumed.history[0]['images_skipped'] == 1
    assert [r['epoch'] for r in _rows(folder)] == ['1', '2', '3']   # nothing rewritten before a validation
    resumed.add(dict(epoch=2, train_loss=1.0, val_loss=1.0, acc1=55.0, acc5=90.0, lr=2e-3,
                     images_scored=9, images_skipped=1, seconds=2.5))
    rows = _rows(folder)
    assert [(r['epoch'], r['acc1']) for r in rows] == [('1', '10.000000'), ('2', '55.000000')]
    assert load_history([os.path.join(folder, 'metrics.csv')], 1)[0]['train_loss'] == pytest.approx(1.9)


def test_an_unreadable_metrics_file_never_blocks_a_resume(tmp_path, caplog):
    path = tmp_path / 'metrics.csv'
    path.write_text('epoch,train_loss\n1,not-a-number\n')
    log = MetricsLog(str(tmp_path), resume_prefix=str(tmp_path / 'm-Epoch-1'), resumed_epoch=1)
    assert log.history == []
    assert 'metrics.csv cannot be read' in caplog.text


def test_eta_covers_the_whole_run():
    # 10 s for the first 5 of 10 steps of epoch 2 of 4: 5 steps left here, 20 in epochs 3 and 4
    assert run_eta(10.0, 5, 10, 2, 4) == pytest.approx(2.0 * 25)
    # and the validations still to come (epochs 2 and 4 with VALIDATE_FREQ 2), 4 s each
    assert validations_left(2, 4, 2) == 2
    assert run_eta(10.0, 5, 10, 2, 4, validations_left(2, 4, 2), 4.0) == pytest.approx(50 + 8)
    assert validations_left(1, 5, 2) == 3   # 2, 4 and the last epoch
    assert validations_left(5, 5, 3) == 1
    # the last step of the last epoch: only its validation is left
    assert run_eta(30.0, 10, 10, 4, 4, 1, 4.0) == pytest.approx(4.0)


NOISE = [r'No ccache found', r'amp_guard', r'pir_interpreter', r'workers exit unexpectedly',
         r'^[IWE]\d{4} \d\d:\d\d:\d\d', r'using custom operator only', r'UserWarning']


@pytest.mark.slow
def test_cpu_eval_console_has_no_paddle_noise(data, tmp_path):
    """ViT's demo config, `-eval -amp` with 2 loader workers, as a user runs it: none of Paddle's
    known noise reaches stdout or stderr, and the line users grep is there."""
    env = dict(os.environ)
    for var in ('GLOG_minloglevel', 'PYTHONWARNINGS'):   # as a user's shell has them: unset
        env.pop(var, None)
    cmd = [sys.executable, os.path.join(VIT, 'main_single_gpu.py'), '-cfg', 'configs/vit_demo_digits_32.yaml',
           '-data_path', data, '-output', str(tmp_path / 'eval'), '-eval', '-amp',
           '-opts', 'DATA.NUM_WORKERS', '2', 'DATA.BATCH_SIZE_EVAL', '4', 'MODEL.DEPTH', '1']
    proc = subprocess.run(cmd, cwd=VIT, env=env, capture_output=True, text=True, timeout=300)
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-3000:]
    assert re.search(r'MASTER_LOG Validation Loss: [\d.]+, Validation Acc@1: [\d.]+', proc.stdout)
    assert 'AMP (float16) has no effect on cpu' in proc.stdout
    for pattern in NOISE:
        assert not re.search(pattern, console, re.M), (pattern, console[-3000:])


def test_lost_loader_workers_are_reported_during_a_run_only(tmp_path, caplog):
    """Paddle's loader thread logs "workers exit unexpectedly" on the root logger: a real fault while
    a run reads data, shutdown noise once it ended well; each new run reports it again."""
    import logging
    from engine import logger as run_logging
    message = 'DataLoader 2 workers exit unexpectedly, pids: 11, 12'
    with caplog.at_level(logging.WARNING):
        run_logging.get_logger(str(tmp_path), 0)
        logging.warning(message)
        run_logging.run_finished()
        logging.warning(message)
        logging.warning('another warning')
        run_logging.get_logger(str(tmp_path), 0)   # the next run in this process
        logging.warning(message)
    assert [r.getMessage() for r in caplog.records] == [message, 'another warning', message]


def test_flags_banner_is_dropped_and_other_stderr_kept(capsys):
    """What `paddle.distributed.init_parallel_env` (Paddle 3.x, parallel.py) writes on every rank."""
    from engine.logger import without_flags_banner
    with without_flags_banner():
        sys.stderr.write('======================= Modified FLAGS detected =======================\n'
                         "FLAGS(name='FLAGS_use_stride_kernel', current_value=False, default_value=True)\n"
                         '=======================================================================\n')
        sys.stderr.write('a real problem\n')
    assert capsys.readouterr().err == 'a real problem\n'
