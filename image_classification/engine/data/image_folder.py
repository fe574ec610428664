"""Class-folder data: torchvision's ImageFolder layout, read without list files.

    <DATA_PATH>/train/<class>/**/<image>      <DATA_PATH>/val/<class>/**/<image>

is the layout in which the official PerViT, SP-ViT, VVT and DeiT code read
ImageNet.  It is read directly here, and `tools/make_lists.py` writes the
PaddleViT list files of the same samples (`scan_split` is the one reader of
both, so the two always agree).

The rules, and where they differ from torchvision's `ImageFolder`:

- Class index = position in the sorted (code point order) folder names, as
  torchvision does.  Unlike torchvision, which sorts each split's own folders,
  the class list comes from `train/` for BOTH splits (from `val/` only when
  there is no `train/`, for an evaluation-only copy): torchvision users who
  evaluate on a val folder missing one class get every later label shifted by
  one, silently.  Hence:
  * a class folder in `val/` that `train/` lacks is an error (no index the
    model was trained for);
  * a class folder in `train/` that `val/` lacks is allowed, with a warning: a
    validation subset is legitimate, and the indices stay the training ones.
- Files are kept by extension, case-insensitively, as torchvision does
  (`IMAGE_EXTENSIONS`, torchvision's list); other files are skipped and
  counted in the log (torchvision skips them silently).  Class folders are
  walked recursively, following symbolic links, files in sorted order.
- Hidden entries (name starting with '.': `.ipynb_checkpoints`, `.DS_Store`)
  are ignored; torchvision would make `.ipynb_checkpoints` a class.
- A class folder with no image file is an error, as in torchvision (its
  `allow_empty=False` default), and so is a split folder with no class folder.
"""
import os

from .dataset import DataError, ImageListDataset, _summarise

__all__ = ['IMAGE_EXTENSIONS', 'SPLITS', 'FolderSplit', 'folder_classes', 'scan_split',
           'has_class_folders', 'ImageFolderDataset', 'write_labels']

# torchvision.datasets.folder.IMG_EXTENSIONS; every one is decoded by engine.data.decode
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')
SPLITS = ('train', 'val')


def _visible_dirs(folder):
    """Sorted names of the non-hidden sub-folders of `folder` (symbolic links followed)."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if not e.name.startswith('.') and e.is_dir())


def has_class_folders(root):
    """Whether `root` holds a `train/` or `val/` folder (the ImageFolder layout)."""
    return any(os.path.isdir(os.path.join(root, split)) for split in SPLITS)


def folder_classes(root):
    """(class names, the split they were read from): `train/`'s sub-folders, or `val/`'s
    when there is no `train/`.  DataError when neither exists or holds a class folder."""
    for split in SPLITS:
        folder = os.path.join(root, split)
        if os.path.isdir(folder):
            classes = _visible_dirs(folder)
            if not classes:
                raise DataError(f'{folder}: no class folder in it; the ImageFolder layout is '
                                f'{split}/<class>/<image> (one sub-folder per class)')
            return classes, split
    raise DataError(f'{root}: neither train/ nor val/ found; the ImageFolder layout is '
                    f'{root}/train/<class>/<image> and {root}/val/<class>/<image>')


class FolderSplit:
    """One split of a class-folder tree, as read by `scan_split`.

    samples: [(path relative to the root with '/' separators, label)], class by
    class, files in sorted order; classes: the class names (index = label);
    class_source: the split the class list was read from; skipped: paths of the
    files skipped as not images; missing_classes: classes with no folder in this split.
    """

    def __init__(self, root, split, classes, class_source, samples, skipped, missing_classes):
        self.root, self.split, self.classes, self.class_source = root, split, classes, class_source
        self.samples, self.skipped, self.missing_classes = samples, skipped, missing_classes

    def describe(self):
        """One log line: images, classes, where the class list came from, skipped files."""
        text = (f'class folders {os.path.join(self.root, self.split)}: {len(self.samples)} images in '
                f'{len(self.classes) - len(self.missing_classes)} classes (class index = sorted '
                f'folder names of {self.class_source}/, {len(self.classes)} classes)')
        if self.skipped:
            examples = ', '.join(self.skipped[:3])
            text += (f'; skipped {len(self.skipped)} file(s) that are not images by extension '
                     f'(e.g. {examples}; images are {" ".join(IMAGE_EXTENSIONS)})')
        return text

    def warnings(self):
        """Warnings about the split a user should see (classes absent from it)."""
        if not self.missing_classes:
            return []
        names = ', '.join(self.missing_classes[:10]) + (' ...' if len(self.missing_classes) > 10 else '')
        return [f'{len(self.missing_classes)} of the {len(self.classes)} classes of '
                f'{self.class_source}/ have no folder in {self.split}/ ({names}): they are not '
                f'evaluated; the other labels keep their {self.class_source}/ indices']


def _walk_images(folder, root):
    """(image paths relative to `root`, skipped paths) under `folder`, recursively, sorted."""
    images, skipped = [], []
    for current, dirs, files in sorted(os.walk(folder, followlinks=True)):
        dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
        for name in sorted(files):
            if name.startswith('.'):
                continue
            rel = os.path.relpath(os.path.join(current, name), root).replace(os.sep, '/')
            (images if name.lower().endswith(IMAGE_EXTENSIONS) else skipped).append(rel)
    return images, skipped


def scan_split(root, split, classes=None, class_source='train'):
    """Read `root/split/<class>/...` into a FolderSplit; DataError for a tree that cannot be
    used (see the module docstring).  `classes` (read from the split `class_source`)
    defaults to `folder_classes(root)`."""
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    if classes is None:
        classes, class_source = folder_classes(root)
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        raise DataError(f'{folder}: not found; the ImageFolder layout needs {root}/{split}/<class>/<image> '
                        f'(found: {", ".join(sorted(os.listdir(root))[:10]) or "nothing"})')
    present = _visible_dirs(folder)
    if not present:
        raise DataError(f'{folder}: no class folder in it; the ImageFolder layout is '
                        f'{split}/<class>/<image> (one sub-folder per class)')
    index = {name: i for i, name in enumerate(classes)}
    unknown = [name for name in present if name not in index]
    if unknown:
        raise DataError(_summarise(
            [os.path.join(folder, name) for name in unknown],
            f'class folder(s) in {split}/ that {class_source}/ does not have (a class the '
            f'model is not trained for has no label; remove them or add them to {class_source}/)'))
    samples, skipped, empty = [], [], []
    for name in present:
        images, others = _walk_images(os.path.join(folder, name), root)
        if not images:
            empty.append(f'{os.path.join(folder, name)} ({len(others)} other file(s))')
        samples += [(path, index[name]) for path in images]
        skipped += others
    if empty:
        raise DataError(_summarise(empty, f'class folder(s) in {folder} with no image (images are '
                                          f'files ending in {" ".join(IMAGE_EXTENSIONS)}, any case)'))
    present = set(present)
    missing = [name for name in classes if name not in present]
    return FolderSplit(root, split, list(classes), class_source, samples, skipped, missing)


class ImageFolderDataset(ImageListDataset):
    """An `ImageListDataset` whose samples come from a class-folder split instead of a list
    file: same decoding, transforms, seeded augmentation and DATA.SKIP_BAD_IMAGES handling.
    Messages name the image path where a list dataset names the list file and line."""

    def __init__(self, folder_split, num_classes, transform=None, **options):
        """`options`: ImageListDataset's (skip_bad_images, max_image_pixels, drop_skipped)."""
        if len(folder_split.classes) > num_classes:
            raise DataError(f'{os.path.join(folder_split.root, folder_split.class_source)} holds '
                            f'{len(folder_split.classes)} class folders but MODEL.NUM_CLASSES is '
                            f'{num_classes}: pass -num_classes {len(folder_split.classes)}')
        self.folder_split = folder_split
        self.classes = folder_split.classes
        super().__init__(folder_split.root, os.path.join(folder_split.root, folder_split.split),
                         num_classes, transform, check_files=False, **options)

    def _read_samples(self, list_file, num_classes):
        # line numbers are positions in the split (1-based), used only by where()
        return [(path, label, i + 1) for i, (path, label) in enumerate(self.folder_split.samples)]

    def where(self, index):
        return self.path(index)


def write_labels(path, classes):
    """Write the class names to `path`, one per line (line i = class i): the format
    tools/predict.py --labels reads."""
    bad = [name for name in classes if '\n' in name or '\r' in name]
    if bad:
        raise DataError(f'class folder name(s) with a line break cannot be written to {path}: {bad[:3]}')
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
        f.writelines(name + '\n' for name in classes)
