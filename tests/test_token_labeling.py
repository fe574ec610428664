"""Token Labeling (engine/token_labeling.py, tools/generate_label.py) on a tiny generated dataset.

The proof asked for: label maps are generated with `generate_label_maps`, read
back through the label-aware transforms (a horizontally flipped image gets
exactly flipped label maps and mirrored token targets; the label crop is the
image crop, not its transpose; RandAugment's geometric ops move the maps with
the image), a training step uses them (finite loss, gradients reach every part),
and MixToken's mixed targets follow the mixed tokens (the class-target mass from
image B equals the share of token area pasted from B).
"""
import os
import sys

import numpy as np
import paddle
import pytest
from PIL import Image

from engine.data import DataError
from engine.data.transforms import EvalTransform
from engine.families import load_family
from engine.token_labeling import (DenseOutput, LabelMap, LabelRandAugment, MixToken, TokenLabelCrossEntropy,
                                   TokenLabelDataset, TokenLabelMixup, TokenLabelTargets, TokenLabelTransform,
                                   affine_label_map, geometric_op_matrix, hflip_label_map, load_label_map,
                                   one_hot_targets, save_label_map, soft_cross_entropy, token_label_targets)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'tools'))
from generate_label import LabelSourceDataset, dense_logits, eval_region, generate_label_maps  # noqa: E402

FIXTURES = os.path.join(REPO, 'tests', 'fixtures')
S224 = os.path.join(REPO, 'image_classification', 'SPViT', 'configs', 'spvit_s_224.yaml')
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
COLORS = [(220, 40, 40), (40, 200, 40), (40, 60, 220)]
TINY = ['DATA.IMAGE_SIZE', '64', 'MODEL.EMBED_DIM', '24', 'MODEL.DEPTH', '2', 'MODEL.NUM_HEADS', '2',
        'MODEL.LOCAL_UP_TO_LAYER', '1', 'MODEL.NUM_CLASSES', '3', 'MODEL.DROPPATH', '0.0',
        'DATA.NUM_WORKERS', '0', 'DATA.CROP_PCT', '0.875']


def make_dataset(root, count=8, width=96, height=80):
    """Non-square images: a coloured rectangle (class = colour) on noise; PaddleViT lists."""
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        lines = []
        for i in range(count):
            label = i % len(COLORS)
            img = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
            y, x = rng.integers(0, height // 2), rng.integers(0, width // 2)
            img[y:y + height // 2, x:x + width // 2] = COLORS[label]
            rel = f'{split}/c{label}/{i}.png'
            os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
            Image.fromarray(img).save(os.path.join(root, rel))
            lines.append(f'{rel} {label}')
        with open(os.path.join(root, f'{split}_list.txt'), 'w') as f:
            f.write('\n'.join(lines) + '\n')
    return str(root)


@pytest.fixture(scope='module')
def spvit():
    family = load_family('SPViT')
    config = family.get_config(S224, opts=TINY)
    paddle.seed(0)
    return family, config, family.build_model(config)


@pytest.fixture(scope='module')
def labelled(tmp_path_factory, spvit):
    """A tiny dataset and its label maps, made by generate_label_maps with a tiny SP-ViT."""
    _, config, model = spvit
    root = make_dataset(str(tmp_path_factory.mktemp('data')))
    labels = str(tmp_path_factory.mktemp('labels'))
    data = config.DATA
    source = LabelSourceDataset(root, os.path.join(root, 'train_list.txt'), 3,
                                EvalTransform(data.IMAGE_SIZE, data.CROP_PCT, MEAN, STD, 'bicubic'))
    written, _top1 = generate_label_maps(model, source, labels, data.IMAGE_SIZE, data.CROP_PCT, topk=3,
                                         batch_size=4, log=lambda m: None)
    assert written == 8
    return root, labels, source


def test_generated_label_maps_hold_the_models_top_k(labelled, spvit):
    root, labels, source = labelled
    _, config, model = spvit
    model.eval()
    image, _index, width, height = source[5]
    with paddle.no_grad():
        logits = dense_logits(model, paddle.to_tensor(image[None]))[0].numpy()      # [4, 4, 3]
    label_map = load_label_map(os.path.join(labels, 'train', 'c2', '5.npz'))
    assert label_map.scores.shape == (3, 4, 4)
    order = np.argsort(-logits, axis=-1).transpose(2, 0, 1)
    np.testing.assert_array_equal(label_map.indices, order)
    np.testing.assert_allclose(label_map.scores, np.sort(logits, -1)[..., ::-1].transpose(2, 0, 1), atol=2e-3)
    # the eval crop of a 96x80 image at 64 / 0.875: short side 73 -> 87x73, centre 64x64
    assert label_map.region == pytest.approx(eval_region(96, 80, 64, 0.875))
    assert label_map.region == pytest.approx((4 / 73, 12 / 87, 64 / 73, 64 / 87))
    with paddle.no_grad():
        cls, aux = model.forward_dense(paddle.to_tensor(image[None]))
    np.testing.assert_allclose(logits.reshape(16, 3), aux[0].numpy(), atol=1e-6)


def test_label_map_files_round_trip_and_official_pt(tmp_path):
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((5, 3, 4)).astype(np.float32)
    indices = rng.integers(0, 1000, (5, 3, 4))
    save_label_map(str(tmp_path / 'a' / 'x.npz'), scores, indices, (0.1, 0.2, 0.8, 0.6))
    back = load_label_map(str(tmp_path / 'a' / 'x.npz'))
    np.testing.assert_array_equal(back.indices, indices)
    np.testing.assert_allclose(back.scores, scores, atol=4e-3)     # stored as float16, as the official files
    assert back.region == pytest.approx((0.1, 0.2, 0.8, 0.6))
    # an official TokenLabeling file: torch.save of a [2, k, H, W] half tensor, read without torch
    expected = np.load(os.path.join(FIXTURES, 'spvit_mini', 'official_label_map_expected.npz'))
    pt = os.path.join(FIXTURES, 'spvit_mini', 'official_label_map.pt')
    official = load_label_map(pt, image_size=(200, 100))
    np.testing.assert_array_equal(official.scores, expected['scores'])
    np.testing.assert_array_equal(official.indices, expected['indices'])
    assert official.region == pytest.approx((0.0, 0.25, 1.0, 0.5))          # the centre square
    assert load_label_map(pt, (200, 100), 'full_image').region == (0.0, 0.0, 1.0, 1.0)


def test_flipped_image_gets_flipped_label_maps_and_mirrored_targets(labelled):
    root, labels, _ = labelled
    transform = TokenLabelTransform(64, MEAN, STD, rand_augment=False, color_jitter=0.0, random_erase_prob=0.0)
    dataset = TokenLabelDataset(root, os.path.join(root, 'train_list.txt'), 3, labels, transform)
    sample = dataset.load(3)                                        # 96 x 80 image + its label map
    assert sample.image.shape == (80, 96, 3)
    crop = (5, 10, 64, 64)                                          # top, left, h, w: no resize
    mirrored = (5, 96 - 10 - 64, 64, 64)
    rng = np.random.default_rng(0)
    x0, m0 = transform.apply(sample.image, sample.label_map, rng, flip=False, crop=crop)
    x1, m1 = transform.apply(sample.image, sample.label_map, rng, flip=True, crop=mirrored)
    np.testing.assert_array_equal(x1, x0[:, :, ::-1])               # the image, exactly flipped
    np.testing.assert_array_equal(m1['scores'], m0['scores'][:, :, ::-1])   # and its label map
    np.testing.assert_array_equal(m1['indices'], m0['indices'][:, :, ::-1])
    x1_, y1_, x2_, y2_ = m0['box']
    np.testing.assert_allclose(m1['box'], [1 - x2_, y1_, 1 - x1_, y2_], atol=1e-6)

    def targets(m):
        return token_label_targets(paddle.to_tensor(m['scores'][None]), paddle.to_tensor(m['indices'][None]),
                                   paddle.to_tensor(m['box'][None]), num_classes=3, label_size=4, smoothing=0.1)
    t0, t1 = targets(m0), targets(m1)
    dense0, dense1 = t0.dense.numpy().reshape(4, 4, 3), t1.dense.numpy().reshape(4, 4, 3)
    np.testing.assert_allclose(dense1, dense0[:, ::-1], atol=1e-6)  # tokens mirrored, row by row
    np.testing.assert_allclose(t1.cls.numpy(), t0.cls.numpy(), atol=1e-6)
    assert np.abs(dense0 - dense0[:, ::-1]).max() > 1e-3            # not trivially symmetric

    image, (label, maps) = dataset[(3, 123)]                        # a dataset item, seeded
    assert image.shape == (3, 64, 64) and label == 0 and set(maps) == {'scores', 'indices', 'box'}


def test_label_crop_is_the_image_crop_not_its_transpose():
    """Class = column of an 8x8 map over the whole image: a crop of the left half must only
    see the classes of the left columns (the official RoIAlign box would take rows instead)."""
    cols = np.tile(np.arange(8), (8, 1))
    label_map = LabelMap(np.full((1, 8, 8), 20.0, np.float32), cols[None].astype(np.int64))
    transform = TokenLabelTransform(32, MEAN, STD, rand_augment=False, color_jitter=0.0, random_erase_prob=0.0)
    image = np.zeros((64, 128, 3), np.uint8)                       # wide: 128 x 64
    _, maps = transform.apply(image, label_map, np.random.default_rng(0), crop=(0, 0, 64, 64))
    np.testing.assert_allclose(maps['box'], [0, 0, 0.5, 1])
    t = token_label_targets(paddle.to_tensor(maps['scores'][None]), paddle.to_tensor(maps['indices'][None]),
                            paddle.to_tensor(maps['box'][None]), num_classes=8, label_size=4)
    winners = t.dense.numpy()[0].argmax(-1).reshape(4, 4)
    np.testing.assert_array_equal(winners, np.tile([0, 1, 2, 3], (4, 1)))


def test_targets_of_a_full_box_are_the_softmaxed_label_map():
    rng = np.random.default_rng(2)
    scores = rng.standard_normal((2, 3, 4, 4)).astype(np.float32) * 3
    indices = np.stack([rng.permutation(6)[:3] for _ in range(32)], -1).reshape(3, 2, 4, 4).transpose(1, 0, 2, 3)
    boxes = np.tile(np.array([[0, 0, 1, 1]], np.float32), (2, 1))
    t = token_label_targets(paddle.to_tensor(scores), paddle.to_tensor(indices.copy()), paddle.to_tensor(boxes),
                            num_classes=6, label_size=4, smoothing=0.0)
    dense = np.zeros((2, 6, 4, 4), np.float32)
    np.put_along_axis(dense, indices, scores, axis=1)                   # zeros off the top-k, as official
    expected = np.exp(dense) / np.exp(dense).sum(1, keepdims=True)
    np.testing.assert_allclose(t.dense.numpy(), expected.reshape(2, 6, 16).transpose(0, 2, 1), atol=1e-6)


@pytest.mark.parametrize('name,arg', [('Rotate', 21.0), ('ShearX', -0.25), ('ShearY', 0.2),
                                      ('TranslateXRel', 0.3), ('TranslateYRel', -0.2)])
def test_geometric_augment_moves_the_label_map_like_the_image(name, arg):
    """A label map with one cell per pixel and the image's own values as scores: the op on the
    image (nearest) and on the map must agree (boundary ties aside)."""
    import cv2
    from engine.data.autoaugment import OPS
    rng = np.random.default_rng(3)
    blocks = rng.integers(1, 250, (12, 10)).astype(np.uint8)
    image = np.repeat(np.repeat(blocks, 6, 0), 6, 1)                     # 72 x 60, 6-px blocks
    rgb = np.repeat(image[:, :, None], 3, 2)
    op, _ = OPS[name]
    moved = op(rgb, arg, ((0, 0, 0), cv2.INTER_NEAREST))[:, :, 0].astype(np.float32)
    label_map = LabelMap(image[None].astype(np.float32), np.zeros((1, 72, 60), np.int64))
    matrix = geometric_op_matrix(name, arg, 60, 72)
    mapped = affine_label_map(label_map, matrix, (60, 72)).scores[0]
    assert (mapped == moved).mean() > 0.97
    wrong = affine_label_map(label_map, geometric_op_matrix(name, -arg, 60, 72), (60, 72)).scores[0]
    assert (wrong == moved).mean() < 0.8                                 # the test can tell


def test_label_rand_augment_applies_the_same_ops_to_the_map():
    aug = LabelRandAugment(num_layers=2, magnitude=9, prob=1.0, fill=(0, 0, 0), interpolation='nearest')
    aug.names = ('Rotate', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')     # geometric ops only
    rng = np.random.default_rng(4)
    blocks = rng.integers(1, 250, (8, 8)).astype(np.uint8)
    image = np.repeat(np.repeat(blocks, 8, 0), 8, 1)
    label_map = LabelMap(image[None].astype(np.float32), np.zeros((1, 64, 64), np.int64))
    for seed in range(6):
        out, moved = aug.augment(np.repeat(image[:, :, None], 3, 2), label_map, np.random.default_rng(seed))
        assert len(aug.applied) == 2
        assert (moved.scores[0] == out[:, :, 0]).mean() > 0.95
        assert (moved.scores[0] == image).mean() < 0.95             # the map did move


def test_mixtoken_targets_follow_the_mixed_tokens():
    grid, batch, classes = (6, 6), 4, 4
    n = grid[0] * grid[1]
    np.random.seed(0)
    mixer = MixToken(beta=1.0)
    box = mixer.sample(grid)
    while not 0 < box.area() < n:
        box = mixer.sample(grid)
    marker = paddle.arange(batch, dtype='float32').reshape([batch, 1, 1, 1]).expand([batch, 1, *grid])
    mixed = MixToken.mix(marker, box).numpy()[:, 0]                       # which image each token is from
    labels = paddle.arange(batch)
    targets = TokenLabelTargets(one_hot_targets(labels, classes),
                                one_hot_targets(labels, classes).unsqueeze(1).expand([batch, n, classes]))
    cls = TokenLabelCrossEntropy.class_target(targets.cls, box, n).numpy()
    for i in range(batch):
        partner = batch - 1 - i
        from_partner = (mixed[i] == partner).mean()
        assert from_partner == box.area() / n
        assert cls[i, partner] == pytest.approx(from_partner) and cls[i, i] == pytest.approx(1 - from_partner)
    # per-token targets of the mixed batch: the label maps cut the same way as the tokens
    mixed_dense = MixToken.mix_tokens(targets.dense, grid, box).numpy()
    np.testing.assert_array_equal(mixed_dense.argmax(-1), mixed.reshape(batch, n))
    # the loss on un-mixed predictions (the model's) equals the loss on mixed ones vs mixed targets
    logits = paddle.randn([batch, n, classes])
    cls_logits = paddle.randn([batch, classes])
    loss = TokenLabelCrossEntropy(1.0, 0.0)(DenseOutput(cls_logits, MixToken.unmix_tokens(logits, grid, box), box),
                                            targets)
    direct = soft_cross_entropy(logits.reshape([-1, classes]), MixToken.mix_tokens(targets.dense, grid, box)
                                .reshape([-1, classes]))
    assert loss.item() == pytest.approx(direct.item(), rel=1e-6)


def test_model_mixes_patch_tokens_and_restores_token_predictions(spvit):
    _, _, model = spvit
    model.train()
    x = paddle.randn([4, 3, 64, 64])
    np.random.seed(5)
    out = model(x)
    assert out.box is not None and tuple(out.box) != (0, 0, 0, 0)
    embedded = model.patch_embed(x)                       # batch statistics: the same as in the forward
    tokens = model.forward_tokens(MixToken.mix(embedded, out.box).flatten(2).transpose([0, 2, 1]))
    expected = MixToken.unmix_tokens(model.aux_head(tokens[:, 1:]), model.grid, out.box)
    np.testing.assert_allclose(out.aux_logits.numpy(), expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(out.cls_logits.numpy(), model.head(tokens[:, 0]).numpy(), atol=1e-5)


def test_training_step_uses_the_label_maps(labelled, spvit):
    root, labels, _ = labelled
    family, config, _ = spvit
    from engine.data import build_dataloader
    config = family.get_config(S224, opts=TINY + ['DATA.DATA_PATH', root, 'DATA.BATCH_SIZE', '4'])
    paddle.seed(1)
    model = family.build_model(config)
    from engine.token_labeling import build_token_label_dataset
    dataset = build_token_label_dataset(config, labels)
    images, targets = next(iter(build_dataloader(config, dataset, 'train', distributed=False)))
    assert isinstance(targets, list) and targets[1]['scores'].shape == [4, 3, 4, 4]
    images, soft = TokenLabelMixup.from_config(config, 4)(images, targets)
    assert soft.dense.shape == [4, 16, 3]
    model.train()
    np.random.seed(0)
    out = model(images)
    loss = TokenLabelCrossEntropy(1.0, 1.0)(out, soft)
    assert np.isfinite(loss.item())
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if not p.stop_gradient}
    # (the prior MLP's w1 gets no gradient before its output weights w2 leave their zero init, as officially)
    for name in ('patch_embed.conv1.weight', 'blocks.0.attn.qk.weight', 'blocks.0.attn.w2', 'blocks.0.attn.b2',
                 'blocks.1.attn.qkv.weight', 'head.weight', 'aux_head.weight', 'pos_embed', 'cls_token'):
        assert grads[name] is not None and float(grads[name].abs().sum()) > 0, name
    # the dense part really depends on the label maps: other maps, another loss
    other = TokenLabelTargets(soft.cls, soft.dense.flip([1]))
    assert abs(TokenLabelCrossEntropy(1.0, 0.0)(out, other).item()
               - TokenLabelCrossEntropy(1.0, 0.0)(out, soft).item()) > 1e-4


def test_missing_label_map_is_reported(labelled, tmp_path):
    root, labels, _ = labelled
    import shutil
    partial = tmp_path / 'labels'
    shutil.copytree(labels, partial)
    os.remove(partial / 'train' / 'c1' / '4.npz')
    transform = TokenLabelTransform(64, MEAN, STD)
    with pytest.raises(DataError, match=r'4\.npz'):
        TokenLabelDataset(root, os.path.join(root, 'train_list.txt'), 3, str(partial), transform)


def test_cutmix_mixes_targets_by_the_pasted_area():
    from engine.data.mixup import Mixup
    mix = TokenLabelMixup(3, 2, smoothing=0.0, mixup=Mixup(3, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0))
    images = paddle.arange(2, dtype='float32').reshape([2, 1, 1, 1]).expand([2, 3, 20, 20])
    maps = {'scores': paddle.full([2, 1, 2, 2], 30.0),
            'indices': paddle.to_tensor([[[[0, 0], [0, 0]]], [[[2, 2], [2, 2]]]]),
            'box': paddle.to_tensor([[0., 0., 1., 1.]] * 2)}
    np.random.seed(0)
    mixed, t = mix(images, [paddle.to_tensor([0, 2]), maps])
    pasted = float((mixed.numpy()[0] == 1).mean())
    assert 0 < pasted < 1
    assert t.cls.numpy()[0, 2] == pytest.approx(pasted, abs=1e-4)
    assert t.dense.numpy()[0, :, 2] == pytest.approx(np.full(4, pasted), abs=1e-4)


@pytest.mark.parametrize('mixup_alpha, cutmix_alpha', [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_token_label_mixup_draws_as_the_classification_mixup(mixup_alpha, cutmix_alpha):
    """One seed, one draw: the images and class targets of TokenLabelMixup are those of Mixup,
    and its token targets are mixed by the same lam."""
    from engine.data.mixup import Mixup
    mixup = Mixup(5, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, label_smoothing=0.1)
    token_mixup = TokenLabelMixup(5, 2, smoothing=0.1, mixup=mixup)
    images = paddle.rand([4, 3, 16, 16])
    labels = paddle.to_tensor([0, 1, 2, 4])
    maps = {'scores': paddle.rand([4, 2, 2, 2]) * 10, 'indices': paddle.randint(0, 5, [4, 2, 2, 2]),
            'box': paddle.to_tensor([[0., 0., 1., 1.]] * 4)}
    plain = token_mixup.targets([labels, maps])
    mixed_any = 0
    for seed in range(8):
        np.random.seed(seed)
        mixed, targets = mixup(images, labels)
        np.random.seed(seed)
        token_mixed, token_targets = token_mixup(images, labels)
        np.testing.assert_array_equal(token_mixed.numpy(), mixed.numpy())
        np.testing.assert_array_equal(token_targets.cls.numpy(), targets.numpy())
        np.random.seed(seed)
        lam, _box = mixup.draw_batch(16, 16)
        np.random.seed(seed)
        _, dense_targets = token_mixup(images, [labels, maps])
        expected = plain.dense.numpy() * lam + plain.dense.numpy()[::-1] * (1 - lam)
        np.testing.assert_allclose(dense_targets.dense.numpy(), expected, rtol=1e-6, atol=1e-7)
        mixed_any += not np.array_equal(mixed.numpy(), images.numpy())
    assert mixed_any >= 4


@pytest.mark.slow
def test_launcher_trains_with_and_without_token_labels(labelled, tmp_path):
    root, labels, _ = labelled
    family = load_family('SPViT')
    sys.path.insert(0, os.path.join(REPO, 'image_classification', 'SPViT'))
    from hooks import SPViTHooks
    from engine.launcher import main
    hooks = SPViTHooks()
    config = family.get_config(S224, opts=TINY + ['DATA.DATA_PATH', root, 'TRAIN.TOKEN_LABEL.DATA_DIR', labels])
    assert isinstance(hooks.build_dataset(config, 'train'), TokenLabelDataset)
    assert hooks.build_dataset(config, 'val') is None
    common = ['-cfg', S224, '-data_path', root, '-batch_size', '4', '-opts', *TINY,
              'TRAIN.NUM_EPOCHS', '1', 'TRAIN.COOLDOWN_EPOCHS', '0', 'TRAIN.WARMUP_EPOCHS', '0', 'TRAIN.MODEL_EMA', 'False', 'REPORT_FREQ', '1']
    with_labels = main(family.get_config, family.build_model, hooks=hooks,
                       argv=['-output', str(tmp_path / 'tl'), '-token_label_dir', labels] + common)
    assert np.isfinite(with_labels['train_loss']) and with_labels['epoch'] == 1
    plain = main(family.get_config, family.build_model, hooks=hooks,
                 argv=['-output', str(tmp_path / 'ce')] + common + ['TRAIN.TOKEN_LABEL.ENABLE', 'False'])
    assert np.isfinite(plain['train_loss']) and plain['epoch'] == 1


def test_dense_logits_of_a_cnn_pool_to_its_logits():
    """RegNet qualifies for label generation: its per-position logits average to its output."""
    family = load_family('RegNet')
    config = family.get_config(opts=['MODEL.W0', '8', 'MODEL.WA', '8.0', 'MODEL.WM', '2.0', 'MODEL.DEPTH', '3',
                                     'MODEL.GROUP_W', '8', 'MODEL.STEM_WIDTH', '8', 'MODEL.NUM_CLASSES', '5'])
    model = family.build_model(config)
    model.eval()
    x = paddle.randn([2, 3, 64, 64])
    with paddle.no_grad():
        dense = dense_logits(model, x)
        logits = model(x)
    assert dense.shape[0] == 2 and dense.shape[-1] == 5 and dense.shape[1] == dense.shape[2] > 1
    np.testing.assert_allclose(dense.mean(axis=[1, 2]).numpy(), logits.numpy(), atol=1e-5)


def test_hflip_label_map_mirrors_the_region():
    lm = LabelMap(np.zeros((1, 2, 3), np.float32), np.zeros((1, 2, 3), np.int64), (0.1, 0.2, 0.5, 0.3))
    assert hflip_label_map(lm).region == pytest.approx((0.1, 0.5, 0.5, 0.3))


def test_official_layout_of_pt_label_maps_is_found(labelled, tmp_path):
    """TokenLabeling's published label data: <label_dir>/<class folder>/<stem>.pt, read without torch."""
    import shutil
    root, _, _ = labelled
    source = os.path.join(FIXTURES, 'spvit_mini', 'official_label_map_3cls.pt')
    for line in open(os.path.join(root, 'train_list.txt')).read().split('\n'):
        if line:
            rel = line.split()[0]                                   # train/c<label>/<i>.png
            folder = tmp_path / rel.split('/')[-2]
            folder.mkdir(exist_ok=True)
            shutil.copy(source, folder / (os.path.splitext(rel.split('/')[-1])[0] + '.pt'))
    transform = TokenLabelTransform(64, MEAN, STD, rand_augment=False, random_erase_prob=0.0)
    dataset = TokenLabelDataset(root, os.path.join(root, 'train_list.txt'), 3, str(tmp_path), transform)
    assert dataset.label_map_path(2).endswith(os.path.join('c2', '2.pt'))
    sample = dataset.load(2)
    assert sample.label_map.scores.shape == (3, 4, 4)
    assert sample.label_map.region == pytest.approx((0.0, 8 / 96, 1.0, 80 / 96))   # centre square of 96x80
    _image, (label, maps) = dataset[(2, 7)]
    assert label == 2 and maps['indices'].max() <= 2


@pytest.mark.slow
def test_two_process_training_with_token_labels(labelled, tmp_path):
    """main_multi_gpu.py under paddle.distributed.launch, 2 CPU processes: DataParallel must find
    the tensors of DenseOutput (a dict) to synchronise gradients."""
    import subprocess
    root, labels, _ = labelled
    folder = os.path.join(REPO, 'image_classification', 'SPViT')
    cmd = [sys.executable, '-m', 'paddle.distributed.launch', '--nproc_per_node', '2', '--log_dir',
           str(tmp_path / 'launch'), 'main_multi_gpu.py', '-cfg', S224, '-data_path', root,
           '-output', str(tmp_path / 'out'), '-batch_size', '2', '-token_label_dir', labels, '-opts', *TINY,
           'TRAIN.NUM_EPOCHS', '1', 'TRAIN.COOLDOWN_EPOCHS', '0', 'TRAIN.WARMUP_EPOCHS', '0', 'TRAIN.MODEL_EMA', 'False', 'REPORT_FREQ', '1']
    run = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=600)
    logs = run.stdout + run.stderr + ''.join(open(tmp_path / 'launch' / f).read()
                                             for f in os.listdir(tmp_path / 'launch') if f.startswith('workerlog'))
    assert run.returncode == 0, logs[-3000:]
    assert 'Train Loss' in logs and 'Validation Acc@1' in logs
