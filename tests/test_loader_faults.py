"""Issue #23, items 1 and 2: a bad image never hangs a run; a skipped image is never scored.

1. Any exception raised while loading a batch ends the pass over the loader at
   once, in this process (DATA.NUM_WORKERS 0: Paddle's reader thread) or in a
   worker: a bad image with its BadImageError message (list file, line, path),
   a bug or a MemoryError with its type and traceback.  Run end to end, each
   case is a subprocess in its own session under a timeout, and no process of
   that session may be left when it has exited.
2. Under DATA.SKIP_BAD_IMAGES evaluation scores exactly the readable images:
   a list of 8 with unreadable lines gives the same loss, top-1 and top-5 as
   the list of its readable lines, and says how many it scored and skipped;
   also with 2 worker processes and with 2 ranks.

The entry points print a UserError without a traceback and exit with 2 once the
`config` branch is merged; before that BadImageError escapes with a traceback
and exit 1.  `_assert_user_error_exit` accepts exactly these two shapes.
"""
import os
import re
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import paddle
import pytest

from conftest import REPO
from engine import data
from engine.config import base_config
from engine.families import load_family
from engine.launcher import main
from engine.trainer import evaluate

VIT = os.path.join(REPO, 'image_classification', 'ViT')
DEMO_CFG = os.path.join(VIT, 'configs', 'vit_demo_digits_32.yaml')
# the demo config shrunk to a few seconds: one block of width 24, one epoch of 8 images
TINY = ['MODEL.DEPTH', '1', 'MODEL.EMBED_DIM', '24', 'MODEL.MLP_DIM', '48', 'TRAIN.NUM_EPOCHS', '1',
        'TRAIN.WARMUP_EPOCHS', '0', 'DATA.BATCH_SIZE', '2', 'DATA.BATCH_SIZE_EVAL', '3', 'REPORT_FREQ', '1']

N_IMAGES = 8
BAD_LINE = 5          # 1-based line of the bad image in its list


def _png(seed, size=32):
    image = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    ok, blob = cv2.imencode('.png', image)
    assert ok
    return blob.tobytes()


BAD_FILES = {
    'zero-byte': b'',
    'truncated': _png(99)[:300],
    'renamed-text': b'label,path\nthis is a CSV file saved under a .png name\n',
}


def write_data(root, bad=None, bad_in='val', bad_lines=(BAD_LINE,)):
    """train/ and val/ with N_IMAGES 32x32 grey PNGs each, listed in train_list.txt / val_list.txt.

    `bad` (a key of BAD_FILES) replaces the images of `bad_lines` (1-based) of the
    `bad_in` list.  Returns {split: [(relative path, label, line)]}.
    """
    listed = {}
    for split in ('train', 'val'):
        os.makedirs(os.path.join(root, split), exist_ok=True)
        rows = []
        for i in range(N_IMAGES):
            rel, line = f'{split}/{i}.png', i + 1
            blob = BAD_FILES[bad] if bad is not None and split == bad_in and line in bad_lines \
                else _png(100 * (split == 'val') + i)
            with open(os.path.join(root, rel), 'wb') as f:
                f.write(blob)
            rows.append((rel, i % 10, line))
        with open(os.path.join(root, f'{split}_list.txt'), 'w') as f:
            f.writelines(f'{rel} {label}\n' for rel, label, _ in rows)
        listed[split] = rows
    return listed


# --------------------------------------------------------------------------- processes
def _session_members(sid):
    """Pids of live processes in session `sid` (a child keeps it when its parent dies)."""
    members = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/stat') as f:
                fields = f.read().rsplit(')', 1)[1].split()
        except OSError:
            continue
        # after the command: state ppid pgrp session ...; a zombie is already gone
        if int(fields[3]) == sid and fields[0] != 'Z':
            members.append(int(entry))
    return members


def run_isolated(cmd, timeout, cwd=None):
    """(exit code, output, seconds, pids left) of `cmd` run in a session of its own.

    A run that outlives `timeout` is a hang: its whole session is killed and the
    test fails.  Processes of the session still alive 1 s after it exited are
    killed too, and reported.
    """
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f'still running after {timeout} s (a hang); output:\n{out[-4000:]}')
    seconds = time.time() - start
    left = _session_members(proc.pid)
    for _ in range(10):
        if not left:
            break
        time.sleep(0.1)
        left = _session_members(proc.pid)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return proc.returncode, out, seconds, left


def _assert_user_error_exit(code, out, message):
    """A BadImageError whose message starts with `message` ended the run the way every user error
    does: exit 2, the message as the last line, no traceback."""
    assert message in out, out[-4000:]
    assert code == 2, out[-4000:]
    assert 'Traceback (most recent call last)' not in out, out[-4000:]
    last = [line for line in out.splitlines() if line.strip()][-1]
    assert message in last, out[-4000:]


# --------------------------------------------------------------------------- 1. a fault ends the run
ENTRY_CASES = [(bad, where, workers) for bad in sorted(BAD_FILES) for where in ('train', 'eval')
               for workers in (0, 2)]
ENTRY_CASES += [('truncated', 'validation', 0), ('truncated', 'validation', 2)]


@pytest.mark.slow
@pytest.mark.parametrize('bad,where,workers', ENTRY_CASES)
def test_bad_image_ends_the_run(tmp_path, bad, where, workers):
    """ViT's main_single_gpu.py on the demo config: train (bad training image), validation after
    the first epoch (bad validation image) and -eval, with 0 and 2 loader workers."""
    root = str(tmp_path / 'data')
    listed = write_data(root, bad, bad_in='train' if where == 'train' else 'val')
    split = 'train' if where == 'train' else 'val'
    cmd = [sys.executable, os.path.join(VIT, 'main_single_gpu.py'), '-cfg', DEMO_CFG, '-data_path', root,
           '-output', str(tmp_path / 'out')] + (['-eval'] if where == 'eval' else []) + \
        ['-opts', *TINY, 'DATA.NUM_WORKERS', str(workers)]
    code, out, seconds, left = run_isolated(cmd, timeout=180, cwd=str(tmp_path))
    rel = listed[split][BAD_LINE - 1][0]
    message = f'{root}/{split}_list.txt:{BAD_LINE}: cannot read image {root}/{rel}: '
    _assert_user_error_exit(code, out, message)
    assert 'Exception in thread' not in out, out[-4000:]      # raised in the main thread, not printed by one
    assert not left, f'processes left behind: {left}'
    if where == 'validation':
        assert 'Train Loss' in out                             # it failed in the validation pass
    assert seconds < 120


LOADER_SCRIPT = '''
import sys
sys.path[:0] = {paths!r}
import numpy as np
from engine import data
from engine.config import base_config
from engine.data.dataset import ImageListDataset
from engine.errors import cli

KIND, WORKERS = {kind!r}, {workers}


class FailsOnWhite:
    """Turns a decoded image into the input; a white image raises (a bug or no memory)."""

    def __call__(self, image, rng):
        if image.min() == 255:
            raise MemoryError() if KIND == 'memory' else ValueError('a transform bug')
        return np.zeros((1, 4, 4), np.float32)


config = base_config()
config.DATA.BATCH_SIZE_EVAL = 2
config.DATA.NUM_WORKERS = WORKERS
dataset = ImageListDataset({root!r}, {list_file!r}, 10, FailsOnWhite())


def main():
    for batch in data.build_dataloader(config, dataset, 'val', distributed=False):
        print('batch', batch[1].numpy().tolist(), flush=True)
    print('the loader ended without an error')


cli(main)   # as every entry point: a UserError (the bad image) exits 2 with its message alone
'''


@pytest.mark.slow
@pytest.mark.parametrize('workers', [0, 2])
@pytest.mark.parametrize('kind', ['bad', 'transform', 'memory'])
def test_any_loading_error_ends_the_pass(tmp_path, kind, workers):
    """A bad image, an exception in the transform, a MemoryError: raised in the main thread within
    seconds, with the dataset's message or the original type and traceback; nothing left running."""
    root = str(tmp_path)
    listed = write_data(root, 'zero-byte' if kind == 'bad' else None)
    if kind != 'bad':
        ok, blob = cv2.imencode('.png', np.full((32, 32), 255, np.uint8))
        with open(os.path.join(root, listed['val'][BAD_LINE - 1][0]), 'wb') as f:
            f.write(blob.tobytes())
    script = tmp_path / 'iterate.py'
    paths = [os.path.join(REPO, 'tests'), REPO, os.path.join(REPO, 'image_classification')]
    script.write_text(LOADER_SCRIPT.format(paths=paths, kind=kind, workers=workers, root=root,
                                           list_file=os.path.join(root, 'val_list.txt')))
    code, out, seconds, left = run_isolated([sys.executable, str(script)], timeout=120)
    assert 'the loader ended without an error' not in out
    assert 'Exception in thread' not in out, out[-4000:]
    assert not left, f'processes left behind: {left}'
    assert seconds < 60
    path = f'{root}/val/{BAD_LINE - 1}.png'
    if kind == 'bad':
        _assert_user_error_exit(code, out, f'{root}/val_list.txt:{BAD_LINE}: cannot read image {path}: empty file')
        assert 'DataLoader worker' not in out                       # the message as the dataset wrote it
        return
    assert code == 1 and 'Traceback (most recent call last)' in out
    final = [line for line in out.splitlines() if line.strip()][-1]
    if kind == 'memory':
        assert final == 'MemoryError', out[-4000:]                  # the worker's, or our own, traceback
    else:
        assert re.search(rf'^RuntimeError: .*val_list.txt:{BAD_LINE}: transforming {re.escape(path)} '
                         r'\(image shape \(32, 32, 3\)\) failed: ValueError: a transform bug', out, re.M), out[-4000:]
    assert 'in __call__' in out                                     # the traceback reaches the transform


# --------------------------------------------------------------------------- 2. skipped = not scored
class TinyHead(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.fc = paddle.nn.Linear(3 * 32 * 32, 10)

    def forward(self, x):
        return self.fc(x.flatten(1) * 4.0)


def _val_config(root, list_name, workers, batch=3):
    c = base_config()
    c.DATA.DATA_PATH = root
    c.DATA.VAL_LIST = list_name
    c.DATA.IMAGE_SIZE = 32
    c.DATA.CROP_PCT = 1.0
    c.DATA.BATCH_SIZE_EVAL = batch
    c.DATA.NUM_WORKERS = workers
    c.DATA.SKIP_BAD_IMAGES = True
    c.MODEL.NUM_CLASSES = 10
    return c


def _readable_list(root, rows, unreadable, name='readable_list.txt'):
    with open(os.path.join(root, name), 'w') as f:
        f.writelines(f'{rel} {label}\n' for rel, label, line in rows if line not in unreadable)
    return name


def _evaluate(root, list_name, workers):
    config = _val_config(root, list_name, workers)
    dataset = data.build_dataset(config, 'val')
    loader = data.build_dataloader(config, dataset, 'val', distributed=False)
    paddle.seed(0)
    return evaluate(TinyHead(), loader)


SKIP_CASES = {
    'one unreadable': dict(bad_lines=(BAD_LINE,), missing=()),
    'a whole batch unreadable': dict(bad_lines=(4, 5, 6), missing=()),     # batch 2 of 3 (size 3)
    'one unreadable, one missing': dict(bad_lines=(BAD_LINE,), missing=(2,)),
}


def _skip_case(tmp_path, case):
    root = str(tmp_path)
    spec = SKIP_CASES[case]
    rows = write_data(root, 'truncated', bad_lines=spec['bad_lines'])['val']
    for line in spec['missing']:
        os.remove(os.path.join(root, rows[line - 1][0]))
    return root, rows, set(spec['bad_lines']) | set(spec['missing'])


def _assert_same_scores(result, expected, n_skipped):
    assert (result.count, result.skipped) == (N_IMAGES - n_skipped, n_skipped)
    assert (expected.count, expected.skipped) == (N_IMAGES - n_skipped, 0)
    assert result.top1 == expected.top1 and result.top5 == expected.top5
    assert result.loss == pytest.approx(expected.loss, rel=1e-6)


@pytest.mark.parametrize('case', sorted(SKIP_CASES))
def test_skipped_images_are_left_out_of_evaluation(tmp_path, case):
    root, rows, unreadable = _skip_case(tmp_path, case)
    result = _evaluate(root, 'val_list.txt', workers=0)
    expected = _evaluate(root, _readable_list(root, rows, unreadable), workers=0)
    _assert_same_scores(result, expected, len(unreadable))


@pytest.mark.slow
@pytest.mark.parametrize('case', ['one unreadable', 'a whole batch unreadable'])
def test_skipped_images_are_left_out_with_workers(tmp_path, case):
    root, rows, unreadable = _skip_case(tmp_path, case)
    result = _evaluate(root, 'val_list.txt', workers=2)
    expected = _evaluate(root, _readable_list(root, rows, unreadable), workers=0)
    _assert_same_scores(result, expected, len(unreadable))
    # a second pass over the same (persistent) workers counts its own skips only
    again = _evaluate(root, 'val_list.txt', workers=2)
    assert (again.count, again.skipped) == (result.count, result.skipped)


def test_training_still_replaces_a_skipped_image(tmp_path):
    """Training batches stay full: the unreadable sample is replaced by the next one, and counted."""
    root = str(tmp_path)
    write_data(root, 'zero-byte', bad_in='train')
    config = _val_config(root, 'val_list.txt', workers=0)
    dataset = data.build_dataset(config, 'train')
    x, label = dataset[BAD_LINE - 1]
    assert label == dataset.labels[BAD_LINE] and x.shape == (3, 32, 32)
    assert data.skipped_report(dataset) == ', skipped 1 bad image(s) (DATA.SKIP_BAD_IMAGES)'
    val = data.build_dataset(config, 'val')
    assert val[BAD_LINE - 1] is not None
    write_data(root, 'zero-byte', bad_in='val')
    assert data.build_dataset(config, 'val')[BAD_LINE - 1] is None


def _parse_summary(log):
    match = re.search(r'Validation Loss: ([0-9.]+), Validation Acc@1: ([0-9.]+), Validation Acc@5: ([0-9.]+) '
                      r'\((\d+) images scored(?:, (\d+) skipped: see the log)?', log)
    assert match, log[-3000:]
    loss, top1, top5, count, skipped = match.groups()
    return float(loss), float(top1), float(top5), int(count), int(skipped or 0)


@pytest.mark.slow
def test_two_ranks_score_the_readable_images(tmp_path):
    """-eval as 2 processes (paddle.distributed.launch) on the list with an unreadable line: the
    all-reduced summary is the single-process evaluation of the readable lines."""
    root = str(tmp_path / 'data')
    rows = write_data(root, 'renamed-text')['val']
    readable = _readable_list(root, rows, {BAD_LINE})
    family = load_family('ViT')
    config = family.get_config(DEMO_CFG, opts=TINY)
    paddle.seed(1)
    weights = str(tmp_path / 'tiny_vit.pdparams')
    paddle.save(family.build_model(config).state_dict(), weights)
    common = ['-cfg', DEMO_CFG, '-data_path', root, '-pretrained', weights, '-eval']
    expected = main(family.get_config, family.build_model, argv=common + [
        '-output', str(tmp_path / 'one'), '-opts', *TINY, 'DATA.VAL_LIST', readable])
    cmd = [sys.executable, '-m', 'paddle.distributed.launch', '--nproc_per_node', '2',
           '--log_dir', str(tmp_path / 'launch'), os.path.join(VIT, 'main_multi_gpu.py')] + common + [
        '-output', str(tmp_path / 'two'), '-opts', *TINY, 'DATA.SKIP_BAD_IMAGES', 'True']
    for workers in ('0', '2'):
        code, out, _, left = run_isolated(cmd + ['DATA.NUM_WORKERS', workers], timeout=240, cwd=str(tmp_path))
        assert code == 0, out[-4000:]
        assert not left
        log = open(tmp_path / 'two' / 'log.txt').read().split('process 0/2')[-1]
        loss, top1, top5, count, skipped = _parse_summary(log)
        assert (count, skipped) == (N_IMAGES - 1, 1) and expected['count'] == N_IMAGES - 1
        assert (top1, top5) == (round(expected['acc1'] / 100, 4), round(expected['acc5'] / 100, 4))
        assert loss == pytest.approx(expected['loss'], abs=1e-4)
        assert f'val_list.txt:{BAD_LINE}: cannot read image' in log      # the skipped image is in log.txt
