"""Image file bytes -> HWC uint8 RGB array, fast and with the same pixels as PIL.

OpenCV decodes first (`IMREAD_COLOR`, libjpeg-turbo: a little faster than
PIL, and it already turns grayscale, palette, alpha, CMYK and 16-bit images
into 8-bit colour).  EXIF orientation is ignored, as PIL's `Image.open` does,
because the official training and evaluation pipelines read pixels through PIL
without `exif_transpose`.  PIL takes over for what OpenCV cannot read, and for
a JPEG whose end-of-image marker is missing (OpenCV versions differ on whether
they return a half-grey image for a truncated JPEG; PIL raises).

Agreement with PIL's `Image.open(f).convert('RGB')` (tested): identical for
8-bit grayscale / RGB / RGBA / LA / palette (with or without transparency) /
1-bit PNG, JPEG, BMP, WebP, GIF, TIFF; within 2 levels for CMYK JPEG (rounding
of the CMYK -> RGB formula).  16-bit images become their high byte (v >> 8),
as PIL does for 16-bit RGB; for 16-bit *grayscale* PIL's convert saturates
every value above 255 to white, a PIL bug we do not reproduce.

Pixel limit (DATA.MAX_IMAGE_PIXELS): a PNG of 400 KB can hold a 20000 x 20000
image that decodes to 1.2 GB, and OpenCV has no guard of its own below 2^30
pixels.  So before either decoder runs, the width and height are read from the
file's header (PIL's `Image.open` parses the header only) and an image above
the limit is refused with `ImageTooLargeError`; nothing is decoded.  The
default is PIL's own `Image.MAX_IMAGE_PIXELS` (89,478,485, about 9459 x 9459);
None or 0 turns the limit off.  With a limit set, bytes whose header PIL
cannot parse are refused too, since their size cannot be checked first.
"""
import io
import threading

import cv2
import numpy as np
from PIL import Image

__all__ = ['DecodeError', 'ImageTooLargeError', 'DEFAULT_MAX_IMAGE_PIXELS', 'check_pixels', 'decode_image',
           'image_size', 'pil_to_rgb_array']

DEFAULT_MAX_IMAGE_PIXELS = 89_478_485   # PIL's Image.MAX_IMAGE_PIXELS, whatever a caller set it to

# One OpenCV thread per process, set before any OpenCV call: the loader workers are the
# parallelism, and a thread pool started in the parent deadlocks the workers forked from it
# (they hang for good in their first OpenCV call; seen with opencv-python 5.0).
cv2.setNumThreads(1)

_CV2_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION


class DecodeError(ValueError):
    """Bytes that are not a readable image."""


class ImageTooLargeError(DecodeError):
    """An image whose header declares more pixels than DATA.MAX_IMAGE_PIXELS (nothing was decoded)."""


_PIL_GUARD = threading.Lock()


def _pil_open(data):
    """`Image.open` of `data` (reads the header only) without PIL's own decompression-bomb check.

    That check reads the process-wide `Image.MAX_IMAGE_PIXELS` and would refuse
    an image the user allowed with a larger DATA.MAX_IMAGE_PIXELS; `decode_image`
    applies the configured limit itself, to both decoders.  PIL runs the check
    inside `open`, so the global is lifted for the header parse only, under a lock.
    """
    with _PIL_GUARD:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(io.BytesIO(data))
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def image_size(data):
    """(width, height) from the header of an image file's bytes, decoding no pixel; None if PIL
    does not recognise the header."""
    try:
        with _pil_open(data) as image:
            return image.size
    except Exception:   # PIL raises UnidentifiedImageError, OSError, SyntaxError, ... for bad headers
        return None


def check_pixels(data, max_pixels):
    """Raise ImageTooLargeError if the header of `data` declares more than `max_pixels` pixels
    (None or 0: no limit), DecodeError if it declares no size PIL can read."""
    if not max_pixels:
        return
    size = image_size(data)
    if size is None:
        raise DecodeError('not an image whose size can be read from its header (PIL does not recognise '
                          'it), so it is not decoded under DATA.MAX_IMAGE_PIXELS; set it to 0 to let '
                          'OpenCV try without a limit')
    width, height = size
    if width * height > max_pixels:
        raise ImageTooLargeError(f'{width}x{height} = {width * height:,} pixels is above DATA.MAX_IMAGE_PIXELS '
                                 f'= {max_pixels:,} (it would take {width * height * 3 / 2**30:.1f} GB '
                                 f'decoded); not decoded.  Raise the limit, or set it to 0 for none')


def _jpeg_looks_truncated(data):
    # the end-of-image marker FFD9 closes every complete JPEG; entropy-coded data never
    # contains it (0xFF bytes there are followed by 0x00 or a restart marker).  Some
    # files carry trailing bytes after it: those go to PIL, which reads them correctly.
    return data[:2] == b'\xff\xd8' and b'\xff\xd9' not in data[-4096:]


def pil_to_rgb_array(image):
    """A PIL image as HWC uint8 RGB, with 16-bit grayscale scaled (v >> 8) rather than clipped."""
    if image.mode in ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I'):
        gray = np.asarray(image).astype(np.int64)
        gray = (np.clip(gray, 0, 65535) >> 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if image.mode == 'F':
        gray = np.clip(np.asarray(image), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    return np.asarray(image.convert('RGB'))


def decode_image(data, max_pixels=DEFAULT_MAX_IMAGE_PIXELS):
    """HWC uint8 RGB array from the bytes of an image file; DecodeError if it cannot be decoded,
    ImageTooLargeError (before decoding) if its header declares more than `max_pixels` pixels."""
    if not data:
        raise DecodeError('empty file')
    check_pixels(data, max_pixels)
    if not _jpeg_looks_truncated(data):
        array = cv2.imdecode(np.frombuffer(data, np.uint8), _CV2_FLAGS)
        if array is not None and array.ndim == 3 and array.shape[2] == 3:
            return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    try:
        with _pil_open(data) as image:   # the pixel limit was applied above
            image.load()
            return pil_to_rgb_array(image)
    except Exception as e:   # PIL raises OSError, SyntaxError, ValueError, ... for bad files
        raise DecodeError(f'not a decodable image ({type(e).__name__}: {e})') from None
