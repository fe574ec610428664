"""The list dataset of the training images with their label maps."""
import os

from ..data import dataset as dset
from .label_maps import LABEL_REGIONS, load_label_map
from .transforms import ImageWithLabelMap, TokenLabelTransform

__all__ = ['TokenLabelDataset', 'build_token_label_dataset']


# where the label map of the image at list path <stem>.<ext> lives under the label folder
_LAYOUTS = (
    ('ours: <list path>.npz', lambda stem: stem + '.npz'),
    ('official: <class folder>/<stem>.pt', lambda stem: '/'.join(stem.split('/')[-2:]) + '.pt'),
)


def _summary(problems, what, limit=10):
    more = f'\n  ... and {len(problems) - limit} more' if len(problems) > limit else ''
    return f'{len(problems)} {what}:\n  ' + '\n  '.join(problems[:limit]) + more


class TokenLabelDataset(dset.ImageListDataset):
    """The list dataset of the training images with their label maps:
    `dataset[i]` -> (CHW float32 image, (label, {'scores', 'indices', 'box'})).

    Label maps are looked up as `<label_dir>/<list path without extension>.npz`
    (ours), or in the official layout `<label_dir>/<class folder>/<stem>.pt`; the
    layout is found from the first sample, and every sample's map is checked to
    exist at construction (one directory listing per folder).  An unreadable map
    is a BadImageError: DATA.SKIP_BAD_IMAGES skips its sample like a bad image.
    """

    def __init__(self, root, list_file, num_classes, label_dir, transform, label_region='center_square',
                 skip_bad_images=False):
        if label_region not in LABEL_REGIONS:
            raise ValueError(f'TRAIN.TOKEN_LABEL.LABEL_REGION {label_region!r}: expected one of {LABEL_REGIONS}')
        if not os.path.isdir(label_dir):
            raise dset.DataError(f'token-label folder not found: {label_dir} (TRAIN.TOKEN_LABEL.DATA_DIR); '
                                 f'make it with tools/generate_label.py')
        super().__init__(root, list_file, num_classes, transform, skip_bad_images=skip_bad_images)
        self.label_dir = label_dir
        self.label_region = label_region
        self._layout = self._check_label_maps()

    def _stem(self, index):
        path, prefix = self.path(index), os.path.join(self.root, '')
        rel = path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, self.root)
        return os.path.splitext(rel)[0].replace(os.sep, '/')

    def _check_label_maps(self):
        first = self._stem(0)
        layout = next((i for i, (_, name) in enumerate(_LAYOUTS)
                       if os.path.isfile(os.path.join(self.label_dir, name(first)))), None)
        if layout is None:
            raise dset.DataError(f'no label map for {first} under {self.label_dir} (looked for '
                                 + ', '.join(name(first) for _, name in _LAYOUTS)
                                 + '): make them with tools/generate_label.py')
        name = _LAYOUTS[layout][1]
        listings, missing = {}, []
        for i in range(len(self)):
            path = os.path.join(self.label_dir, name(self._stem(i)))
            folder = os.path.dirname(path)
            if folder not in listings:
                listings[folder] = set(os.listdir(folder)) if os.path.isdir(folder) else set()
            if os.path.basename(path) not in listings[folder]:
                missing.append(f'{self.where(i)}: {path}')
        if missing:
            raise dset.DataError(_summary(missing, f'training image(s) without a label map in {self.label_dir} '
                                          f'(layout {_LAYOUTS[layout][0]})'))
        return layout

    def label_map_path(self, index):
        return os.path.join(self.label_dir, _LAYOUTS[self._layout][1](self._stem(index)))

    def load(self, index):
        image = super().load(index)
        path = self.label_map_path(index)
        try:
            label_map = load_label_map(path, (image.shape[1], image.shape[0]), self.label_region)
        except (OSError, ValueError, KeyError) as e:
            raise dset.BadImageError(f'{self.where(index)}: cannot read label map {path}: {e}') from None
        return ImageWithLabelMap(image, label_map)

    def __getitem__(self, key):
        (image, label_map), label = super().__getitem__(key)
        return image, (label, label_map)


def build_token_label_dataset(config, label_dir, label_region='center_square'):
    """The TokenLabelDataset of DATA.TRAIN_LIST under DATA.DATA_PATH, TRAIN.* augmentation."""
    root = config.DATA.DATA_PATH
    if not root:
        raise dset.DataError('DATA.DATA_PATH is not set: pass -data_path')
    from ..data import data_layout
    if data_layout(config) == 'folder':
        raise dset.DataError(f'{root}: Token Labeling reads list files (tools/generate_label.py keys the '
                             f'label maps by list path), and this data is class folders: write the lists '
                             f'with python tools/make_lists.py {root} (the same samples and labels)')
    return TokenLabelDataset(root, os.path.join(root, config.DATA.TRAIN_LIST), config.MODEL.NUM_CLASSES,
                             label_dir, TokenLabelTransform.from_config(config), label_region,
                             skip_bad_images=config.DATA.SKIP_BAD_IMAGES)
