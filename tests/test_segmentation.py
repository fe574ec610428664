"""semantic_segmentation/: neck, heads, inference modes, metrics, schedule, losses, weights, runs."""
import glob
import os
import re
import subprocess
import sys

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from conftest import REPO
from engine.weights import KeyMismatchError, load_checkpoint
from semantic_segmentation import backbone as seg_backbone
from semantic_segmentation.config import get_config
from semantic_segmentation.make_synthetic_dataset import make_sample
from semantic_segmentation.metrics import confusion_matrix, segmentation_metrics
from semantic_segmentation.schedule import PolyWarmup, poly_warmup_lr
from semantic_segmentation.segmentor import build_segmentor
from semantic_segmentation.train import execute

CONFIGS = os.path.join(REPO, 'semantic_segmentation', 'configs')
DEMO = os.path.join(CONFIGS, 'upernet_spvit_demo_shapes.yaml')


def _config(path=DEMO, *opts):
    return get_config(path, opts=list(opts))


@pytest.fixture(scope='module')
def demo_model():
    paddle.seed(0)
    model, _ = build_segmentor(_config())
    model.eval()
    return model


def _images(hw, batch=1, seed=0):
    return paddle.to_tensor(np.random.RandomState(seed).randn(batch, 3, *hw).astype('float32'))


@pytest.mark.parametrize('hw', [(96, 96), (64, 128), (72, 40)])
def test_neck_strides_and_channels(demo_model, hw):
    """Patch 8 (the demo) with scales 4, 2, 1, 1: strides 2 / 4 / 8 / 8, the last widened; any size."""
    neck = demo_model.neck
    assert neck.out_strides == [2, 4, 8, 8]
    assert neck.out_channels == [64, 64, 64, 128]
    with paddle.no_grad():
        outs = neck(demo_model.backbone(_images(hw)))
    for out, stride, channels in zip(outs, neck.out_strides, neck.out_channels):
        assert out.shape == [1, channels, hw[0] // 8 * 8 // stride, hw[1] // 8 * 8 // stride]
    with paddle.no_grad():
        assert demo_model.logits_at(_images(hw)).shape == [1, 4, *hw]


def test_full_size_upernet_lvvit_s_counts_the_official_44_45m():
    """The README's 44M: the official UperNet + LV-ViT-S has 44,452,076 parameters (LV-ViT's blocks:
    no PosConv; the SP-ViT-S one adds it after each of the 16 blocks, 16 x (384 x 9 + 384))."""
    model, removed = build_segmentor(_config(os.path.join(CONFIGS, 'upernet_lvvit_s_512x512_160k_ade20k.yaml')))
    assert removed == ['head', 'aux_head', 'norm']
    trainable = {k: int(np.prod(p.shape)) for k, p in model.named_parameters() if not p.stop_gradient}
    assert not any('.pos_block.' in k for k in trainable)
    assert sum(trainable.values()) == 44_452_076
    assert trainable['backbone.model.pos_embed'] == (1 + 32 * 32) * 384   # built for the 512 crop
    assert all(layer._epsilon == 1e-6 for layer in model.sublayers() if isinstance(layer, paddle.nn.LayerNorm))


def test_slide_equals_whole_when_one_window_covers_the_image(demo_model):
    for hw in [(96, 96), (80, 96)]:   # the crop (96) is the image, or larger than it
        x = _images(hw, seed=1)
        whole = demo_model.predict(x, mode='whole')
        slide = demo_model.predict(x, mode='slide', crop=96, stride=64)
        np.testing.assert_allclose(slide.numpy(), whole.numpy(), rtol=1e-5, atol=1e-6)


def test_slide_averages_overlapping_windows(demo_model):
    """A 96 x 160 image, crop 96, stride 64: windows at x = 0 and 64; columns 64-95 are their mean."""
    x = _images((96, 160), seed=2)
    slide = demo_model.infer_logits(x, mode='slide', crop=96, stride=64).numpy()
    with paddle.no_grad():
        left = demo_model.logits_at(x[:, :, :, :96]).numpy()
        right = demo_model.logits_at(x[:, :, :, 64:]).numpy()
    np.testing.assert_allclose(slide[..., :64], left[..., :64], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(slide[..., 64:96], (left[..., 64:] + right[..., :32]) / 2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(slide[..., 96:], right[..., 32:], rtol=1e-5, atol=1e-5)


def test_multi_scale_flip_averages_the_softmax_of_every_run(demo_model):
    x = _images((48, 64), seed=3)
    img_scale = [128, 96]                      # 48 x 64 -> 96 x 128 at ratio 1
    probs = demo_model.predict(x, mode='whole', scales=[0.5, 1.0], flip=True, img_scale=img_scale)
    expected = 0
    with paddle.no_grad():
        for size in [(48, 64), (96, 128)]:
            scaled = F.interpolate(x, size=list(size), mode='bilinear', align_corners=False)
            for flip in (False, True):
                logits = demo_model.logits_at(paddle.flip(scaled, [3]) if flip else scaled)
                logits = paddle.flip(logits, [3]) if flip else logits
                logits = F.interpolate(logits, size=[48, 64], mode='bilinear', align_corners=False)
                expected = expected + F.softmax(logits, axis=1).numpy() / 4
    np.testing.assert_allclose(probs.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs.numpy().sum(1), 1.0, rtol=1e-5)


def test_metrics_against_a_per_class_reference():
    """IoU / Acc / aAcc by explicit masks; 255 ignored; class 3 absent from labels and predictions
    (NaN, out of the mean); class 4 predicted but absent from the labels (IoU 0, Acc NaN)."""
    rng = np.random.RandomState(0)
    label = rng.choice([0, 1, 2, 255], size=(40, 50), p=[0.4, 0.3, 0.2, 0.1])
    pred = np.where(rng.rand(40, 50) < 0.7, np.where(label == 255, 0, label), rng.choice([0, 1, 2, 4], (40, 50)))
    m = segmentation_metrics(confusion_matrix(pred, label, 5))
    valid = label != 255
    iou, acc = [], []
    for c in range(5):
        inter = np.sum((pred == c) & (label == c) & valid)
        union = np.sum(((pred == c) | (label == c)) & valid)
        iou.append(inter / union if union else np.nan)
        acc.append(inter / np.sum((label == c) & valid) if np.sum((label == c) & valid) else np.nan)
    np.testing.assert_allclose(m['IoU'], iou)
    np.testing.assert_allclose(m['Acc'], acc)
    assert np.isnan(m['IoU'][3]) and m['IoU'][4] == 0
    assert m['mIoU'] == pytest.approx(np.mean([iou[0], iou[1], iou[2], iou[4]]))
    assert m['aAcc'] == pytest.approx(np.sum((pred == label) & valid) / valid.sum())


def test_poly_warmup_against_its_closed_form():
    base, total, warmup, ratio = 6e-5, 1000, 150, 1e-6
    scheduler = PolyWarmup(base, total, warmup, ratio, power=1.0, min_lr=0.0)
    seen = []
    for _ in range(total):
        seen.append(scheduler())
        scheduler.step()
    for t in [0, 1, 75, 149, 150, 151, 500, 999]:
        poly = base * (1 - t / total)
        expected = poly * (ratio + (1 - ratio) * t / warmup) if t < warmup else poly
        assert seen[t] == pytest.approx(expected, rel=1e-9), t
    assert seen[0] == pytest.approx(base * ratio) and max(seen) == seen[warmup]


def test_aux_loss_is_weighted_and_added():
    paddle.seed(0)
    model, _ = build_segmentor(_config(DEMO, 'SEG.AUX.LOSS_WEIGHT', '0.4'))
    model.eval()   # deterministic (no dropout); losses() does not depend on the mode
    x = _images((96, 96), batch=2, seed=4)
    labels = paddle.to_tensor(np.random.RandomState(5).choice([0, 1, 2, 3, 255], (2, 96, 96)).astype('int64'))
    with paddle.no_grad():
        features = model.neck(model.backbone(x))
        logits, aux_logits = model.decode_head(features), model.auxiliary_head(features[2])
        losses = model.losses((logits, aux_logits), labels)

    def ce(logits):   # numpy pixel cross-entropy at the label size, ignore 255
        up = F.interpolate(logits, size=[96, 96], mode='bilinear', align_corners=False).numpy()
        logp = up - np.log(np.exp(up).sum(1, keepdims=True))
        lab = labels.numpy()
        valid = lab != 255
        picked = np.take_along_axis(logp, np.where(valid, lab, 0)[:, None], axis=1)[:, 0]
        return -picked[valid].mean()
    assert losses['decode'].item() == pytest.approx(ce(logits), rel=1e-4)
    assert losses['aux'].item() == pytest.approx(0.4 * ce(aux_logits), rel=1e-4)
    assert losses['total'].item() == pytest.approx(losses['decode'].item() + losses['aux'].item(), rel=1e-6)


def test_classification_weights_load_strictly_on_backbone_keys(tmp_path):
    """A classification checkpoint of the same family at 224: heads and final norm left over (named),
    position embedding resized to the crop's grid, every backbone key loaded; a missing key refused."""
    from engine.families import load_family
    cls_config = get_config(DEMO, opts=['DATA.IMAGE_SIZE', '64'])
    classifier = load_family('SPViT').build_model(cls_config)
    path = str(tmp_path / 'cls.pdparams')
    paddle.save(classifier.state_dict(), path)
    model, removed = build_segmentor(_config())
    logged = []
    seg_backbone.load_backbone_weights(model.backbone, load_checkpoint(path), removed, path, log=logged.append)
    loaded = model.backbone.model.state_dict()
    np.testing.assert_array_equal(loaded['blocks.3.mlp.fc1.weight'].numpy(),
                                  classifier.state_dict()['blocks.3.mlp.fc1.weight'].numpy())
    assert loaded['pos_embed'].shape == [1, 12 * 12, 64]
    assert any('pos_embed resized' in line for line in logged)
    assert any('not used' in line and 'head.weight' in line and 'norm.weight' in line for line in logged)
    state = classifier.state_dict()
    del state['blocks.0.attn.w1.weight']
    paddle.save(state, path)
    with pytest.raises(KeyMismatchError, match='blocks.0.attn.w1.weight'):
        seg_backbone.load_backbone_weights(model.backbone, load_checkpoint(path), removed, path)


def test_spatial_prior_on_any_grid_is_the_official_dense_formula(demo_model):
    """SP-ViT's prior on a 3 x 5 grid (not the built 12 x 12) equals w2 . relu(W1 [dx, dy] + b1) + b2
    evaluated on every query-key pair, the official N x N x dim way."""
    attn = demo_model.backbone.model.blocks[0].attn
    paddle.seed(1)
    for p in (attn.w1.weight, attn.w1.bias, attn.w2, attn.b2):
        p.set_value(paddle.randn(p.shape))
    rows, cols = np.meshgrid(np.arange(3), np.arange(5), indexing='ij')
    pos = np.stack([cols.ravel(), rows.ravel()], 1).astype('float32')      # (x, y) per patch
    offsets = pos[None, :, :] - pos[:, None, :]                              # [N, N, 2]: key - query
    w1, b1 = attn.w1.weight.numpy(), attn.w1.bias.numpy()
    feats = np.maximum(offsets @ w1 + b1, 0).reshape(15, 15, attn.num_heads, attn.head_dim)
    dense = (feats * attn.w2.numpy().reshape(attn.num_heads, attn.head_dim)).sum(-1) + attn.b2.numpy()
    with paddle.no_grad():
        prior = attn.spatial_prior((3, 5)).numpy()
    np.testing.assert_allclose(prior, dense.transpose(2, 0, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_seeded_short_overfit():
    """25 steps on one batch of 2 synthetic 64 x 64 scenes: the loss falls below a third, most pixels right."""
    paddle.seed(0)
    model, _ = build_segmentor(_config(DEMO, 'MODEL.DROPPATH', '0.0', 'SEG.DECODE.DROPOUT', '0.0',
                                       'SEG.AUX.DROPOUT', '0.0'))
    rng = np.random.RandomState(0)
    samples = [make_sample(rng) for _ in range(2)]
    x = paddle.to_tensor(np.stack([(s[0][16:80, 16:80].astype('float32') / 255 - 0.5).transpose(2, 0, 1)
                                   for s in samples]))
    y = paddle.to_tensor(np.stack([s[1][16:80, 16:80].astype('int64') - 1 for s in samples]).clip(0, 3))
    opt = paddle.optimizer.AdamW(3e-3, parameters=model.parameters(), weight_decay=0.0)
    first = None
    model.train()
    for _ in range(25):
        loss = model.losses(model(x), y)['total']
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
        opt.clear_grad()
    model.eval()
    with paddle.no_grad():
        acc = (model.logits_at(x).argmax(1) == y).astype('float32').mean().item()
    assert loss.item() < first / 3 and acc > 0.8, (first, loss.item(), acc)


def _write_set(root, train=8, val=4):
    subprocess.run([sys.executable, os.path.join(REPO, 'semantic_segmentation', 'make_synthetic_dataset.py'),
                    '--out', root, '--train', str(train), '--val', str(val)], check=True, capture_output=True)


@pytest.mark.slow
def test_two_process_training_checkpoint_resume_and_eval(tmp_path):
    """4 iterations on 2 CPU processes (paddle.distributed.launch), checkpoints at 2 and 4; -eval of
    the last checkpoint reproduces the mIoU the run logged; -resume from iteration 2 continues to 4."""
    data, out = str(tmp_path / 'data'), str(tmp_path / 'run')
    _write_set(data)
    opts = ['-opts', 'SEG.TRAIN.MAX_ITERS', '4', 'SEG.TRAIN.WARMUP_ITERS', '1', 'SEG.TRAIN.CHECKPOINT_INTERVAL',
            '2', 'SEG.TRAIN.EVAL_INTERVAL', '4', 'REPORT_FREQ', '1', 'DATA.BATCH_SIZE', '2', 'DATA.NUM_WORKERS', '0']
    run = subprocess.run(
        [sys.executable, '-m', 'paddle.distributed.launch', '--nproc_per_node', '2', '--log_dir',
         str(tmp_path / 'launch'), os.path.join(REPO, 'semantic_segmentation', 'main_multi_gpu.py'),
         '-cfg', DEMO, '-data_path', data, '-output', out] + opts,
        capture_output=True, text=True, timeout=240, env=dict(os.environ, GLOG_minloglevel='2'))
    log = open(os.path.join(out, 'log.txt')).read()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert 'process 0/2' in log
    logged = float(re.findall(r'Iter\[4/4\], Validation mIoU: ([0-9.]+)', log)[-1])
    assert open(os.path.join(out, 'latest.txt')).read().strip() == 'upernet_spvit_demo_shapes-Iter-4'
    assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(out, '*Iter-*.pdopt'))) == \
        ['upernet_spvit_demo_shapes-Iter-2.pdopt', 'upernet_spvit_demo_shapes-Iter-4.pdopt']

    metrics = execute(argv=['-cfg', DEMO, '-data_path', data, '-eval', '-output', str(tmp_path / 'eval'),
                            '-pretrained', os.path.join(out, 'upernet_spvit_demo_shapes-Iter-4')])
    assert metrics['mIoU'] == pytest.approx(logged, abs=5e-5)

    execute(argv=['-cfg', DEMO, '-data_path', data, '-output', out, '-resume',
                  os.path.join(out, 'upernet_spvit_demo_shapes-Iter-2')] + opts)
    log = open(os.path.join(out, 'log.txt')).read()
    assert f'2 iterations done, next lr {poly_warmup_lr(2, 1e-3, 4, 1, 1e-6):.6e}' in log
    assert log.count('Iter[4/4], Validation mIoU') == 2


def test_config_errors_name_the_key_and_the_rule(tmp_path):
    from engine.config import ConfigError
    with pytest.raises(ConfigError, match='SEG.TEST.STRIDE = 200 .*-opts.*must not exceed the crop'):
        _config(DEMO, 'SEG.TEST.STRIDE', '200')
    with pytest.raises(ConfigError, match=r"SEG.NECK.SCALES = \[4, 2, 3, 1\].*must be"):
        _config(DEMO, 'SEG.NECK.SCALES', '[4, 2, 3, 1]')
    bare = tmp_path / 'bare.yaml'
    bare.write_text('SEG:\n  NUM_CLASSES: 3\n')
    with pytest.raises(ConfigError, match='must set MODEL.TYPE'):
        get_config(str(bare))


def test_reduce_zero_label_and_the_training_transform():
    from semantic_segmentation.ade20k import reduce_zero_label
    from semantic_segmentation.transforms import TrainTransform, rescale_size
    np.testing.assert_array_equal(reduce_zero_label(np.array([0, 1, 2, 150, 255], np.uint8)), [255, 0, 1, 149, 255])
    assert rescale_size((480, 640), (2048, 512)) == (512, 683)        # the short side bounds
    assert rescale_size((300, 2000), (2048, 512)) == (307, 2048)      # the long side bounds
    image, label = make_sample(np.random.RandomState(1))
    label = reduce_zero_label(label)
    transform = TrainTransform(112, [128, 96], [1.0, 1.0], 0.75, 0.0, True, [0.5] * 3, [0.25] * 3)
    x, y = transform(image, label, np.random.RandomState(0))
    assert x.shape == (3, 112, 112) and x.dtype == np.float32 and y.shape == (112, 112)
    # 96 x 128 at ratio 1 stays 96 x 128: rows 96-111 are padding (image 0, label ignored)
    assert (y[96:] == 255).all() and (x[:, 96:] == 0).all()
    assert set(np.unique(y[:96])) <= {0, 1, 2, 3, 255}
