"""The shared launcher end to end on a tiny generated dataset, on the CPU.

- resuming from epoch 1 reproduces the uninterrupted run's epoch-2 loss exactly, also after a
  kill with 2 loader workers, RandAugment, mixup / cutmix, random erasing, EMA and repeated
  augmentation on (every logged loss digit for digit);
- a NaN loss stops the run with a message instead of training on;
- `-eval` logs the eval preprocessing and counts every validation image once;
- `main_multi_gpu.py` under `paddle.distributed.launch` runs as 2 CPU processes
  and its validation counts each image once (an odd count, so padding would show);
- a run that diverges on the last step of an epoch (every reported loss finite)
  stops naming the last good checkpoint, which stays `latest`;
- a new run never writes into another run's output folder unless `-overwrite`;
- `-eval` refuses weights with NaN, a head of another class count, labels
  beyond the head, and reports no accuracy for non-finite logits.
"""
import os
import re
import subprocess
import time
import sys

import numpy as np
import paddle
import pytest
from PIL import Image

from engine.checkpoint import NonFiniteCheckpointError, OutputFolderInUseError
from engine.config import make_get_config
from engine.data.dataset import ListFileError
from engine.launcher import execute as main   # raises a UserError instead of exiting 2
from engine.trainer import NonFiniteLossError, NonFiniteOutputError
from engine.weights import KeyMismatchError, NonFiniteWeightsError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLORS = [(220, 40, 40), (40, 200, 40), (40, 60, 220), (230, 220, 50)]


def make_dataset(root, n_train=32, n_val=21, size=20):
    """Coloured squares on noise: class = colour. Lists as PaddleViT reads them."""
    rng = np.random.default_rng(0)
    for split, count in (('train', n_train), ('val', n_val)):
        lines = []
        for i in range(count):
            label = i % len(COLORS)
            img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            x, y = rng.integers(0, size // 2, 2)
            img[y:y + size // 2, x:x + size // 2] = COLORS[label]
            rel = f'{split}/{label}/{i}.png'
            os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
            Image.fromarray(img).save(os.path.join(root, rel))
            lines.append(f'{rel} {label}')
        with open(os.path.join(root, f'{split}_list.txt'), 'w') as f:
            f.write('\n'.join(lines) + '\n')
    return str(root)


class _NaNGradient(paddle.autograd.PyLayer):
    """Identity forward, NaN backward: the loss stays finite, the update it drives makes weights NaN."""

    @staticmethod
    def forward(ctx, x):
        return x * 1.0

    @staticmethod
    def backward(ctx, grad):
        return grad * float('nan')


class TinyNet(paddle.nn.Layer):
    CLASSIFIER = ('head',)

    def __init__(self, num_classes, poison=False, diverge_at_step=0):
        super().__init__()
        self.conv = paddle.nn.Conv2D(3, 8, 3, stride=2)
        self.drop = paddle.nn.Dropout(0.1)
        self.head = paddle.nn.Linear(8, num_classes)
        self.poison = poison
        self.diverge_at_step = diverge_at_step   # training step (1-based, over the run) whose update diverges
        self.train_steps = 0

    def forward(self, x):
        x = paddle.nn.functional.relu(self.conv(x)).mean(axis=[2, 3])
        if self.training:
            self.train_steps += 1
            if self.train_steps == self.diverge_at_step:
                x = _NaNGradient.apply(x)
        out = self.head(self.drop(x))
        return out * float('nan') if self.poison and self.training else out


def _defaults(c):
    c.MODEL.TYPE = 'Tiny'
    c.MODEL.NAME = 'tiny'
    c.MODEL.POISON = False
    c.MODEL.DIVERGE_AT_STEP = 0


get_config = make_get_config(_defaults)


def build_tiny(config):
    return TinyNet(config.MODEL.NUM_CLASSES, config.MODEL.POISON, config.MODEL.DIVERGE_AT_STEP)


def _tiny_cfg(data):
    """The YAML every run names (-cfg is required): the Tiny family's defaults."""
    path = os.path.join(data, 'tiny.yaml')
    if not os.path.isfile(path):
        with open(path, 'w') as f:
            f.write('MODEL:\n  TYPE: Tiny\n')
    return path


def _argv(data, out, *opts, cfg=None):
    return ['-cfg', cfg or _tiny_cfg(data), '-data_path', data, '-output', out, '-batch_size', '8', '-opts',
            'MODEL.NUM_CLASSES', '4', 'DATA.IMAGE_SIZE', '16', 'DATA.NUM_WORKERS', '0',
            'TRAIN.NUM_EPOCHS', '2', 'TRAIN.WARMUP_EPOCHS', '1', 'TRAIN.BASE_LR', '0.01',
            'TRAIN.MIXUP_ALPHA', '0.0', 'TRAIN.CUTMIX_ALPHA', '0.0', 'TRAIN.RANDOM_ERASE_PROB', '0.0',
            'TRAIN.RAND_AUGMENT', 'False', 'REPORT_FREQ', '2', 'TRAIN.MODEL_EMA', 'True',
            'TRAIN.MODEL_EMA_DECAY', '0.9', *opts]


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp('squares'))


@pytest.mark.slow
def test_resume_reproduces_uninterrupted_run(data, tmp_path):
    full = main(get_config, build_tiny, argv=_argv(data, str(tmp_path / 'full')))
    assert full['epoch'] == 2 and np.isfinite(full['train_loss'])
    resumed = main(get_config, build_tiny, argv=_argv(data, str(tmp_path / 'resumed')) + [
        '-resume', str(tmp_path / 'full' / 'tiny-Epoch-1')])
    assert resumed['epoch'] == 2
    assert resumed['train_loss'] == pytest.approx(full['train_loss'], rel=1e-6, abs=1e-7)
    assert resumed['acc1'] == pytest.approx(full['acc1'])
    assert resumed['ema_acc1'] == pytest.approx(full['ema_acc1'])


STALLING_MAIN = '''
import os, sys, time
sys.path[:0] = {paths!r}
from engine.launcher import main
from test_engine_run import get_config, TinyNet


class StallsAtStep(TinyNet):
    steps = 0

    def forward(self, x):
        if self.training:
            StallsAtStep.steps += 1
            if StallsAtStep.steps == {stall_at}:
                open({marker!r}, 'w').close()
                time.sleep(600)          # the test kills the process here
        return super().forward(x)


if __name__ == '__main__':
    main(get_config, lambda c: StallsAtStep(c.MODEL.NUM_CLASSES), argv={argv!r})
'''

# every source of randomness of a DeiT-style recipe, with loader workers and repeated augmentation
RANDOM_RECIPE = ('DATA.NUM_WORKERS', '2', 'DATA.REPEATED_AUG', '3', 'DATA.BATCH_SIZE', '32',
                 'TRAIN.RAND_AUGMENT', 'True', 'TRAIN.MIXUP_ALPHA', '0.8', 'TRAIN.CUTMIX_ALPHA', '1.0',
                 'TRAIN.RANDOM_ERASE_PROB', '0.25', 'REPORT_FREQ', '1')


def _logged(path, epoch):
    """Every loss, LR and accuracy line the log holds for `epoch` (timings stripped)."""
    text = open(path).read()
    tag = re.escape(f'Epoch[{epoch:03d}/002], ')
    return re.findall(tag + r'(Step\[\d+/\d+\], Loss: [^,]+, LR: [^,]+|Train Loss: [^,]+|'
                            r'Validation Loss: .*|EMA Validation .*)', text)


@pytest.fixture(scope='module')
def data256(tmp_path_factory):
    """256 training images: the least DeiT's repeated-augmentation sampler reads an epoch from."""
    return make_dataset(tmp_path_factory.mktemp('squares256'), n_train=256)


@pytest.mark.slow
def test_resume_after_kill_with_workers_replays_every_loss(data256, tmp_path):
    """Killed in epoch 2 and resumed from its output folder, a run logs the uninterrupted run's
    losses digit for digit, with 2 loader workers and every random draw of the recipe on (dropout,
    RandAugment, mixup / cutmix, random erasing, repeated augmentation; EMA weights evaluated).
    Before the trainer reseeded each step, Paddle's worker start shifted the mixup draws."""
    full = main(get_config, build_tiny, argv=_argv(data256, str(tmp_path / 'full'), *RANDOM_RECIPE))
    steps = len(_logged(tmp_path / 'full' / 'log.txt', 1)) - 3              # minus epoch, val, EMA lines
    assert steps == 256 // 32

    killed, marker = tmp_path / 'killed', tmp_path / 'stalled'
    script = tmp_path / 'stalling_main.py'
    script.write_text(STALLING_MAIN.format(
        paths=[os.path.dirname(os.path.abspath(__file__)), REPO, os.path.join(REPO, 'image_classification')],
        stall_at=steps + 1,
        marker=str(marker), argv=_argv(data256, str(killed), *RANDOM_RECIPE)))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=str(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 240
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.time() < deadline, 'the run to kill never reached epoch 2'
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.communicate()
    assert (killed / 'latest.txt').read_text().strip() == 'tiny-Epoch-1'

    resumed = main(get_config, build_tiny, argv=_argv(data256, str(tmp_path / 'resumed'), *RANDOM_RECIPE) + [
        '-resume', str(killed)])
    assert _logged(killed / 'log.txt', 1) == _logged(tmp_path / 'full' / 'log.txt', 1)
    epoch2 = _logged(tmp_path / 'full' / 'log.txt', 2)
    assert len(epoch2) == steps + 3
    assert _logged(tmp_path / 'resumed' / 'log.txt', 2) == epoch2
    assert resumed['train_loss'] == full['train_loss'] and resumed['ema_acc1'] == full['ema_acc1']


def test_nan_loss_stops_with_message(data, tmp_path):
    with pytest.raises(NonFiniteLossError, match=r'loss is nan at epoch 1, step 2'):
        main(get_config, build_tiny, argv=_argv(data, str(tmp_path), 'MODEL.POISON', 'True'))


@pytest.mark.slow
def test_eval_logs_preprocessing_and_counts_all(data, tmp_path, capsys):
    train = main(get_config, build_tiny, argv=_argv(data, str(tmp_path / 'train')))
    result = main(get_config, build_tiny, argv=_argv(data, str(tmp_path / 'eval')) + [
        '-eval', '-pretrained', str(tmp_path / 'train' / 'tiny-Epoch-2')])
    assert result['count'] == 21
    assert result['acc1'] == pytest.approx(train['acc1'])
    log = open(tmp_path / 'eval' / 'log.txt').read()
    assert re.search(r'eval transform: .*crop_pct.*', log)
    assert 'Validation Acc@1:' in log


def test_eval_logs_squash_resize(data, tmp_path):
    main(get_config, build_tiny, argv=_argv(data, str(tmp_path), 'DATA.EVAL_RESIZE', 'squash') + ['-eval'])
    log = open(tmp_path / 'log.txt').read()
    assert re.search(r'eval transform: squash: resize the whole image to 16x16 \(bicubic, PIL; aspect ratio '
                     r'not kept\), no crop, crop_pct 0.875 ignored', log), log[-2000:]


@pytest.mark.slow
def test_two_cpu_processes_with_launch(data256, tmp_path):
    """main_multi_gpu.py of a real family, 2 ranks over gloo, exact validation count; the DeiT-recipe
    config trains with repeated augmentation: DeiT's 256 // 256 * 256 / 2 = 128 images per rank."""
    script = os.path.join(REPO, 'image_classification', 'ViT', 'main_multi_gpu.py')
    cfg = os.path.join(REPO, 'image_classification', 'ViT', 'configs', 'vit_tiny_patch16_224.yaml')
    cmd = [sys.executable, '-m', 'paddle.distributed.launch', '--nproc_per_node', '2',
           '--log_dir', str(tmp_path / 'launch'), script] + _argv(data256, str(tmp_path / 'out'), cfg=cfg) + [
        'TRAIN.NUM_EPOCHS', '1', 'TRAIN.MODEL_EMA', 'False', 'DATA.IMAGE_SIZE', '32', 'MODEL.DEPTH', '1',
        'DATA.BATCH_SIZE', '32']
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    logs = proc.stdout + proc.stderr
    assert proc.returncode == 0, logs[-3000:]
    master = open(tmp_path / 'out' / 'log.txt').read()
    assert 'process 0/2' in master
    assert re.search(r'REPEATED_AUG: 3', master) and 'training: 256 images, 4 steps/epoch' in master, master[-3000:]
    assert re.search(r'Validation Acc@1: [0-9.]+, Validation Acc@5: [0-9.]+ \(21 images scored\)', master), master[-2000:]
    assert os.path.isfile(tmp_path / 'out' / 'latest.txt')


DYING_MAIN = '''
import os, sys
sys.path[:0] = {paths!r}
from engine.launcher import main
import paddle
from test_engine_run import get_config, TinyNet


class DiesOnRank1(TinyNet):
    steps = 0

    def forward(self, x):
        if self.training:
            DiesOnRank1.steps += 1
            if DiesOnRank1.steps == 2 and paddle.distributed.get_rank() == 1:
                os._exit(7)   # as a killed or crashed worker would
        return super().forward(x)


if __name__ == '__main__':
    main(get_config, lambda c: DiesOnRank1(c.MODEL.NUM_CLASSES), distributed=True)
'''


@pytest.mark.slow
def test_dead_rank_ends_the_job_instead_of_hanging(data, tmp_path):
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    script = tmp_path / 'dying_main.py'
    script.write_text(DYING_MAIN.format(paths=[tests_dir, REPO, os.path.join(REPO, 'image_classification')]))
    cmd = [sys.executable, '-m', 'paddle.distributed.launch', '--nproc_per_node', '2',
           '--log_dir', str(tmp_path / 'launch'), str(script)] + _argv(data, str(tmp_path / 'out'))
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=str(tmp_path))
    assert proc.returncode != 0
    assert time.time() - start < 120, 'the surviving rank waited too long'


def _files(folder):
    return {name: open(os.path.join(folder, name), 'rb').read() for name in sorted(os.listdir(folder))
            if name != 'log.txt' and not os.path.isdir(os.path.join(folder, name))}


@pytest.mark.slow
def test_divergence_on_the_last_step_keeps_the_last_good_checkpoint(data, tmp_path):
    """4 steps per epoch: step 8 is the last of epoch 2; its loss is finite, its update is not."""
    out = str(tmp_path / 'run')
    with pytest.raises(NonFiniteCheckpointError) as info:
        main(get_config, build_tiny, argv=_argv(data, out, 'MODEL.DIVERGE_AT_STEP', '8'))
    message = str(info.value)
    assert message.startswith('epoch 2: the weights hold NaN or infinite values in conv.bias (8 values), '
                              'conv.weight (216 values)')
    assert f'-resume {os.path.join(out, "tiny-Epoch-1")}' in message
    assert open(os.path.join(out, 'latest.txt')).read().strip() == 'tiny-Epoch-1'
    assert not [f for f in os.listdir(out) if 'Epoch-2' in f or '.tmp' in f]
    log = open(os.path.join(out, 'log.txt')).read()
    assert 'Epoch[002/002], Step[0004/0004], Loss: ' in log and 'Loss: nan' not in log   # every report finite

    # resuming from it (same folder, SAVE_KEEP 1) with the same fault: the good checkpoint survives again
    before = _files(out)
    with pytest.raises(NonFiniteCheckpointError, match=r'^epoch 2: .*last good checkpoint is .*tiny-Epoch-1'):
        main(get_config, build_tiny, argv=_argv(data, out, 'MODEL.DIVERGE_AT_STEP', '4', 'SAVE_KEEP', '1') + [
            '-resume', out])
    assert _files(out) == before


@pytest.mark.slow
def test_new_run_never_writes_into_another_runs_folder(data, tmp_path):
    out = str(tmp_path / 'first')
    main(get_config, build_tiny, argv=_argv(data, out, 'TRAIN.NUM_EPOCHS', '1'))
    before = _files(out)
    with pytest.raises(OutputFolderInUseError, match=r'-resume .*-overwrite'):
        main(get_config, build_tiny, argv=_argv(data, out, 'TRAIN.NUM_EPOCHS', '1', 'SEED', '5'))
    assert _files(out) == before

    # -eval writes only its log: not blocked, checkpoints untouched
    result = main(get_config, build_tiny, argv=_argv(data, out) + [
        '-eval', '-pretrained', os.path.join(out, 'tiny-Epoch-1')])
    assert result['count'] == 21
    assert _files(out) == before

    # -overwrite: the new run's checkpoints replace the old ones
    main(get_config, build_tiny, argv=_argv(data, out, 'TRAIN.NUM_EPOCHS', '1', 'SEED', '5') + ['-overwrite'])
    after = _files(out)
    assert set(after) == set(before)
    assert after['tiny-Epoch-1.pdparams'] != before['tiny-Epoch-1.pdparams']
    assert after['tiny-Best.pdparams'] == after['tiny-Epoch-1.pdparams']


def test_eval_refuses_weights_that_cannot_give_an_accuracy(data, tmp_path):
    weights = str(tmp_path / 'w')
    os.makedirs(weights)
    model = TinyNet(4)
    paddle.save(model.state_dict(), os.path.join(weights, 'ok.pdparams'))
    paddle.save(TinyNet(7).state_dict(), os.path.join(weights, 'seven.pdparams'))
    state = model.state_dict()
    nan = state['head.bias'].numpy()
    nan[2] = np.nan
    paddle.save({**state, 'head.bias': paddle.to_tensor(nan)}, os.path.join(weights, 'nan.pdparams'))
    huge = state['head.weight'].numpy()
    huge[:] = 3e38                  # finite weights whose logits overflow to inf
    paddle.save({**state, 'head.weight': paddle.to_tensor(huge)}, os.path.join(weights, 'huge.pdparams'))

    def evaluate(name, *opts):
        return main(get_config, build_tiny, argv=_argv(data, str(tmp_path / 'eval'), *opts) + [
            '-eval', '-pretrained', os.path.join(weights, name)])

    assert evaluate('ok')['count'] == 21
    with pytest.raises(KeyMismatchError, match=r'head\.weight: \(8, 7\) in .*seven\.pdparams, \(8, 4\) in the model'):
        evaluate('seven')
    with pytest.raises(NonFiniteWeightsError, match=r'nan\.pdparams: 1 tensor\(s\) hold NaN .*head\.bias \(1 value\)'):
        evaluate('nan')
    with pytest.raises(NonFiniteOutputError, match=r'^21 of 21 validation images gave NaN or infinite logits'):
        evaluate('huge')
    # labels must fit the head: the val list is checked against MODEL.NUM_CLASSES, which the head must match
    assert evaluate('seven', 'MODEL.NUM_CLASSES', '7')['count'] == 21
    paddle.save(TinyNet(3).state_dict(), os.path.join(weights, 'three.pdparams'))
    with pytest.raises(ListFileError, match=r'val_list\.txt:\d+: label 3 is outside \[0, 3\)'):
        evaluate('three', 'MODEL.NUM_CLASSES', '3')
