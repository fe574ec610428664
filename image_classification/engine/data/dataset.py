"""The image-list dataset: PaddleViT's `train_list.txt` / `val_list.txt` layout.

A list file holds one sample per line, `relative/path label`: the label is the
LAST whitespace-separated token (so a path may contain spaces), 0-based, and
the path is relative to DATA.DATA_PATH (an absolute path is used as is).
Blank lines, surrounding spaces or tabs, Windows line ends and a UTF-8 byte
order mark are accepted.

Errors are found as early as they can be, and always name the list file and
line:
- at construction, the whole list is parsed: a malformed line or a label
  outside [0, MODEL.NUM_CLASSES) is an error (the first ten are listed);
- at construction, every image is checked to exist.  This costs one directory
  listing per distinct folder (ImageNet train: 1000 listings, about a second),
  not one `stat` per file, and turns the most common data mistake (a wrong
  DATA_PATH or a half-copied dataset) into an immediate error instead of a
  crash hours later;
- an image that cannot be read or decoded raises `BadImageError` inside the
  loader worker, with the list file, line and path in its message; the
  dataset keeps the error (`take_error()`) so that engine.data.DataLoader
  raises it with that message in the main process.  So does an image whose
  header declares more than DATA.MAX_IMAGE_PIXELS pixels, found before it is
  decoded (see decode.py).

With DATA.SKIP_BAD_IMAGES, missing files are dropped at construction (logged
once, counted in `num_missing`), and an undecodable image is logged and
skipped: for training (`drop_skipped=False`) it is replaced by the next
readable sample in the list, so batches stay full; for evaluation
(`drop_skipped=True`) the sample is None, which the val loader leaves out of
its batch, so that no image is scored in place of another.  Skipped images are
counted in a counter shared with the worker processes
(`ImageListDataset.take_skipped()`, `skipped_report()`).

Samples are stored compactly (one bytes buffer for all paths, numpy arrays for
labels and line numbers) so forked workers do not copy them page by page as
reference counts change.
"""
import logging
import multiprocessing
import os
import pickle
import struct

import numpy as np
import paddle

from ..errors import UserError
from .decode import DEFAULT_MAX_IMAGE_PIXELS, DecodeError, decode_image

__all__ = ['DataError', 'ListFileError', 'MissingImageError', 'BadImageError',
           'parse_list_file', 'ImageListDataset', 'skipped_report']

logger = logging.getLogger(__name__)

_MAX_LISTED = 10          # errors quoted in one message
_MAX_CONSECUTIVE_BAD = 50  # SKIP_BAD_IMAGES gives up after this many bad samples in a row
_ERROR_BYTES = 4096        # room for a worker's UserError (its class and message, pickled)


class DataError(UserError, ValueError):
    """A problem with the dataset itself (list file or image), not with the code."""


class ListFileError(DataError):
    """A list file that cannot be parsed, or a label out of range."""


class MissingImageError(DataError, FileNotFoundError):
    """Images named in a list file that do not exist."""


class BadImageError(DataError):
    """An image that cannot be read or decoded (raised inside the loader worker)."""


def _summarise(problems, what):
    shown = '\n  '.join(problems[:_MAX_LISTED])
    more = f'\n  ... and {len(problems) - _MAX_LISTED} more' if len(problems) > _MAX_LISTED else ''
    return f'{len(problems)} {what}:\n  {shown}{more}'


def parse_list_file(list_file, num_classes):
    """[(path, label, line_number)] from a list file; raises ListFileError naming file and line."""
    try:
        with open(list_file, 'rb') as f:
            raw = f.read()
    except FileNotFoundError:
        raise ListFileError(f'list file not found: {list_file} (check DATA.DATA_PATH and '
                            f'DATA.TRAIN_LIST / DATA.VAL_LIST)') from None
    if raw.startswith(b'\xef\xbb\xbf'):
        raw = raw[3:]
    samples, problems = [], []
    for number, line in enumerate(raw.split(b'\n'), start=1):
        try:
            text = line.decode('utf-8').strip()
        except UnicodeDecodeError as e:
            problems.append(f'{list_file}:{number}: not UTF-8 text ({e.reason} at byte {e.start})')
            continue
        if not text:
            continue
        parts = text.rsplit(None, 1)
        if len(parts) != 2:
            problems.append(f'{list_file}:{number}: expected "relative/path label", got {text!r}')
            continue
        path, label_text = parts
        try:
            label = int(label_text)
        except ValueError:
            problems.append(f'{list_file}:{number}: label {label_text!r} is not an integer '
                            f'(line {text!r})')
            continue
        if not 0 <= label < num_classes:
            problems.append(f'{list_file}:{number}: label {label} is outside [0, {num_classes}) '
                            f'(MODEL.NUM_CLASSES = {num_classes}; labels are 0-based)')
            continue
        samples.append((path, label, number))
    if problems:
        raise ListFileError(_summarise(problems, f'bad line(s) in {list_file}'))
    if not samples:
        raise ListFileError(f'{list_file}: no samples (the file is empty)')
    return samples


def _missing(root, samples):
    """Indices of samples whose file does not exist: one listing per folder, not a stat per file."""
    by_folder = {}
    for i, (path, _label, _line) in enumerate(samples):
        full = os.path.join(root, path)
        by_folder.setdefault(os.path.dirname(full), []).append((i, os.path.basename(full)))
    missing = []
    for folder, entries in by_folder.items():
        try:
            names = set(os.listdir(folder or '.'))
        except OSError:
            names = set()
        missing += [i for i, name in entries if name not in names]
    return sorted(missing)


class ImageListDataset(paddle.io.Dataset):
    """Images and labels from a PaddleViT list file; `dataset[i]` -> (CHW float32 image, label).

    `transform(image_uint8_hwc_rgb, rng)` turns the decoded image into the
    model input; None returns the decoded image.  An index may also be a pair
    `(index, seed)`: the sample's random augmentation then uses
    `numpy.random.default_rng(seed)`, which is how `build_dataloader` makes the
    augmentation of each sample depend only on (SEED, epoch, index), whatever
    the number of workers or processes.

    `skip_bad_images`: an unreadable image is logged and counted instead of
    raising BadImageError; `drop_skipped` then decides what takes its place:
    nothing (`dataset[i]` is None; for evaluation) or the next readable sample
    (for training).
    """

    accepts_seeded_index = True

    def __init__(self, root, list_file, num_classes, transform=None, skip_bad_images=False,
                 check_files=True, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS, drop_skipped=False):
        super().__init__()
        if max_image_pixels is not None and (isinstance(max_image_pixels, bool)
                                             or not isinstance(max_image_pixels, int) or max_image_pixels < 0):
            raise DataError(f'DATA.MAX_IMAGE_PIXELS must be a pixel count >= 0, or None or 0 for no limit; '
                            f'got {max_image_pixels!r}')
        self.root = root
        self.list_file = list_file
        self.transform = transform
        self.skip_bad_images = skip_bad_images
        self.max_image_pixels = max_image_pixels
        self.drop_skipped = drop_skipped
        samples = self._read_samples(list_file, num_classes)
        self.num_missing = 0   # dropped at construction (only with skip_bad_images)
        if check_files:
            missing = _missing(root, samples)
            if missing:
                problems = [f'{list_file}:{samples[i][2]}: image not found: '
                            f'{os.path.join(root, samples[i][0])}' for i in missing]
                if not skip_bad_images:
                    raise MissingImageError(_summarise(
                        problems, f'missing image(s) listed in {list_file} '
                                  f'(root {root!r}; DATA.SKIP_BAD_IMAGES=True drops them)'))
                logger.warning(_summarise(problems, 'missing image(s) dropped (DATA.SKIP_BAD_IMAGES)'))
                if len(missing) == len(samples):
                    raise MissingImageError(f'{list_file}: none of the listed images exist under {root!r}')
                dropped = set(missing)
                samples = [s for i, s in enumerate(samples) if i not in dropped]
                self.num_missing = len(missing)
        encoded = [s[0].encode('utf-8') for s in samples]
        self._paths = b''.join(encoded)
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self._offsets[1:])
        self.labels = np.array([s[1] for s in samples], dtype=np.int64)
        self._lines = np.array([s[2] for s in samples], dtype=np.int64)
        # shared with forked or spawned worker processes
        self._skipped = multiprocessing.get_context().Value('q', 0)
        self._error = multiprocessing.get_context().Array('c', _ERROR_BYTES)
        self._fallback_rng = None

    def _read_samples(self, list_file, num_classes):
        """[(path, label, line)] of the dataset: the parsed list file (a subclass may read
        its samples elsewhere, see image_folder.ImageFolderDataset)."""
        return parse_list_file(list_file, num_classes)

    def __len__(self):
        return len(self.labels)

    def path(self, index):
        """Full path of sample `index`."""
        rel = self._paths[self._offsets[index]:self._offsets[index + 1]].decode('utf-8')
        return os.path.join(self.root, rel)

    def where(self, index):
        """'list_file:line' of sample `index`, for messages."""
        return f'{self.list_file}:{self._lines[index]}'

    def load(self, index):
        """The decoded image of sample `index` (HWC uint8 RGB); BadImageError names file and line."""
        path = self.path(index)
        try:
            with open(path, 'rb') as f:
                data = f.read()
            return decode_image(data, self.max_image_pixels)
        except (OSError, DecodeError) as e:
            raise BadImageError(f'{self.where(index)}: cannot read image {path}: {e}') from None

    def _rng(self, seed):
        if seed is not None:
            return np.random.default_rng(seed)
        if self._fallback_rng is None or self._fallback_rng[0] != os.getpid():
            self._fallback_rng = (os.getpid(), np.random.default_rng())
        return self._fallback_rng[1]

    def __getitem__(self, key):
        try:
            return self._getitem(key)
        except UserError as e:
            # Paddle rebuilds a worker's exception in the main process as its type with the
            # worker's traceback for a message: keep the error itself for
            # engine.data.DataLoader to raise there (see take_error).  Other exceptions are
            # bugs or resource errors, whose traceback is what the user needs.
            self._keep_error(e)
            raise

    def _keep_error(self, error):
        blob = pickle.dumps((type(error), str(error)[:_ERROR_BYTES // 2]))
        if len(blob) + 4 > _ERROR_BYTES:
            return
        with self._error.get_lock():
            self._error[:len(blob) + 4] = struct.pack('<I', len(blob)) + blob

    def _getitem(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        index = int(index)
        for _attempt in range(_MAX_CONSECUTIVE_BAD):
            try:
                image = self.load(index)
            except BadImageError as e:
                if not self.skip_bad_images:
                    raise
                with self._skipped.get_lock():
                    self._skipped.value += 1
                logger.warning(f'skipped (DATA.SKIP_BAD_IMAGES): {e}')
                if self.drop_skipped:
                    return None
                index = (index + 1) % len(self)
                continue
            if self.transform is None:
                return image, int(self.labels[index])
            try:
                return self.transform(image, self._rng(seed)), int(self.labels[index])
            except MemoryError:
                raise   # a resource error, not this image's: keep its type
            except Exception as e:
                raise RuntimeError(f'{self.where(index)}: transforming {self.path(index)} '
                                   f'(image shape {image.shape}) failed: {type(e).__name__}: {e}') from e
        raise BadImageError(f'{_MAX_CONSECUTIVE_BAD} unreadable images in a row, the last at '
                            f'{self.where(index)} ({self.path(index)}): is DATA.DATA_PATH right?')

    def take_error(self):
        """The UserError this dataset last raised, in any process, rebuilt here; or None (and clear it)."""
        with self._error.get_lock():
            size = struct.unpack('<I', self._error[:4])[0]
            blob = self._error[4:4 + size]
            self._error[:4] = bytes(4)
        if not size:
            return None
        try:
            cls, message = pickle.loads(blob)
            return cls(message)
        except Exception:   # a UserError subclass that cannot be rebuilt from its message
            return None

    @property
    def skipped(self):
        """Bad images skipped so far in this process and its workers."""
        return self._skipped.value

    def take_skipped(self):
        """Bad images skipped since the last call (and reset the count)."""
        with self._skipped.get_lock():
            count, self._skipped.value = self._skipped.value, 0
        return count


def skipped_report(dataset):
    """', skipped N bad images' since the last call (empty when none or not counted)."""
    take = getattr(dataset, 'take_skipped', None)
    count = take() if take is not None else 0
    return f', skipped {count} bad image(s) (DATA.SKIP_BAD_IMAGES)' if count else ''
