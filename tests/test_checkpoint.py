"""Checkpoint files: strict loading, head dropping, exact resume state, crash safety, retention,
refusal of non-finite weights, failed writes, and the output-folder guard."""
import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import paddle
import pytest

from engine import checkpoint
from engine.checkpoint import (CheckpointManager, CheckpointWriteError, NonFiniteCheckpointError,
                               OutputFolderInUseError, check_output_folder, remove_checkpoint, resolve_resume, resume)
from engine.config import ConfigError
from engine.errors import UserError
from engine.ema import ModelEMA
from engine.optim import WarmupCosine
from engine.weights import KeyMismatchError, NonFiniteWeightsError, load_weights

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)


class _Net(paddle.nn.Layer):
    CLASSIFIER = ('head',)

    def __init__(self, num_classes=10, width=8):
        super().__init__()
        self.body = paddle.nn.Linear(4, width)
        self.head = paddle.nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(paddle.nn.functional.gelu(self.body(x)))


def _train_parts(model):
    sched = WarmupCosine(0.1, 0.01, 0.001, warmup_steps=2, total_steps=20)
    opt = paddle.optimizer.AdamW(learning_rate=sched, parameters=model.parameters(), weight_decay=0.05)
    return opt, sched


def _step(model, opt, sched, x, y):
    loss = paddle.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    opt.clear_grad()
    sched.step()
    return loss.item()


def test_resume_continues_exactly(tmp_path):
    paddle.seed(0)
    x, y = paddle.randn([16, 4]), paddle.randint(0, 10, [16])
    model = _Net()
    opt, sched = _train_parts(model)
    ema = ModelEMA(model, 0.9)
    for _ in range(3):
        _step(model, opt, sched, x, y)
        ema.update(model)
    manager = CheckpointManager(str(tmp_path), 'net', save_freq=1)
    manager.save(3, model, opt, sched, ema=ema, extra={'best_acc': 12.5})
    expected = [_step(model, opt, sched, x, y) for _ in range(3)]

    paddle.nn.Linear(3, 3)   # shifts Paddle's framework parameter names in this process
    model2 = _Net()
    opt2, sched2 = _train_parts(model2)
    ema2 = ModelEMA(model2, 0.9)
    epoch, extra = resume(resolve_resume(str(tmp_path)), model2, opt2, sched2, ema=ema2)
    assert epoch == 3 and extra['best_acc'] == 12.5
    np.testing.assert_array_equal(ema2.module.head.weight.numpy(), ema.module.head.weight.numpy())
    got = [_step(model2, opt2, sched2, x, y) for _ in range(3)]
    np.testing.assert_allclose(got, expected, rtol=1e-6)   # Adam moments and lr restored


def test_latest_pointer_and_retired_epochs(tmp_path):
    model = _Net()
    opt, sched = _train_parts(model)
    manager = CheckpointManager(str(tmp_path), 'net', save_freq=2)
    for epoch in (1, 2, 3):
        manager.save(epoch, model, opt, sched)
    files = sorted(os.listdir(tmp_path))
    assert 'net-Epoch-1.pdparams' not in files           # only kept while it was the latest
    assert {'net-Epoch-2.pdparams', 'net-Epoch-2.pdopt', 'net-Epoch-3.pdopt'} <= set(files)
    assert manager.latest().endswith('net-Epoch-3')
    assert not [f for f in files if '.tmp' in f]


def test_pretrained_drops_only_a_mismatched_head(tmp_path):
    source = _Net(num_classes=1000)
    path = str(tmp_path / 'src.pdparams')
    paddle.save(source.state_dict(), path)
    target = _Net(num_classes=10)
    head_before = target.head.weight.numpy().copy()
    messages = []
    load_weights(target, path, what='pretrained', resize=True, drop_head=True, log=messages.append)
    np.testing.assert_array_equal(target.body.weight.numpy(), source.body.weight.numpy())
    np.testing.assert_array_equal(target.head.weight.numpy(), head_before)
    assert any('dropped classifier head.weight' in m for m in messages)


def test_pretrained_refuses_other_mismatches(tmp_path):
    path = str(tmp_path / 'wide.pdparams')
    paddle.save(_Net(width=16).state_dict(), path)
    with pytest.raises(KeyMismatchError, match=r'body\.weight: \(4, 16\).*\(4, 8\)'):
        load_weights(_Net(width=8), path, what='pretrained', resize=True, drop_head=True, log=lambda m: None)
    state = _Net().state_dict()
    state['extra.weight'] = paddle.zeros([2])
    del state['body.bias']
    paddle.save(state, path)
    with pytest.raises(KeyMismatchError, match=r'missing key\(s\): body\.bias.*unexpected key\(s\): extra\.weight'):
        load_weights(_Net(), path, what='pretrained', resize=True, drop_head=True, log=lambda m: None)


@pytest.mark.slow
def test_sigkill_while_saving_keeps_previous_checkpoint(tmp_path):
    """A process killed in the middle of writing epoch 2 leaves epoch 1 as the latest, loadable."""
    script = textwrap.dedent(f'''
        import os, sys, time
        sys.path[:0] = {[TESTS, os.path.join(REPO, 'image_classification'), REPO]!r}
        import paddle
        from engine import checkpoint
        from test_checkpoint import _Net, _train_parts
        model = _Net(); opt, sched = _train_parts(model)
        manager = checkpoint.CheckpointManager({str(tmp_path)!r}, 'net', 1)
        manager.save(1, model, opt, sched)
        real_save = paddle.save
        def slow_save(obj, path, *a, **k):
            real_save(obj, path, *a, **k)
            if '.pdparams.tmp' in path:
                print('WRITING', flush=True)
                time.sleep(60)
        checkpoint.paddle.save = slow_save
        manager.save(2, model, opt, sched)
    ''')
    proc = subprocess.Popen([sys.executable, '-c', script], stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if 'WRITING' in line:
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    prefix = resolve_resume(str(tmp_path))
    assert prefix.endswith('net-Epoch-1')
    assert not os.path.exists(str(tmp_path / 'net-Epoch-2.pdopt'))
    model = _Net()
    opt, sched = _train_parts(model)
    assert resume(prefix, model, opt, sched)[0] == 1


# ----- retention: bounded disk, exact deletions -----

def _snapshot(folder):
    """{file name: sha1 of its bytes} of every file in `folder`."""
    return {name: hashlib.sha1(open(os.path.join(folder, name), 'rb').read()).hexdigest()
            for name in sorted(os.listdir(folder))}


def _complete_epochs(folder, name='net'):
    return sorted(int(f[len(name) + len('-Epoch-'):-len('.pdopt')]) for f in os.listdir(folder)
                  if f.startswith(name + '-Epoch-') and f.endswith('.pdopt'))


def test_retiring_epoch_1_deletes_only_its_own_files(tmp_path):
    """Epoch-10 ... Epoch-19 share Epoch-1's name prefix; Best and another model's files share the folder."""
    model = _Net()
    opt, sched = _train_parts(model)
    ema = ModelEMA(model, 0.9)
    later = CheckpointManager(str(tmp_path), 'net', save_freq=0, keep=100)
    for epoch in range(10, 20):
        later.save(epoch, model, opt, sched, ema=ema)
    later.save_best(model, ema)
    other = CheckpointManager(str(tmp_path), 'net_b', save_freq=0, keep=100)
    other.save(1, model, opt, sched)
    (tmp_path / 'net-Epoch-1-notes.txt').write_text('a file of the user, not a checkpoint')
    (tmp_path / 'net-Epoch-1.pdparams.tmp4242').write_bytes(b'left by a killed process')
    before = _snapshot(tmp_path)

    # the run that was resumed from an older epoch: it saves 1, 2, 3 with SAVE_KEEP 2
    manager = CheckpointManager(str(tmp_path), 'net', save_freq=5, keep=2)
    for epoch in (1, 2, 3):
        manager.save(epoch, model, opt, sched, ema=ema)
    after = _snapshot(tmp_path)
    gone = set(before) - set(after)
    assert gone == {'net-Epoch-1.pdparams.tmp4242'}   # Epoch-1 of this run was written, then retired
    assert not [f for f in after if f.startswith('net-Epoch-1.') or f.startswith('net-Epoch-1-EMA')]
    for name, digest in before.items():
        if name in after and name != 'latest.txt':
            assert after[name] == digest, f'{name} was modified'
    assert _complete_epochs(tmp_path) == [2, 3] + list(range(10, 20))
    assert {'net-Best.pdparams', 'net-Best-EMA.pdparams', 'net_b-Epoch-1.pdopt', 'net-Epoch-1-notes.txt'} <= set(after)

    # and the one function every retention decision uses, called directly
    removed = remove_checkpoint(str(tmp_path / 'net-Epoch-2'))
    assert sorted(removed) == ['net-Epoch-2-EMA.pdparams', 'net-Epoch-2.pdopt', 'net-Epoch-2.pdparams']
    assert _complete_epochs(tmp_path) == [3] + list(range(10, 20))


def test_retention_keeps_newest_k_and_every_save_freq_epoch(tmp_path):
    model = _Net()
    opt, sched = _train_parts(model)
    manager = CheckpointManager(str(tmp_path), 'net', save_freq=10, keep=2)
    for epoch in range(1, 26):
        manager.save(epoch, model, opt, sched)
        milestones = [e for e in range(10, epoch + 1, 10)]
        assert _complete_epochs(tmp_path) == sorted(set(milestones) | {max(1, epoch - 1), epoch})
    assert _complete_epochs(tmp_path) == [10, 20, 24, 25]
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith('.pdparams')) == [
        'net-Epoch-10.pdparams', 'net-Epoch-20.pdparams', 'net-Epoch-24.pdparams', 'net-Epoch-25.pdparams']
    assert manager.latest().endswith('net-Epoch-25')

    flat = tmp_path / 'flat'
    manager = CheckpointManager(str(flat), 'net', save_freq=0, keep=1)   # SAVE_FREQ 0: no milestones
    for epoch in range(1, 12):
        manager.save(epoch, model, opt, sched)
    assert _complete_epochs(flat) == [11]


def test_retention_after_resume_from_an_older_epoch_keeps_later_checkpoints(tmp_path):
    model = _Net()
    opt, sched = _train_parts(model)
    first = CheckpointManager(str(tmp_path), 'net', 10, 3)
    for epoch in (1, 2, 3):
        first.save(epoch, model, opt, sched)
    epoch3 = _snapshot(tmp_path)['net-Epoch-3.pdopt']
    resumed = CheckpointManager(str(tmp_path), 'net', 10, 2)   # -resume .../net-Epoch-1
    resumed.last_good = str(tmp_path / 'net-Epoch-1')
    assert resumed.later_checkpoints(1) == [str(tmp_path / 'net-Epoch-2'), str(tmp_path / 'net-Epoch-3')]
    resumed.save(2, model, opt, sched)
    assert _complete_epochs(tmp_path) == [1, 2, 3]                 # Epoch-3 (a later one) is kept
    assert _snapshot(tmp_path)['net-Epoch-3.pdopt'] == epoch3
    assert resumed.latest().endswith('net-Epoch-2')
    resumed.save(3, model, opt, sched)                               # replaced when this run gets there
    assert _complete_epochs(tmp_path) == [2, 3]


@pytest.mark.parametrize('key, value', [('SAVE_FREQ', -1), ('SAVE_KEEP', 0), ('SAVE_KEEP', 1.5)])
def test_retention_settings_are_checked(tmp_path, key, value):
    kwargs = {'save_freq': 10, 'keep': 2, {'SAVE_FREQ': 'save_freq', 'SAVE_KEEP': 'keep'}[key]: value}
    with pytest.raises(ConfigError, match=rf"'{key}' is {value}: expected an integer >= "):
        CheckpointManager(str(tmp_path), 'net', **kwargs)


# ----- no good checkpoint lost -----

def _poison(layer, value=float('nan')):
    weight = layer.weight.numpy()
    weight.flat[3] = value
    layer.weight.set_value(weight)


@pytest.mark.parametrize('where', ['weights', 'ema', 'val_loss'])
def test_non_finite_checkpoint_is_refused_and_nothing_is_deleted(tmp_path, where):
    model = _Net()
    opt, sched = _train_parts(model)
    ema = ModelEMA(model, 0.9)
    manager = CheckpointManager(str(tmp_path), 'net', save_freq=0, keep=1)
    manager.save(1, model, opt, sched, ema=ema)
    before = _snapshot(tmp_path)
    val_loss = 0.5
    if where == 'weights':
        _poison(model.body)
    elif where == 'ema':
        _poison(ema.module.head, float('inf'))
    else:
        val_loss = float('nan')
    expected = {'weights': r'the weights hold NaN or infinite values in body\.weight \(1 value\)',
                'ema': r'the EMA weights hold NaN or infinite values in head\.weight',
                'val_loss': r'validation loss is nan'}[where]
    with pytest.raises(NonFiniteCheckpointError, match=expected) as info:
        manager.save(2, model, opt, sched, ema=ema, val_loss=val_loss)
    message = str(info.value)
    assert message.startswith('epoch 2: ') and f'-resume {tmp_path / "net-Epoch-1"}' in message
    assert isinstance(info.value, UserError)
    assert _snapshot(tmp_path) == before                 # Epoch-1 and latest.txt untouched, no Epoch-2
    if where != 'val_loss':
        with pytest.raises(NonFiniteCheckpointError):
            manager.save_best(model, ema, epoch=2)
        assert _snapshot(tmp_path) == before


def test_failed_write_names_file_and_free_space_and_leaves_nothing(tmp_path, monkeypatch):
    model = _Net()
    opt, sched = _train_parts(model)
    ema = ModelEMA(model, 0.9)
    manager = CheckpointManager(str(tmp_path), 'net', save_freq=0, keep=1)
    manager.save(1, model, opt, sched, ema=ema)
    before = _snapshot(tmp_path)
    real_save = paddle.save

    def disk_full_at_pdopt(obj, path, *args, **kwargs):
        if '.pdopt.tmp' in path:
            with open(path, 'wb') as f:
                f.write(b'half a file')     # as a write that ran out of space midway
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.paddle, 'save', disk_full_at_pdopt)
    with pytest.raises(CheckpointWriteError) as info:
        manager.save(2, model, opt, sched, ema=ema)
    message = str(info.value)
    assert f'could not write {tmp_path / "net-Epoch-2.pdopt"}: No space left on device (ENOSPC)' in message
    assert ' free of ' in message and str(tmp_path / 'net-Epoch-1') in message
    assert isinstance(info.value, UserError)
    assert _snapshot(tmp_path) == before                 # no temporaries, no Epoch-2 weights, Epoch-1 intact
    assert manager.latest().endswith('net-Epoch-1')

    def interrupted(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)
        raise KeyboardInterrupt   # Ctrl-C in the middle of a checkpoint

    monkeypatch.setattr(checkpoint.paddle, 'save', interrupted)
    with pytest.raises(KeyboardInterrupt):
        manager.save(2, model, opt, sched, ema=ema)
    assert _snapshot(tmp_path) == before


def test_write_into_read_only_folder_names_the_file(tmp_path):
    model = _Net()
    opt, sched = _train_parts(model)
    folder = tempfile.mkdtemp(prefix='ro_ckpt_')   # outside pytest's 0700 tree: another uid may enter it
    try:
        manager = CheckpointManager(folder, 'net', save_freq=0, keep=1)
        manager.save(1, model, opt, sched)
        before = _snapshot(folder)
        os.chmod(folder, 0o555)
        as_root = os.geteuid() == 0
        if as_root:
            os.seteuid(65534)   # root ignores modes: write as 'nobody' to meet a real permission check
        try:
            with pytest.raises(CheckpointWriteError) as info:
                manager.save(2, model, opt, sched)
        finally:
            if as_root:
                os.seteuid(0)
        message = str(info.value)
        assert f'could not write {os.path.join(folder, "net-Epoch-2.pdparams")}: Permission denied (EACCES)' in message
        assert ' free of ' in message
        os.chmod(folder, 0o755)
        assert _snapshot(folder) == before
    finally:
        os.chmod(folder, 0o755)
        shutil.rmtree(folder)


# ----- weights refused at load -----

def test_pretrained_and_resume_refuse_non_finite_weights(tmp_path):
    source = _Net()
    _poison(source.head)
    path = str(tmp_path / 'nan.pdparams')
    paddle.save(source.state_dict(), path)
    for drop in (True, False):
        with pytest.raises(NonFiniteWeightsError, match=r'nan\.pdparams: 1 tensor\(s\) hold NaN or infinite '
                                                        r'values: head\.weight \(1 value\)'):
            load_weights(_Net(), path, what='pretrained', resize=True, drop_head=drop, log=lambda m: None)

    model = _Net()
    opt, sched = _train_parts(model)
    manager = CheckpointManager(str(tmp_path / 'run'), 'net', 10, 2)
    manager.save(1, model, opt, sched)
    state = paddle.load(str(tmp_path / 'run' / 'net-Epoch-1.pdparams'))   # an old, diverged checkpoint
    state['body.bias'] = paddle.full_like(state['body.bias'], float('inf'))
    paddle.save(state, str(tmp_path / 'run' / 'net-Epoch-1.pdparams'))
    model2 = _Net()
    opt2, sched2 = _train_parts(model2)
    with pytest.raises(NonFiniteWeightsError, match=r'body\.bias \(8 values\)'):
        resume(resolve_resume(str(tmp_path / 'run')), model2, opt2, sched2)


def test_eval_loading_refuses_a_head_of_another_class_count(tmp_path):
    path = str(tmp_path / 'src.pdparams')
    paddle.save(_Net(num_classes=1000).state_dict(), path)
    with pytest.raises(KeyMismatchError, match=r'head\.weight: \(8, 1000\) in .*src\.pdparams, \(8, 10\) in the '
                                               r'model.*head\.bias: \(1000,\) in .*\(10,\) in the model.*'
                                               r'-num_classes'):
        load_weights(_Net(num_classes=10), path, what='pretrained', resize=True, drop_head=False,
                     log=lambda m: None)


# ----- output folders are never clobbered -----

def test_output_folder_guard(tmp_path):
    model = _Net()
    opt, sched = _train_parts(model)
    out = tmp_path / 'out'
    check_output_folder(str(out))                          # missing folder: fine
    out.mkdir()
    (out / 'log.txt').write_text('an old log')
    check_output_folder(str(out))                          # a log alone is no checkpoint
    CheckpointManager(str(out), 'net', 10, 2).save(1, model, opt, sched)
    with pytest.raises(OutputFolderInUseError, match=r'holds the checkpoints of another run \(latest\.txt, '
                                                     r'net-Epoch-1\.pdopt\).*-resume .*-overwrite'):
        check_output_folder(str(out))
    os.remove(out / 'latest.txt')
    with pytest.raises(OutputFolderInUseError, match=r'\(net-Epoch-1\.pdopt\)'):
        check_output_folder(str(out))
    elsewhere = tmp_path / 'elsewhere'
    CheckpointManager(str(elsewhere), 'net', 10, 2).save(1, model, opt, sched)
    with pytest.raises(OutputFolderInUseError, match=r'a run resumed from .*elsewhere'):
        check_output_folder(str(out), resume_prefix=str(elsewhere / 'net-Epoch-1'))
    check_output_folder(str(out), resume_prefix=str(out / 'net-Epoch-1'))   # continuing that run
    check_output_folder(str(out), overwrite=True)


def test_resume_of_nothing_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r'-resume .*: folder has no latest\.txt'):
        resolve_resume(str(tmp_path))
    with pytest.raises(UserError, match=r'net-Epoch-3\.pdopt not found'):
        resolve_resume(str(tmp_path / 'net-Epoch-3'))
