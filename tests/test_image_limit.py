"""DATA.MAX_IMAGE_PIXELS: an image is refused from its header, before any decoder runs (issue #19).

A 20000 x 20000 PNG is 388 KB on disk and 1.2 GB decoded; OpenCV's own guard starts at 2^30 pixels.
"""
import io
import resource
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from engine.config import base_config
from engine.data import BadImageError, DataError, ImageListDataset
from engine.data import decode as decode_mod
from engine.data.decode import DEFAULT_MAX_IMAGE_PIXELS, DecodeError, ImageTooLargeError, decode_image


def _png(width, height):
    """A valid all-black 8-bit grayscale PNG, written row block by row block (small on disk)."""
    def chunk(kind, body):
        return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body))
    packer = zlib.compressobj(9)
    block = (b'\x00' + bytes(width)) * 500
    idat = b''.join(packer.compress(block) for _ in range(height // 500))
    idat += packer.compress((b'\x00' + bytes(width)) * (height % 500)) + packer.flush()
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0))
            + chunk(b'IDAT', idat) + chunk(b'IEND', b''))


@pytest.fixture(scope='module')
def bomb():
    data = _png(20000, 20000)
    assert len(data) < 500_000
    return data


@pytest.fixture
def no_decoder(monkeypatch):
    """`no_decoder()`: from then on any decode (OpenCV's or PIL's) fails the test, so the limit must
    act on the header alone."""
    def forbidden(*_args, **_kw):
        raise AssertionError('an image above the limit was decoded')

    def arm():
        monkeypatch.setattr(decode_mod.cv2, 'imdecode', forbidden)
        monkeypatch.setattr(Image.Image, 'load', forbidden)
        monkeypatch.setattr(decode_mod, 'pil_to_rgb_array', forbidden)
    return arm


def test_the_default_is_pils_and_a_config_key():
    assert DEFAULT_MAX_IMAGE_PIXELS == 89_478_485 == int(1024 * 1024 * 1024 // 4 // 3)
    assert base_config().DATA.MAX_IMAGE_PIXELS == DEFAULT_MAX_IMAGE_PIXELS


def test_a_decompression_bomb_is_refused_from_its_header(bomb, no_decoder):
    no_decoder()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # KB on Linux
    start = time.perf_counter()
    with pytest.raises(ImageTooLargeError, match=r'20000x20000 = 400,000,000 pixels is above '
                                                 r'DATA.MAX_IMAGE_PIXELS = 89,478,485'):
        decode_image(bomb)
    assert time.perf_counter() - start < 0.5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 100_000


def _jpeg(width, height, claimed=None, truncate=False):
    buf = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(buf, 'JPEG')
    data = buf.getvalue()
    if claimed:   # rewrite the SOF0 frame size: the header now declares `claimed` (w, h)
        sof = data.index(b'\xff\xc0')
        data = data[:sof + 5] + struct.pack('>HH', claimed[1], claimed[0]) + data[sof + 9:]
    return data[:-2] if truncate else data   # no end-of-image marker: the PIL path


@pytest.mark.parametrize('truncate', [False, True], ids=['opencv path', 'pil path'])
def test_both_decoder_paths_check_first(no_decoder, truncate):
    data = _jpeg(16, 16, claimed=(30000, 30000), truncate=truncate)
    no_decoder()
    with pytest.raises(ImageTooLargeError, match='30000x30000'):
        decode_image(data)


def test_limit_values(monkeypatch):
    image = _jpeg(200, 100)
    with pytest.raises(ImageTooLargeError, match='200x100 = 20,000 pixels is above DATA.MAX_IMAGE_PIXELS = 19,999'):
        decode_image(image, max_pixels=19_999)
    assert decode_image(image, max_pixels=20_000).shape == (100, 200, 3)
    for off in (None, 0):
        assert decode_image(image, max_pixels=off).shape == (100, 200, 3)
    # the configured limit governs, not PIL's process-wide guard (which is left as it was)
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 100)
    monkeypatch.setattr(decode_mod.cv2, 'imdecode', lambda *a: None)   # force the PIL path
    assert decode_image(image, max_pixels=None).shape == (100, 200, 3)
    assert Image.MAX_IMAGE_PIXELS == 100


def test_unknown_header_under_a_limit():
    with pytest.raises(DecodeError, match='size can be read from its header'):
        decode_image(b'not an image at all')
    with pytest.raises(DecodeError, match='not a decodable image'):
        decode_image(b'not an image at all', max_pixels=0)


def _listed(tmp_path, bomb):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / 'ok.png')
    (tmp_path / 'bomb.png').write_bytes(bomb)
    (tmp_path / 'train_list.txt').write_text('ok.png 0\nbomb.png 1\nok.png 1\n')
    return str(tmp_path), str(tmp_path / 'train_list.txt')


def test_dataset_reports_list_file_and_line_or_skips(tmp_path, bomb, no_decoder, monkeypatch):
    root, lst = _listed(tmp_path, bomb)
    dataset = ImageListDataset(root, lst, 2)
    no_decoder()
    with pytest.raises(BadImageError, match=r'train_list\.txt:2: cannot read image .*bomb\.png: 20000x20000 '
                                            r'= 400,000,000 pixels is above DATA.MAX_IMAGE_PIXELS'):
        dataset.load(1)
    monkeypatch.undo()   # decoding the small images is fine
    skipping = ImageListDataset(root, lst, 2, skip_bad_images=True)
    image, label = skipping[1]   # replaced by the next sample in the list
    assert image.shape == (8, 8, 3) and label == 1 and skipping.skipped == 1


def test_dataset_limit_from_config_and_its_values(tmp_path, bomb):
    root, lst = _listed(tmp_path, bomb)
    with pytest.raises(DataError, match='DATA.MAX_IMAGE_PIXELS must be a pixel count'):
        ImageListDataset(root, lst, 2, max_image_pixels=-5)
    from engine.data import build_dataset
    config = base_config()
    config.defrost()
    config.DATA.DATA_PATH, config.MODEL.NUM_CLASSES, config.DATA.MAX_IMAGE_PIXELS = root, 2, 64
    dataset = build_dataset(config, 'train')
    with pytest.raises(BadImageError, match=r'train_list\.txt:2: .*above DATA.MAX_IMAGE_PIXELS = 64'):
        dataset.load(1)
    assert dataset.load(0).shape == (8, 8, 3)
