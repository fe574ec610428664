"""The shared launcher end to end on a tiny generated dataset, on the CPU.

- resuming from epoch 1 reproduces the uninterrupted run's epoch-2 loss exactly;
- a NaN loss stops the run with a message instead of training on;
- `-eval` logs the eval preprocessing and counts every validation image once;
- `main_multi_gpu.py` under `paddle.distributed.launch` runs as 2 CPU processes
  and its validation counts each image once (an odd count, so padding would show).
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

from engine.config import make_get_config
from engine.launcher import main
from engine.trainer import NonFiniteLossError

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


class TinyNet(paddle.nn.Layer):
    CLASSIFIER = ('head',)

    def __init__(self, num_classes, poison=False):
        super().__init__()
        self.conv = paddle.nn.Conv2D(3, 8, 3, stride=2)
        self.drop = paddle.nn.Dropout(0.1)
        self.head = paddle.nn.Linear(8, num_classes)
        self.poison = poison

    def forward(self, x):
        x = paddle.nn.functional.relu(self.conv(x)).mean(axis=[2, 3])
        out = self.head(self.drop(x))
        return out * float('nan') if self.poison and self.training else out


def _defaults(c):
    c.MODEL.TYPE = 'Tiny'
    c.MODEL.NAME = 'tiny'
    c.MODEL.POISON = False


get_config = make_get_config(_defaults)


def build_tiny(config):
    return TinyNet(config.MODEL.NUM_CLASSES, config.MODEL.POISON)


def _argv(data, out, *opts):
    return ['-data_path', data, '-output', out, '-batch_size', '8', '-opts',
            'MODEL.NUM_CLASSES', '4', 'DATA.IMAGE_SIZE', '16', 'DATA.NUM_WORKERS', '0',
            'TRAIN.NUM_EPOCHS', '2', 'TRAIN.WARMUP_EPOCHS', '1', 'TRAIN.BASE_LR', '0.01',
            'TRAIN.MIXUP_ALPHA', '0.0', 'TRAIN.CUTMIX_ALPHA', '0.0', 'TRAIN.RANDOM_ERASE_PROB', '0.0',
            'TRAIN.RAND_AUGMENT', 'False', 'REPORT_FREQ', '2', 'TRAIN.MODEL_EMA', 'True',
            'TRAIN.MODEL_EMA_DECAY', '0.9', *opts]


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp('squares'))


def test_resume_reproduces_uninterrupted_run(data, tmp_path):
    full = main(get_config, build_tiny, argv=_argv(data, str(tmp_path / 'full')))
    assert full['epoch'] == 2 and np.isfinite(full['train_loss'])
    resumed = main(get_config, build_tiny, argv=_argv(data, str(tmp_path / 'resumed')) + [
        '-resume', str(tmp_path / 'full' / 'tiny-Epoch-1')])
    assert resumed['epoch'] == 2
    assert resumed['train_loss'] == pytest.approx(full['train_loss'], rel=1e-6, abs=1e-7)
    assert resumed['acc1'] == pytest.approx(full['acc1'])
    assert resumed['ema_acc1'] == pytest.approx(full['ema_acc1'])


def test_nan_loss_stops_with_message(data, tmp_path):
    with pytest.raises(NonFiniteLossError, match=r'loss is nan at epoch 1, step 2'):
        main(get_config, build_tiny, argv=_argv(data, str(tmp_path), 'MODEL.POISON', 'True'))


def test_eval_logs_preprocessing_and_counts_all(data, tmp_path, capsys):
    train = main(get_config, build_tiny, argv=_argv(data, str(tmp_path / 'train')))
    result = main(get_config, build_tiny, argv=_argv(data, str(tmp_path / 'eval')) + [
        '-eval', '-pretrained', str(tmp_path / 'train' / 'tiny-Epoch-2')])
    assert result['count'] == 21
    assert result['acc1'] == pytest.approx(train['acc1'])
    log = open(tmp_path / 'eval' / 'log.txt').read()
    assert re.search(r'eval transform: .*crop_pct.*', log)
    assert 'Validation Acc@1:' in log


@pytest.mark.slow
def test_two_cpu_processes_with_launch(data, tmp_path):
    """main_multi_gpu.py of a real family, 2 ranks over gloo, exact validation count."""
    script = os.path.join(REPO, 'image_classification', 'ViT', 'main_multi_gpu.py')
    cfg = os.path.join(REPO, 'image_classification', 'ViT', 'configs', 'vit_tiny_patch16_224.yaml')
    cmd = [sys.executable, '-m', 'paddle.distributed.launch', '--nproc_per_node', '2',
           '--log_dir', str(tmp_path / 'launch'), script, '-cfg', cfg] + _argv(data, str(tmp_path / 'out')) + [
        'TRAIN.NUM_EPOCHS', '1', 'TRAIN.MODEL_EMA', 'False', 'DATA.IMAGE_SIZE', '32', 'MODEL.DEPTH', '1']
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    logs = proc.stdout + proc.stderr
    assert proc.returncode == 0, logs[-3000:]
    master = open(tmp_path / 'out' / 'log.txt').read()
    assert 'process 0/2' in master
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
    script.write_text(DYING_MAIN.format(paths=[tests_dir] + sys.path[:2]))
    cmd = [sys.executable, '-m', 'paddle.distributed.launch', '--nproc_per_node', '2',
           '--log_dir', str(tmp_path / 'launch'), str(script)] + _argv(data, str(tmp_path / 'out'))
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=str(tmp_path))
    assert proc.returncode != 0
    assert time.time() - start < 120, 'the surviving rank waited too long'
