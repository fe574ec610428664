"""Recipe switches of the official training scripts (issue #16, item 3).

- TRAIN.LR_SCALING: the officials scale BASE_LR alone by the global batch, not the
  warmup-start and minimum LRs ('base'); PaddleViT scaled all three ('all').
- TRAIN.COOLDOWN_EPOCHS: timm's cooldown, NUM_EPOCHS of schedule then that many
  epochs at END_LR (SP-ViT / TLT: 300 + 10); the log counts the total.
- TRAIN.FINETUNE_EVAL_MODE: DeiT's fine-tuning in eval mode: no dropout, attention
  dropout or drop path, BatchNorm frozen, gradients flowing, and the model's own
  outputs (both heads of a distilled PiT) as in training.
"""
import math
import os
import re

import numpy as np
import paddle
import pytest

from engine.config import ConfigError, make_get_config
from engine.families import build_from_config, load_family
from engine.layers import DropPath
from engine.launcher import main
from engine.optim import WarmupCosine, build_scheduler, scaled_lrs, total_epochs
from engine.trainer import TrainState, set_training_mode, train_one_epoch
from test_engine_run import _argv, build_tiny, get_config as tiny_config, make_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, 'tests', 'fixtures')
get_config = make_get_config(lambda c: None)


# ---- which learning rates the batch scaling applies to -----------------------------------------

def _lr_config(mode):
    # global batch 128 x 4 processes x 2 accumulation = 1024 = 2 x LINEAR_SCALED_LR
    return get_config(opts=['DATA.BATCH_SIZE', '128', 'TRAIN.ACCUM_ITER', '2', 'TRAIN.LINEAR_SCALED_LR', '512',
                            'TRAIN.BASE_LR', '5e-4', 'TRAIN.WARMUP_START_LR', '1e-6', 'TRAIN.END_LR', '1e-5',
                            'TRAIN.LR_SCALING', mode])


def test_base_scaling_leaves_warmup_start_and_min_lr_absolute():
    config = _lr_config('base')
    assert get_config().TRAIN.LR_SCALING == 'base'          # the default: every official recipe's
    assert scaled_lrs(config, world_size=4) == pytest.approx((1e-3, 1e-6, 1e-5))
    sched = build_scheduler(config, steps_per_epoch=10, world_size=4)
    assert sched() == pytest.approx(1e-6)                     # warmup starts at the unscaled 1e-6
    assert sched.base_lr == pytest.approx(1e-3) and sched.end_lr == pytest.approx(1e-5)


def test_all_scaling_scales_the_three():
    assert scaled_lrs(_lr_config('all'), world_size=4) == pytest.approx((1e-3, 2e-6, 2e-5))


def test_no_linear_scaling_leaves_every_lr():
    config = get_config(opts=['TRAIN.LINEAR_SCALED_LR', 'None', 'TRAIN.LR_SCALING', 'all'])
    assert scaled_lrs(config, world_size=8) == (config.TRAIN.BASE_LR, config.TRAIN.WARMUP_START_LR,
                                                config.TRAIN.END_LR)


def test_unknown_scaling_mode_names_key_value_and_choices():
    with pytest.raises(ConfigError, match=r"-opts: TRAIN\.LR_SCALING = 'warmup' is not allowed: must be one of "
                                          r"'base', 'all'"):
        get_config(opts=['TRAIN.LR_SCALING', 'warmup'])


# ---- cooldown epochs ----------------------------------------------------------------------------

def test_lr_curve_with_cooldown_matches_closed_form():
    steps, epochs, warmup, cooldown = 5, 6, 2, 3
    base, start, end = 1e-3, 1e-6, 1e-5
    config = get_config(opts=['TRAIN.NUM_EPOCHS', str(epochs), 'TRAIN.WARMUP_EPOCHS', str(warmup),
                              'TRAIN.COOLDOWN_EPOCHS', str(cooldown), 'TRAIN.LINEAR_SCALED_LR', 'None',
                              'TRAIN.BASE_LR', str(base), 'TRAIN.WARMUP_START_LR', str(start),
                              'TRAIN.END_LR', str(end)])
    assert total_epochs(config) == epochs + cooldown
    sched = build_scheduler(config, steps_per_epoch=steps, world_size=1)
    w, t_end = warmup * steps, epochs * steps
    for t in range(total_epochs(config) * steps):
        if t < w:
            expected = start + (base - start) * t / w
        elif t <= t_end:
            expected = end + (base - end) * 0.5 * (1 + math.cos(math.pi * (t - w) / (t_end - w)))
        else:                                           # cooldown: held at the minimum
            expected = end
        assert sched() == pytest.approx(expected, rel=1e-9, abs=1e-15), t
        sched.step()


@pytest.mark.parametrize('bad', ['-1', '2.5', 'True'])
def test_cooldown_must_be_a_non_negative_integer(bad):
    with pytest.raises(ConfigError, match=r'-opts: (config key )?TRAIN\.COOLDOWN_EPOCHS'):
        get_config(opts=['TRAIN.COOLDOWN_EPOCHS', bad])


@pytest.mark.slow
def test_run_trains_cooldown_epochs_at_min_lr_and_logs_the_total(tmp_path):
    data = make_dataset(tmp_path / 'data')
    out = tmp_path / 'run'
    result = main(tiny_config, build_tiny, argv=_argv(data, str(out), 'TRAIN.NUM_EPOCHS', '1',
                                                      'TRAIN.COOLDOWN_EPOCHS', '1', 'TRAIN.END_LR', '2e-5',
                                                      'TRAIN.MODEL_EMA', 'False'))
    assert result['epoch'] == 2
    log = open(out / 'log.txt').read()
    assert '1 epochs + 1 cooldown at the min lr' in log
    assert re.search(r'Epoch\[001/002\], Step', log) and 'Epoch[002/002], Train Loss' in log
    cooldown_lrs = re.findall(r'Epoch\[002/002\], Step\[\d+/\d+\], Loss: [0-9.]+, LR: ([0-9.e+-]+)', log)
    assert cooldown_lrs and all(float(lr) == pytest.approx(2e-5) for lr in cooldown_lrs)
    assert os.path.isfile(out / 'tiny-Epoch-2.pdparams')


# ---- fine-tuning in eval mode ------------------------------------------------------------------

class _Stochastic(paddle.nn.Layer):
    """Dropout, drop path, BatchNorm and a top-level output that depends on `training`."""

    def __init__(self):
        super().__init__()
        self.conv = paddle.nn.Conv2D(3, 8, 3)
        self.bn = paddle.nn.BatchNorm2D(8)
        self.drop = paddle.nn.Dropout(0.5)
        self.drop_path = DropPath(0.5)
        self.head = paddle.nn.Linear(8, 4)

    def forward(self, x):
        x = self.bn(self.conv(x)).mean(axis=[2, 3])
        x = x + self.drop_path(self.drop(x))
        logits = self.head(x)
        return (logits, logits * 2) if self.training else logits


def _two_forwards(model, x):
    return [model(x) for _ in range(2)]


def test_eval_mode_finetuning_switches_off_randomness_keeps_gradients_and_outputs():
    paddle.seed(0)
    model = _Stochastic()
    x = paddle.randn([4, 3, 8, 8])
    set_training_mode(model, finetune_eval_mode=False)
    a, b = _two_forwards(model, x)
    assert not np.allclose(a[0].numpy(), b[0].numpy())      # dropout / drop path on in training

    mean_before = model.bn._mean.numpy().copy()
    set_training_mode(model, finetune_eval_mode=True)
    assert model.training and not any(layer.training for layer in model.sublayers())
    a, b = _two_forwards(model, x)
    assert isinstance(a, tuple)                              # the model's training outputs
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    np.testing.assert_array_equal(model.bn._mean.numpy(), mean_before)   # BatchNorm statistics frozen
    model.eval()
    np.testing.assert_allclose(a[0].numpy(), model(x).numpy(), rtol=1e-6, atol=1e-6)

    set_training_mode(model, finetune_eval_mode=True)
    model(x)[0].sum().backward()
    for name, param in model.named_parameters():
        if not param.stop_gradient:   # (BatchNorm's running statistics are buffers)
            assert param.grad is not None and float(paddle.abs(param.grad).sum()) > 0, name


class _Batches:
    def __init__(self, batch, n):
        self.batch, self.n = batch, n

    def __len__(self):
        return self.n

    def __iter__(self):
        return iter([self.batch] * self.n)


class _Logger:
    def info(self, message):
        pass


def _epoch_losses(finetune_eval_mode):
    paddle.seed(1)
    model = _Stochastic()
    images, labels = paddle.randn([4, 3, 8, 8]), paddle.to_tensor([0, 1, 2, 3])
    losses = []

    def criterion(outputs, targets):
        loss = paddle.nn.functional.cross_entropy(outputs, targets)
        losses.append(loss.item())
        return loss

    optimizer = paddle.optimizer.SGD(learning_rate=0.0, parameters=model.parameters())   # weights fixed
    state = TrainState(optimizer, WarmupCosine(0.0, 0.0, 0.0, 0, 10), criterion,
                       paddle.amp.GradScaler(enable=False), {'enable': False},
                       finetune_eval_mode=finetune_eval_mode)
    train_one_epoch(model, _Batches((images, labels), 3), state, 1, 1, _Logger(), report_freq=10)
    return losses


def test_train_one_epoch_honours_finetune_eval_mode():
    losses = _epoch_losses(True)
    assert len(losses) == 3 and losses[0] == losses[1] == losses[2]
    losses = _epoch_losses(False)
    assert len(set(losses)) > 1


def test_distilled_pit_and_vit_attention_dropout_in_eval_mode_finetuning():
    """Real models with every stochastic layer at 0.5: outputs repeat, each PiT head stays
    its own (the two heads, not their average), all parameters get gradients."""
    pit_opts = ['DATA.IMAGE_SIZE', '32', 'MODEL.BASE_DIMS', '[8, 8, 8]', 'MODEL.DEPTH', '[1, 1, 1]',
                'MODEL.NUM_HEADS', '[2, 2, 2]', 'MODEL.NUM_CLASSES', '5', 'MODEL.DROPOUT', '0.5',
                'MODEL.ATTENTION_DROPOUT', '0.5', 'MODEL.DROPPATH', '0.5']
    _, pit = build_from_config(os.path.join(REPO, 'image_classification', 'PiT', 'configs',
                                            'pit_b_distilled_384.yaml'), opts=pit_opts)
    vit_opts = ['DATA.IMAGE_SIZE', '32', 'MODEL.EMBED_DIM', '16', 'MODEL.DEPTH', '1', 'MODEL.NUM_HEADS', '2',
                'MODEL.MLP_DIM', '32', 'MODEL.NUM_CLASSES', '5', 'MODEL.DROPOUT', '0.5',
                'MODEL.ATTENTION_DROPOUT', '0.5', 'MODEL.DROPPATH', '0.5']
    _, vit = build_from_config(os.path.join(REPO, 'image_classification', 'ViT', 'configs',
                                            'vit_small_patch16_384.yaml'), opts=vit_opts)
    x = paddle.randn([2, 3, 32, 32])
    for model in (pit, vit):
        set_training_mode(model, finetune_eval_mode=False)
        a, b = _two_forwards(model, x)
        first = lambda out: out[0] if isinstance(out, tuple) else out   # noqa: E731
        assert not np.allclose(first(a).numpy(), first(b).numpy())
        set_training_mode(model, finetune_eval_mode=True)
        a, b = _two_forwards(model, x)
        np.testing.assert_array_equal(first(a).numpy(), first(b).numpy())
        loss = sum(out.sum() for out in a) if isinstance(a, tuple) else a.sum()
        loss.backward()
        for name, param in model.named_parameters():
            if not param.stop_gradient:
                assert param.grad is not None, name
    cls, dist = a if isinstance(a, tuple) else _two_forwards(pit, x)[0]
    pit.eval()
    assert not np.allclose(cls.numpy(), dist.numpy())
    np.testing.assert_allclose(pit(x).numpy(), ((cls + dist) / 2).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_pervit_position_encoding_keeps_learning_in_eval_mode_finetuning():
    """PerViT caches its position attention without gradients in eval mode; a whole-model
    model.eval() would freeze the PPE.  Here it still gets gradients, and BatchNorm is frozen."""
    family = load_family('PerViT')
    config = family.get_config(os.path.join(FIXTURES, 'pervit_mini', 'pervit_mini.yaml'),
                               opts=['MODEL.DROPPATH', '0.5', 'MODEL.DROPOUT', '0.5'])
    model = family.build_model(config)
    x = paddle.to_tensor(np.load(os.path.join(FIXTURES, 'pervit_mini', 'input.npy')))
    bn = [layer for layer in model.sublayers() if isinstance(layer, paddle.nn.BatchNorm2D)]
    assert bn
    stats = [layer._mean.numpy().copy() for layer in bn]
    set_training_mode(model, finetune_eval_mode=True)
    a, b = _two_forwards(model, x)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    a.sum().backward()
    for name, param in model.named_parameters():
        if not param.stop_gradient:
            assert param.grad is not None, name
    for layer, before in zip(bn, stats):
        np.testing.assert_array_equal(layer._mean.numpy(), before)


@pytest.mark.slow
def test_finetune_eval_mode_is_logged_with_a_warning_without_weights(tmp_path):
    data = make_dataset(tmp_path / 'data')
    out = tmp_path / 'run'
    main(tiny_config, build_tiny, argv=_argv(data, str(out), 'TRAIN.NUM_EPOCHS', '1',
                                             'TRAIN.FINETUNE_EVAL_MODE', 'True', 'TRAIN.MODEL_EMA', 'False'))
    log = open(out / 'log.txt').read()
    assert 'TRAIN.FINETUNE_EVAL_MODE: training with every layer in eval mode' in log
    assert 'WARNING: TRAIN.FINETUNE_EVAL_MODE is meant for fine-tuning' in log


# ---- the switches as each family's configs set them (the official values, README tables) -------

def _family_configs():
    root = os.path.join(REPO, 'image_classification')
    for family in ('PiT', 'ViT', 'PerViT', 'SPViT', 'VVT'):
        folder = os.path.join(root, family, 'configs')
        for name in sorted(os.listdir(folder)):
            if name.endswith('.yaml') and 'demo' not in name:
                yield family, name, load_family(family).get_config(os.path.join(folder, name))


def test_configs_carry_the_official_switches():
    deit_finetunes = {'pit_b_distilled_384.yaml', 'vit_tiny_patch16_384.yaml', 'vit_small_patch16_384.yaml'}
    seen = set()
    for family, name, c in _family_configs():
        seen.add(name)
        # SP-ViT / TLT loop over timm's epochs + cooldown_epochs (10); DeiT, PerViT, VVT do not
        assert c.TRAIN.COOLDOWN_EPOCHS == (10 if family == 'SPViT' else 0), name
        assert total_epochs(c) == c.TRAIN.NUM_EPOCHS + c.TRAIN.COOLDOWN_EPOCHS
        # DeiT (and VVT's copy of its main.py) fine-tune with model.train(False)
        assert c.TRAIN.FINETUNE_EVAL_MODE == (name in deit_finetunes), name
        # no official script scales the warmup-start or minimum LR with the batch
        assert c.TRAIN.LR_SCALING == 'base', name
        if name.startswith(('vit_tiny', 'vit_small', 'pit_')):   # DeiT's main.py: EMA on, 0.99996
            assert c.TRAIN.MODEL_EMA and c.TRAIN.MODEL_EMA_DECAY == 0.99996, name
    assert deit_finetunes <= seen and 'spvit_l_384.yaml' in seen
