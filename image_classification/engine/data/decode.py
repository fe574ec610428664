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
"""
import io

import cv2
import numpy as np
from PIL import Image

__all__ = ['DecodeError', 'decode_image', 'pil_to_rgb_array']

# One OpenCV thread per process, set before any OpenCV call: the loader workers are the
# parallelism, and a thread pool started in the parent deadlocks the workers forked from it
# (they hang for good in their first OpenCV call; seen with opencv-python 5.0).
cv2.setNumThreads(1)

_CV2_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION


class DecodeError(ValueError):
    """Bytes that are not a readable image."""


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


def decode_image(data):
    """HWC uint8 RGB array from the bytes of an image file; DecodeError if it cannot be decoded."""
    if not data:
        raise DecodeError('empty file')
    if not _jpeg_looks_truncated(data):
        array = cv2.imdecode(np.frombuffer(data, np.uint8), _CV2_FLAGS)
        if array is not None and array.ndim == 3 and array.shape[2] == 3:
            return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return pil_to_rgb_array(image)
    except Exception as e:   # PIL raises OSError, SyntaxError, ValueError, ... for bad files
        raise DecodeError(f'not a decodable image ({type(e).__name__}: {e})') from None
