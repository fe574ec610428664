"""The shared data pipeline (engine.data): list parsing, decoding, transforms, Mixup, samplers, loaders.

References are independent of the code under test: PIL's own decoders and
ImageOps / ImageEnhance, paddle.vision.transforms, and hand-written numbers.
"""
import io
import os

import cv2
import numpy as np
import paddle
import pytest
from PIL import Image

from engine import data
from engine.config import ConfigError, base_config
from engine.data import autoaugment as aa
from engine.data import transforms as tf
from engine.data.decode import decode_image
from tools.benchmarking.baseline import PIL_OPS, paddlevit_transform

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def photo(h=60, w=80, seed=0):
    """A smooth random colour image (HWC uint8): JPEG-friendly, not constant anywhere."""
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.uniform(0, 255, (h // 8 + 2, w // 8 + 2, 3)).astype(np.float32), (w, h),
                     interpolation=cv2.INTER_CUBIC)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(img, fmt, mode=None, **kw):
    f = io.BytesIO()
    (Image.fromarray(img, mode) if mode else Image.fromarray(img)).save(f, fmt, **kw)
    return f.getvalue()


def make_config(root='', num_classes=4, size=32, **overrides):
    c = base_config()
    c.DATA.DATA_PATH = str(root)
    c.DATA.IMAGE_SIZE = size
    c.DATA.BATCH_SIZE = 4
    c.DATA.BATCH_SIZE_EVAL = 4
    c.DATA.NUM_WORKERS = 0
    c.MODEL.NUM_CLASSES = num_classes
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split('.')
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def write_dataset(root, n=10, num_classes=4, size=(40, 52), list_name='train_list.txt', bad=()):
    """n JPEGs under root/img/, listed in list_name; indices in `bad` are truncated files."""
    os.makedirs(os.path.join(root, 'img'), exist_ok=True)
    lines = []
    for i in range(n):
        blob = encode(photo(*size, seed=i), 'JPEG', quality=90)
        if i in bad:
            blob = blob[:len(blob) // 2]
        with open(os.path.join(root, 'img', f'{i}.jpg'), 'wb') as f:
            f.write(blob)
        lines.append(f'img/{i}.jpg {i % num_classes}\n')
    with open(os.path.join(root, list_name), 'w') as f:
        f.writelines(lines)
    return root


# --------------------------------------------------------------------------- list parsing
def test_odd_list_formats_parse(tmp_path):
    (tmp_path / 'a b').mkdir()
    raw = ('\ufeffa b/x 1.png   3\r\n'        # BOM, space in the path, extra spaces, CRLF
           '\r\n'                             # blank line (Windows)
           '  img/y.jpg\t0  \n'               # leading spaces, a tab, trailing spaces
           '\n'
           'img/z.jpg 2')                     # no trailing newline
    lst = tmp_path / 'list.txt'
    lst.write_bytes(raw.encode('utf-8'))
    assert data.parse_list_file(str(lst), 4) == [('a b/x 1.png', 3, 1), ('img/y.jpg', 0, 3),
                                                 ('img/z.jpg', 2, 5)]


@pytest.mark.parametrize('line, message', [
    ('img/only_a_path.jpg', 'expected "relative/path label"'),
    ('img/a.jpg three', "label 'three' is not an integer"),
    ('img/a.jpg 4', 'label 4 is outside [0, 4)'),
    ('img/a.jpg -1', 'label -1 is outside [0, 4)'),
])
def test_bad_list_line_names_file_and_line(tmp_path, line, message):
    lst = tmp_path / 'val_list.txt'
    lst.write_text(f'img/0.jpg 0\n\nimg/1.jpg 1\n{line}\nimg/2.jpg 2\n')
    with pytest.raises(data.ListFileError) as e:
        data.parse_list_file(str(lst), 4)
    assert f'{lst}:4: ' in str(e.value) and message in str(e.value)


def test_all_bad_lines_counted_and_empty_list(tmp_path):
    lst = tmp_path / 'l.txt'
    lst.write_text(''.join(f'x{i}.jpg 9\n' for i in range(15)))
    with pytest.raises(data.ListFileError, match=r'15 bad line\(s\)[\s\S]*and 5 more'):
        data.parse_list_file(str(lst), 4)
    lst.write_text('\n \n')
    with pytest.raises(data.ListFileError, match='no samples'):
        data.parse_list_file(str(lst), 4)
    with pytest.raises(data.ListFileError, match='list file not found'):
        data.parse_list_file(str(tmp_path / 'nope.txt'), 4)


def test_missing_image_names_file_and_line(tmp_path):
    write_dataset(tmp_path, n=6)
    os.remove(tmp_path / 'img' / '4.jpg')
    config = make_config(tmp_path)
    with pytest.raises(data.MissingImageError) as e:
        data.build_dataset(config, 'train')
    assert f'train_list.txt:5: image not found: {tmp_path}' in str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    config.DATA.SKIP_BAD_IMAGES = True
    dataset = data.build_dataset(config, 'train')
    assert len(dataset) == 5 and dataset.num_missing == 1
    assert dataset.where(4) == f'{tmp_path}/train_list.txt:6'


def test_absolute_paths_and_no_data_path(tmp_path):
    write_dataset(tmp_path, n=3)
    lst = tmp_path / 'abs.txt'
    lst.write_text(''.join(f'{tmp_path}/img/{i}.jpg {i}\n' for i in range(3)))
    dataset = data.ImageListDataset('/elsewhere', str(lst), 4)
    assert dataset[2][0].shape == (40, 52, 3) and dataset[2][1] == 2
    with pytest.raises(data.DataError, match='DATA.DATA_PATH is not set'):
        data.build_dataset(make_config(''), 'val')


# --------------------------------------------------------------------------- decoding
def _pil_rgb(blob):
    return np.asarray(Image.open(io.BytesIO(blob)).convert('RGB'))


def test_decode_matches_pil_for_odd_formats():
    img = photo(30, 44)
    rng = np.random.default_rng(1)
    alpha = rng.integers(0, 256, img.shape[:2], dtype=np.uint8)
    palette = Image.fromarray(img).convert('P', palette=Image.ADAPTIVE)
    f = io.BytesIO()
    palette.save(f, 'PNG', transparency=5)
    cases = {
        'gray png': encode(img[:, :, 1], 'PNG'),
        'gray jpeg': encode(img[:, :, 1], 'JPEG', quality=90),
        'rgba png': encode(np.dstack([img, alpha]), 'PNG', 'RGBA'),
        'la png': encode(np.dstack([img[:, :, 0], alpha]), 'PNG', 'LA'),
        'palette png with transparency': f.getvalue(),
        '1-bit png': encode(img[:, :, 0] > 128, 'PNG'),
        'rgb jpeg': encode(img, 'JPEG', quality=90),
        'webp': encode(img, 'WEBP', lossless=True),
        'bmp': encode(img, 'BMP'),
    }
    for name, blob in cases.items():
        ours = decode_image(blob)
        assert ours.dtype == np.uint8 and ours.shape == (30, 44, 3), name
        assert np.array_equal(ours, _pil_rgb(blob)), name


def test_decode_cmyk_jpeg_close_to_pil():
    cmyk = np.random.default_rng(2).integers(0, 256, (24, 32, 4), dtype=np.uint8)
    blob = encode(cmyk, 'JPEG', 'CMYK', quality=95)
    ours, ref = decode_image(blob), _pil_rgb(blob)
    assert ours.shape == (24, 32, 3)
    assert np.abs(ours.astype(int) - ref).max() <= 2


def test_decode_16_bit_png_high_byte():
    rng = np.random.default_rng(3)
    gray16 = rng.integers(0, 65536, (20, 24), dtype=np.uint16)
    rgb16 = rng.integers(0, 65536, (20, 24, 3), dtype=np.uint16)
    gray_blob = cv2.imencode('.png', gray16)[1].tobytes()
    rgb_blob = cv2.imencode('.png', rgb16[:, :, ::-1])[1].tobytes()   # OpenCV writes BGR
    # 16-bit RGB: PIL keeps the high byte, and so do we
    assert np.array_equal(decode_image(rgb_blob), _pil_rgb(rgb_blob))
    assert np.array_equal(decode_image(rgb_blob), (rgb16 >> 8).astype(np.uint8))
    # 16-bit grey: the high byte in all three channels (PIL's convert would saturate at 255)
    expected = np.repeat((gray16 >> 8).astype(np.uint8)[:, :, None], 3, axis=2)
    assert np.array_equal(decode_image(gray_blob), expected)
    with Image.open(io.BytesIO(gray_blob)) as im:                      # the PIL fallback path
        assert np.array_equal(data.decode.pil_to_rgb_array(im), expected)


def test_decode_ignores_exif_orientation_like_pil():
    img = photo(20, 36)
    exif = Image.Exif()
    exif[0x0112] = 6                                                   # "rotate 90 CW"
    blob = encode(img, 'JPEG', quality=95, exif=exif.tobytes())
    ours = decode_image(blob)
    assert ours.shape == (20, 36, 3) and np.array_equal(ours, _pil_rgb(blob))


def test_decode_errors():
    blob = encode(photo(), 'JPEG', quality=90)
    for bad in (blob[:len(blob) // 2], blob[:-2], b'not an image at all', b''):
        with pytest.raises(data.DecodeError):
            decode_image(bad)


# --------------------------------------------------------------------------- bad images
def test_truncated_jpeg_error_names_list_line(tmp_path):
    write_dataset(tmp_path, n=6, bad={3})
    dataset = data.build_dataset(make_config(tmp_path), 'train')
    dataset[2]
    with pytest.raises(data.BadImageError) as e:
        dataset[3]
    assert f'train_list.txt:4: cannot read image {tmp_path}/img/3.jpg' in str(e.value)


def test_truncated_jpeg_error_survives_worker_boundary(tmp_path):
    write_dataset(tmp_path, n=8, bad={5}, list_name='val_list.txt')
    config = make_config(tmp_path, **{'DATA.NUM_WORKERS': 2})
    loader = data.build_dataloader(config, data.build_dataset(config, 'val'), 'val', distributed=False)
    with pytest.raises(data.BadImageError) as e:
        for _ in loader:
            pass
    assert f'val_list.txt:6: cannot read image {tmp_path}/img/5.jpg' in str(e.value)


@pytest.fixture
def val_listed(tmp_path):
    def make(**kw):
        write_dataset(tmp_path, list_name='val_list.txt', **kw)
        return tmp_path
    return make


@pytest.mark.slow
def test_skip_bad_images_counts_across_workers(val_listed):
    root = val_listed(n=12, bad={2, 9})
    config = make_config(root, **{'DATA.NUM_WORKERS': 2, 'DATA.SKIP_BAD_IMAGES': True})
    dataset = data.build_dataset(config, 'val')
    loader = data.build_dataloader(config, dataset, 'val', distributed=False)
    for epoch in range(2):
        labels = np.concatenate([y.numpy() for _, y in loader])
        # evaluation leaves bad samples out (training replaces them: test_loader_faults.py)
        assert labels.tolist() == [i % 4 for i in range(12) if i not in (2, 9)]
        assert data.skipped_report(dataset) == ', skipped 2 bad image(s) (DATA.SKIP_BAD_IMAGES)'
    assert data.skipped_report(dataset) == '' and dataset.skipped == 0


# --------------------------------------------------------------------------- transforms
def test_train_transform_shapes_dtypes_and_seeding(tmp_path):
    write_dataset(tmp_path, n=4, size=(90, 120))
    config = make_config(tmp_path, size=48, **{'TRAIN.RANDOM_ERASE_PROB': 1.0})
    dataset = data.build_dataset(config, 'train')
    x, y = dataset[(1, (0, 0, 1))]
    assert x.shape == (3, 48, 48) and x.dtype == np.float32 and y == 1
    assert np.array_equal(x, dataset[(1, (0, 0, 1))][0])           # same seed, same sample
    assert not np.array_equal(x, dataset[(1, (0, 1, 1))][0])       # next epoch differs
    for flags in ({'TRAIN.AUTO_AUGMENT': True}, {'TRAIN.RAND_AUGMENT': False},
                  {'TRAIN.RAND_AUGMENT': False, 'TRAIN.COLOR_JITTER': 0.0, 'TRAIN.RANDOM_ERASE_PROB': 0.0}):
        t = data.build_transform(make_config(size=40, **flags), 'train')
        assert t(photo(70, 50), np.random.default_rng(0)).shape == (3, 40, 40)


def test_train_transform_picks_deit_components():
    t = data.build_transform(make_config(), 'train')
    assert isinstance(t.augment, aa.RandAugment) and t.augment.names == aa.RAND_INCREASING
    assert (t.augment.num_layers, t.augment.magnitude, t.augment.magnitude_std) == (2, 9, 0.5)
    assert t.augment.fill == (124, 116, 104) and t.erase.prob == 0.25 and t.erase.mode == 'pixel'
    assert isinstance(data.build_transform(make_config(**{'TRAIN.AUTO_AUGMENT': True}), 'train').augment,
                      aa.AutoAugment)
    jitter = data.build_transform(make_config(**{'TRAIN.RAND_AUGMENT': False}), 'train').augment
    assert isinstance(jitter, tf.ColorJitter) and len(jitter.ops) == 3
    digits = data.build_transform(make_config(**{'TRAIN.HFLIP_PROB': 0.0, 'TRAIN.CROP_SCALE': (0.5, 1.0)}),
                                  'train')
    assert digits.hflip == 0.0 and digits.crop.scale == (0.5, 1.0)
    with pytest.raises(ValueError, match='TRAIN.TRAIN_INTERPOLATION'):
        data.build_transform(make_config(**{'TRAIN.TRAIN_INTERPOLATION': 'bicubc'}), 'train')


def test_random_resized_crop_follows_scale_and_ratio():
    crop = tf.RandomResizedCrop(16)
    rng = np.random.default_rng(0)
    areas, ratios = [], []
    for _ in range(2000):
        top, left, h, w = crop.params(300, 400, rng)
        assert 0 <= top and top + h <= 300 and 0 <= left and left + w <= 400
        areas.append(h * w / 120000)
        ratios.append(w / h)
    assert 0.07 < min(areas) < 0.12 and max(areas) > 0.9 and max(areas) <= 1.0
    assert 0.74 < min(ratios) < 0.8 and 1.28 < max(ratios) < 1.35
    # a strip no box fits: centre crop clamped to the widest allowed ratio
    assert crop.params(10, 1000, rng) == (0, (1000 - 13) // 2, 10, 13)


def test_random_erasing_modes():
    x = np.zeros((3, 40, 40), np.float32)
    out = tf.RandomErasing(1.0, 'pixel')(x.copy(), np.random.default_rng(0))
    erased = out != 0
    assert 0.015 < erased.mean() < 0.34 and erased.any(axis=0).sum() * 3 == erased.sum()
    assert np.array_equal(tf.RandomErasing(0.0)(x.copy(), np.random.default_rng(0)), x)
    rand = tf.RandomErasing(1.0, 'rand')(x.copy(), np.random.default_rng(1))
    assert all(len(np.unique(rand[c][rand[c] != 0])) == 1 for c in range(3))


def test_normalize_matches_reference():
    img = photo(10, 12)
    ref = (img.astype(np.float64) / 255 - MEAN) / STD
    out = tf.Normalize(MEAN, STD)(img)
    assert out.dtype == np.float32 and out.shape == (3, 10, 12)
    assert np.abs(out - ref.transpose(2, 0, 1)).max() < 1e-5


@pytest.mark.parametrize('size, crop_pct, short', [(224, 0.875, 256), (224, 0.9, 248), (384, 1.0, 384),
                                                   (224, 0.95, 235), (32, 0.875, 36)])
def test_eval_resize_size(size, crop_pct, short):
    assert tf.eval_resize_size(size, crop_pct) == short


def test_eval_resize_shape_truncates_long_side():
    assert tf.eval_resize_shape(375, 500, 256) == (256, 341)
    assert tf.eval_resize_shape(500, 375, 256) == (341, 256)
    assert tf.eval_resize_shape(300, 300, 248) == (248, 248)


@pytest.mark.parametrize('shape, size, crop_pct, interpolation', [
    ((375, 500), 224, 0.875, 'bicubic'), ((301, 257), 224, 0.9, 'bilinear'), ((64, 64), 32, 0.875, 'bicubic'),
    ((256, 300), 224, 0.875, 'bicubic'), ((301, 257), 224, 0.875, 'lanczos')])
def test_eval_transform_equals_paddle_vision(shape, size, crop_pct, interpolation):
    """Resize short side, centre crop, normalise: as paddle.vision.transforms (PIL backend) does it."""
    img = photo(*shape, seed=5)
    config = make_config(size=size, **{'DATA.CROP_PCT': crop_pct, 'DATA.INTERPOLATION': interpolation})
    ours = data.build_transform(config, 'val')(img)
    ref = paddlevit_transform(config, 'val')(Image.fromarray(img)).numpy()
    assert ours.shape == ref.shape == (3, size, size)
    diff = np.abs(ours - ref) * 255 * np.array(STD)[:, None, None]       # in grey levels
    assert diff.max() < 1e-3


def test_describe_eval_transform():
    text = data.describe_eval_transform(make_config(size=224, **{'DATA.CROP_PCT': 0.9}))
    assert text == ('resize short side to 248 (224 / crop_pct 0.9, bicubic, PIL), center crop 224, '
                    'normalize mean=(0.485, 0.456, 0.406) std=(0.229, 0.224, 0.225)')


@pytest.mark.parametrize('shape, size, interpolation', [((375, 500), 224, 'bilinear'), ((301, 257), 96, 'bicubic'),
                                                          ((40, 40), 32, 'bilinear'), ((32, 32), 32, 'bilinear')])
def test_squash_eval_is_a_resize_of_the_whole_image(shape, size, interpolation):
    """DATA.EVAL_RESIZE squash: the whole image resized to size x size by PIL (as ViT-pytorch's
    transforms.Resize((s, s)) does on PIL images), no crop, whatever CROP_PCT says."""
    img = photo(*shape, seed=3)
    config = make_config(size=size, **{'DATA.EVAL_RESIZE': 'squash', 'DATA.CROP_PCT': 0.875,
                                       'DATA.INTERPOLATION': interpolation, 'DATA.MEAN': [0.5] * 3,
                                       'DATA.STD': [0.5] * 3})
    ours = data.build_transform(config, 'val')(img)
    filters = {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC}
    resized = np.asarray(Image.fromarray(img).resize((size, size), filters[interpolation]), np.float64)
    ref = ((resized / 255 - 0.5) / 0.5).transpose(2, 0, 1)
    assert ours.shape == (3, size, size)
    assert np.abs(ours - ref).max() < 1e-6


def test_describe_squash_eval_says_crop_pct_is_ignored():
    config = make_config(size=384, **{'DATA.EVAL_RESIZE': 'squash', 'DATA.CROP_PCT': 0.875,
                                      'DATA.INTERPOLATION': 'bilinear'})
    assert data.describe_eval_transform(config) == (
        'squash: resize the whole image to 384x384 (bilinear, PIL; aspect ratio not kept), no crop, '
        'crop_pct 0.875 ignored, normalize mean=(0.485, 0.456, 0.406) std=(0.229, 0.224, 0.225)')


def test_unknown_eval_resize_names_key_and_choices():
    config = make_config(**{'DATA.EVAL_RESIZE': 'center'})
    for call in (lambda: data.build_transform(config, 'val'), lambda: data.describe_eval_transform(config)):
        with pytest.raises(ConfigError, match=r"DATA.EVAL_RESIZE: 'center' is not one of 'shorter' .* 'squash'"):
            call()


# --------------------------------------------------------------------------- augmentation ops vs PIL
_EXACT = [('AutoContrast', None), ('Equalize', None), ('Invert', None), ('Posterize', 3), ('Posterize', 0),
          ('Solarize', 100), ('SolarizeAdd', 60)]
_BLEND = [('Color', 0.3), ('Color', 1.7), ('Contrast', 0.3), ('Contrast', 1.8), ('Brightness', 0.4),
          ('Brightness', 1.6), ('Sharpness', 0.2), ('Sharpness', 1.9)]
_GEOMETRIC = [('Rotate', 17.0), ('Rotate', -25.0), ('ShearX', 0.25), ('ShearY', -0.2),
              ('TranslateXRel', 0.3), ('TranslateYRel', -0.27)]
_FILL = (124, 116, 104)


@pytest.mark.parametrize('name, arg', _EXACT + _BLEND)
def test_pixel_ops_match_pil(name, arg):
    img = photo(64, 72, seed=7)
    ours = aa.OPS[name][0](img, arg, (_FILL, cv2.INTER_CUBIC))
    ref = np.asarray(PIL_OPS[name](Image.fromarray(img), arg, (_FILL, Image.BICUBIC)))
    assert ours.dtype == np.uint8 and ours.shape == img.shape
    assert np.abs(ours.astype(int) - ref).max() <= (0 if (name, arg) in _EXACT else 1)


@pytest.mark.parametrize('name, arg', _GEOMETRIC)
def test_geometric_ops_match_pil(name, arg):
    """Same affine map as PIL; only the cubic kernel and the fill boundary differ."""
    img = photo(64, 72, seed=8)
    ours = aa.OPS[name][0](img, arg, (_FILL, cv2.INTER_LINEAR)).astype(int)
    ref = np.asarray(PIL_OPS[name](Image.fromarray(img), arg, (_FILL, Image.BILINEAR))).astype(int)
    assert np.abs(ours - ref).mean() < 1.0 and (np.abs(ours - ref) > 8).mean() < 0.02


def test_rand_augment_changes_images_and_is_seeded():
    img = photo(48, 48, seed=9)
    ra = aa.RandAugment(fill=_FILL)
    outs = [ra(img, np.random.default_rng(s)) for s in range(20)]
    assert all(o.shape == img.shape and o.dtype == np.uint8 for o in outs)
    assert sum(not np.array_equal(o, img) for o in outs) >= 12      # P(no op applied) = 1/4
    assert np.array_equal(ra(img, np.random.default_rng(3)), outs[3])
    auto = aa.AutoAugment(fill=_FILL)
    assert sum(not np.array_equal(auto(img, np.random.default_rng(s)), img) for s in range(20)) >= 10


# --------------------------------------------------------------------------- mixup
def _batch(b=8, size=16, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return (paddle.to_tensor(rng.normal(size=(b, 3, size, size)).astype(np.float32)),
            paddle.to_tensor(rng.integers(0, classes, b)))


def test_build_mixup_off_and_on():
    assert data.build_mixup(make_config(**{'TRAIN.MIXUP_ALPHA': 0.0, 'TRAIN.CUTMIX_ALPHA': 0.0})) is None
    assert data.build_mixup(make_config(**{'TRAIN.MIXUP_PROB': 0.0})) is None
    mix = data.build_mixup(make_config(num_classes=10))
    assert mix.num_classes == 10 and mix.smoothing == 0.1
    assert data.build_mixup(make_config(**{'TRAIN.MIXUP_ALPHA': 0.0, 'TRAIN.CUTMIX_ALPHA': 0.0,
                                           'TRAIN.CUTMIX_MINMAX': [0.2, 0.8]})) is not None


def test_mixup_batch_targets_follow_lambda():
    images, labels = _batch()
    mix = data.Mixup(10, mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.1)
    np.random.seed(0)
    mixed, targets = mix(images, labels)
    x, xf, m = images.numpy(), images.numpy()[::-1], mixed.numpy()
    lam = ((m - xf) * (x - xf)).sum() / ((x - xf) ** 2).sum()              # least squares
    assert np.allclose(m, lam * x + (1 - lam) * xf, atol=1e-5) and 0 < lam < 1
    y = np.full((8, 10), 0.01)
    y[np.arange(8), labels.numpy()] = 0.91                                 # 1 - 0.1 + 0.1 / 10
    assert targets.shape == [8, 10]
    assert np.allclose(targets.numpy(), lam * y + (1 - lam) * y[::-1], atol=1e-6)
    assert np.allclose(targets.numpy().sum(1), 1.0, atol=1e-6)


def test_cutmix_batch_lambda_is_pasted_area():
    images, labels = _batch(size=32)
    mix = data.Mixup(10, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0)
    for seed in range(5):
        np.random.seed(seed)
        mixed, targets = mix(images, labels)
        pasted = (mixed.numpy() != images.numpy()).any(axis=1)[0].mean()  # fraction from the flip
        t = targets.numpy()
        own = t[np.arange(8), labels.numpy()]
        flip = labels.numpy()[::-1]
        # own-label weight is 1 - pasted area (plus the flipped share when both labels are equal)
        expected = np.where(labels.numpy() == flip, 1.0, 1.0 - pasted)
        assert np.allclose(own, expected, atol=1e-6) and np.allclose(t.sum(1), 1.0, atol=1e-6)


def test_mixup_prob_zero_only_smooths():
    images, labels = _batch(classes=10)
    mixed, targets = data.Mixup(10, prob=0.0, label_smoothing=0.2)(images, labels)
    assert np.array_equal(mixed.numpy(), images.numpy())
    t = targets.numpy()
    assert np.allclose(t[np.arange(8), labels.numpy()], 0.82) and np.isclose(t.min(), 0.02)


@pytest.mark.parametrize('mode', ['elem', 'pair'])
def test_mixup_elementwise_modes(mode):
    images, labels = _batch(size=24)
    mix = data.Mixup(10, mixup_alpha=0.8, cutmix_alpha=1.0, mode=mode, label_smoothing=0.0)
    np.random.seed(1)
    mixed, targets = mix(images, labels)
    x, xf, m, t = images.numpy(), images.numpy()[::-1], mixed.numpy(), targets.numpy()
    lams = []
    for i in range(8):
        own = (labels.numpy()[i] == labels.numpy()[7 - i])
        from_self = np.isclose(m[i], x[i], atol=1e-6)
        from_flip = np.isclose(m[i], xf[i], atol=1e-6)
        if from_self.all() or (from_self | from_flip).all():          # cutmix or untouched
            lam = from_self.mean()
        else:                                                           # mixup
            lam = ((m[i] - xf[i]) * (x[i] - xf[i])).sum() / ((x[i] - xf[i]) ** 2).sum()
            assert np.allclose(m[i], lam * x[i] + (1 - lam) * xf[i], atol=1e-5)
        lams.append(lam)
        expected_own = 1.0 if own else lam
        assert np.isclose(t[i, labels.numpy()[i]], expected_own, atol=1e-5), (i, lam)
    assert len(set(np.round(lams, 4))) > 2                              # not one lambda for all
    if mode == 'pair':
        assert np.allclose(lams, lams[::-1], atol=1e-5)


# --------------------------------------------------------------------------- samplers and loaders
def test_eval_sampler_two_ranks_cover_each_index_once():
    for n, batch in ((11, 4), (2, 4), (8, 3)):
        seen = []
        for rank in range(2):
            sampler = data.EvalBatchSampler(n, batch, rank, 2)
            batches = list(sampler)
            assert len(batches) == len(sampler) and all(len(b) <= batch for b in batches)
            seen += [i for b in batches for i in b]
        assert sorted(seen) == list(range(n))


def test_train_sampler_drops_last_and_reshuffles_per_epoch(tmp_path):
    write_dataset(tmp_path, n=10)
    config = make_config(tmp_path, **{'DATA.BATCH_SIZE': 3})
    loader = data.build_dataloader(config, data.build_dataset(config, 'train'), 'train', distributed=False)
    sampler = loader.batch_sampler
    assert len(loader) == 3
    sampler.set_epoch(1)
    first = list(sampler)
    assert [len(b) for b in first] == [3, 3, 3]
    sampler.set_epoch(1)
    assert list(sampler) == first                                       # same epoch, same order and seeds
    sampler.set_epoch(2)
    second = list(sampler)
    assert [i for b in second for i, _ in b] != [i for b in first for i, _ in b]
    assert all(seed == (0, 2, i) for b in second for i, seed in b)
    with pytest.raises(ValueError, match='cannot fill one batch'):
        data.build_dataloader(make_config(tmp_path, **{'DATA.BATCH_SIZE': 11}),
                              data.build_dataset(config, 'train'), 'train', distributed=False)


@pytest.mark.slow
def test_loader_with_two_workers_matches_in_process_loading(tmp_path):
    """Augmentation depends on (SEED, epoch, index) only: 2 workers give the very same batches as 0."""
    write_dataset(tmp_path, n=10, size=(50, 60))
    batches = {}
    for workers in (0, 2):
        config = make_config(tmp_path, size=24, **{'DATA.NUM_WORKERS': workers})
        dataset = data.build_dataset(config, 'train')
        loader = data.build_dataloader(config, dataset, 'train', distributed=False)
        got = []
        for epoch in (1, 2):
            loader.batch_sampler.set_epoch(epoch)
            for images, labels in loader:
                assert images.shape == [4, 3, 24, 24] and images.dtype == paddle.float32
                assert labels.dtype == paddle.int64
                got.append((images.numpy(), labels.numpy()))
        batches[workers] = got
    assert len(batches[0]) == len(batches[2]) == 4
    for (a, la), (b, lb) in zip(batches[0], batches[2]):
        assert np.array_equal(la, lb) and np.array_equal(a, b)
    assert not np.array_equal(batches[0][0][0], batches[0][2][0])     # epochs differ


def test_shared_memory_fallback(tmp_path, monkeypatch, caplog):
    write_dataset(tmp_path, n=8)
    config = make_config(tmp_path, **{'DATA.NUM_WORKERS': 2})
    dataset = data.build_dataset(config, 'train')
    ok, free, needed = data.shared_memory_ok(32 * 3 * 224 * 224 * 4, 2)
    assert needed == 2 * 32 * 3 * 224 * 224 * 4 * 6
    usage = type('Usage', (), {'free': 64 * 2 ** 20})()
    monkeypatch.setattr(data.loader.shutil, 'disk_usage', lambda path: usage)
    config.DATA.IMAGE_SIZE = 512                # 4 x 3 x 512 x 512 float32 = 12.6 MB a batch
    with caplog.at_level('WARNING'):
        loader = data.build_dataloader(config, dataset, 'train', distributed=False)
    assert loader.use_shared_memory is False and 'loading without shared memory' in caplog.text
    config.DATA.IMAGE_SIZE = 64
    assert data.build_dataloader(config, dataset, 'train', distributed=False).use_shared_memory is True



@pytest.mark.slow
def test_workers_exit_when_the_training_process_is_killed(tmp_path):
    """A SIGKILLed parent must not leave its loader workers behind (Paddle's would wait for good)."""
    import signal
    import subprocess
    import sys
    import time
    write_dataset(tmp_path, n=12, list_name='val_list.txt')
    script = f'''
import os, signal, sys
sys.path[:0] = {[os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                 os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'image_classification'),
                 os.path.dirname(os.path.abspath(__file__))]!r}
from engine import data
from test_data import make_config
config = make_config({str(tmp_path)!r}, **{{'DATA.NUM_WORKERS': 2}})
loader = data.build_dataloader(config, data.build_dataset(config, 'val'), 'val', distributed=False)
it = iter(loader)
next(it)
print(' '.join(str(w.pid) for w in it.iterator._workers), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
'''
    log = tmp_path / 'out.txt'
    with open(log, 'w') as f:           # a file, not a pipe: surviving workers would hold a pipe open
        subprocess.run([sys.executable, '-c', script], stdout=f, stderr=subprocess.STDOUT, timeout=120)
    pids = [int(p) for p in log.read_text().splitlines()[-1].split() if p.isdigit()]
    assert len(pids) == 2, log.read_text()[-2000:]
    deadline = time.time() + 15
    alive = pids
    while alive and time.time() < deadline:
        time.sleep(0.5)
        alive = [p for p in pids if os.path.exists(f'/proc/{p}') and
                 open(f'/proc/{p}/stat').read().split()[2] != 'Z']
    for p in alive:                      # do not leave them behind even when the test fails
        os.kill(p, signal.SIGKILL)
    assert not alive


# --------------------------------------------------------------------------- demo dataset
@pytest.mark.slow
def test_make_demo_dataset(tmp_path):
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tools',
                        'make_demo_dataset.py')
    spec = importlib.util.spec_from_file_location('make_demo_dataset', path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = str(tmp_path / 'digits')
    meta, written = tool.make_dataset(out, size=16)
    assert written and (meta['train'], meta['val'], meta['classes']) == (1438, 359, 10)
    train = data.parse_list_file(os.path.join(out, 'train_list.txt'), 10)
    val = data.parse_list_file(os.path.join(out, 'val_list.txt'), 10)
    assert len(train) == 1438 and len(val) == 359
    assert not {p for p, _, _ in train} & {p for p, _, _ in val}
    per_class = np.bincount([label for _, label, _ in val], minlength=10)
    assert per_class.min() >= 35 and per_class.max() <= 37             # stratified 20%
    image, label = data.ImageListDataset(out, os.path.join(out, 'val_list.txt'), 10)[0]
    assert image.shape == (16, 16, 3) and image.max() > 200 and f'val/{label}/' in val[0][0]
    assert tool.make_dataset(out, size=16) == (meta, False)             # complete: nothing to do
    os.remove(os.path.join(out, train[5][0]))
    assert tool.make_dataset(out, size=16)[1]                           # incomplete: rewritten
