"""Checkpoint files: strict loading, head dropping, exact resume state, crash safety."""
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import paddle
import pytest

from engine.checkpoint import (CheckpointManager, KeyMismatchError, load_pretrained, resolve_resume,
                               resume)
from engine.ema import ModelEMA
from engine.optim import WarmupCosine

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
    load_pretrained(target, path, log=messages.append)
    np.testing.assert_array_equal(target.body.weight.numpy(), source.body.weight.numpy())
    np.testing.assert_array_equal(target.head.weight.numpy(), head_before)
    assert any('dropped classifier head.weight' in m for m in messages)


def test_pretrained_refuses_other_mismatches(tmp_path):
    path = str(tmp_path / 'wide.pdparams')
    paddle.save(_Net(width=16).state_dict(), path)
    with pytest.raises(KeyMismatchError, match=r'body\.weight: \(4, 16\).*\(4, 8\)'):
        load_pretrained(_Net(width=8), path, log=lambda m: None)
    state = _Net().state_dict()
    state['extra.weight'] = paddle.zeros([2])
    del state['body.bias']
    paddle.save(state, path)
    with pytest.raises(KeyMismatchError, match=r'missing key\(s\): body\.bias.*unexpected key\(s\): extra\.weight'):
        load_pretrained(_Net(), path, log=lambda m: None)


def test_sigkill_while_saving_keeps_previous_checkpoint(tmp_path):
    """A process killed in the middle of writing epoch 2 leaves epoch 1 as the latest, loadable."""
    script = textwrap.dedent(f'''
        import os, sys, time
        sys.path[:0] = {[TESTS, os.path.join(REPO, 'image_classification'), REPO]!r}
        import engine, paddle
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
