"""Class-folder data (torchvision's ImageFolder layout), tools/make_lists.py and -dataset.

Every tree is made here, a few PNGs each; the expectations are written out by hand.
"""
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest
from PIL import Image

from engine import data
from engine.config import ConfigError, base_config, make_get_config
from engine.errors import USER_ERROR_EXIT_CODE
from engine.launcher import execute

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'tools'))
import make_lists  # noqa: E402

COLORS = {'cat': (220, 40, 40), 'dog': (40, 200, 40), 'zebra': (40, 60, 220)}


def png(path, color, seed=0, size=12):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 60, (size, size, 3), dtype=np.uint8)
    img[2:8, 3:9] = color
    Image.fromarray(img).save(path)


def make_tree(root, per_class=None):
    """train/{cat,dog,zebra} and val/{cat,dog,zebra}; `per_class` {(split, class): count}."""
    per_class = per_class or {}
    seed = 0
    for split, default in (('train', 4), ('val', 2)):
        for name, color in COLORS.items():
            for i in range(per_class.get((split, name), default)):
                seed += 1
                png(os.path.join(root, split, name, f'{i:02d}.png'), color, seed)
    return str(root)


def config_for(root, num_classes=3, **keys):
    c = base_config()
    c.DATA.DATA_PATH = str(root)
    c.DATA.IMAGE_SIZE = 12
    c.MODEL.NUM_CLASSES = num_classes
    for key, value in keys.items():
        section, leaf = key.split('__')
        c[section][leaf] = value
    return c


# --------------------------------------------------------------------------- the reader
def test_reader_classes_labels_and_counts(tmp_path):
    root = make_tree(tmp_path)
    # what torchvision also does: extension filter (any case), recursion into sub-folders
    png(tmp_path / 'train' / 'dog' / 'more' / 'deep.JPEG', COLORS['dog'], 99)
    (tmp_path / 'train' / 'cat' / 'README.txt').write_text('not an image')
    (tmp_path / 'train' / 'cat' / 'labels.csv').write_text('x')
    # hidden entries are ignored, not classes (torchvision would make this a class)
    png(tmp_path / 'train' / '.ipynb_checkpoints' / 'x.png', COLORS['cat'])
    (tmp_path / 'train' / 'dog' / '.DS_Store').write_bytes(b'\0')
    lines = []
    train = data.build_dataset(config_for(root), 'train', log=lines.append)
    assert isinstance(train, data.ImageFolderDataset)
    assert train.classes == ['cat', 'dog', 'zebra']
    assert train.labels.tolist() == [0] * 4 + [1] * 5 + [2] * 4
    assert [os.path.relpath(train.path(i), root) for i in (4, 8, 9)] == [
        'train/dog/00.png', 'train/dog/more/deep.JPEG', 'train/zebra/00.png']
    assert ('class folders %s/train: 13 images in 3 classes' % root) in lines[0]
    assert 'skipped 2 file(s) that are not images' in lines[0] and 'train/cat/README.txt' in lines[0]
    image, label = train[9]
    assert image.shape == (3, 12, 12) and image.dtype == np.float32 and label == 2
    val = data.build_dataset(config_for(root), 'val', log=lines.append)
    assert len(val) == 6 and val.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert val.where(5) == os.path.join(root, 'val', 'zebra', '01.png')


def test_val_labels_follow_train_when_val_lacks_a_class(tmp_path):
    """torchvision would index val's own folders (dog -> 0, zebra -> 1): here dog stays 1."""
    root = make_tree(tmp_path, {('val', 'cat'): 0})
    lines = []
    val = data.build_dataset(config_for(root), 'val', log=lines.append)
    assert val.labels.tolist() == [1, 1, 2, 2] and val.classes == ['cat', 'dog', 'zebra']
    assert any(line.startswith('WARNING: 1 of the 3 classes of train/ have no folder in val/ (cat)')
               for line in lines)


def test_eval_only_copy_takes_classes_from_val(tmp_path):
    root = make_tree(tmp_path)
    for name in COLORS:
        for f in os.listdir(tmp_path / 'train' / name):
            os.remove(tmp_path / 'train' / name / f)
        os.rmdir(tmp_path / 'train' / name)
    os.rmdir(tmp_path / 'train')
    lines = []
    val = data.build_dataset(config_for(root), 'val', log=lines.append)
    assert val.labels.tolist() == [0, 0, 1, 1, 2, 2] and 'sorted folder names of val/' in lines[0]
    with pytest.raises(data.DataError, match=r'/train: not found; the ImageFolder layout needs'):
        data.build_dataset(config_for(root), 'train')


# --------------------------------------------------------------------------- bad trees
def _remove_images(folder):
    for f in os.listdir(folder):
        os.remove(os.path.join(folder, f))


@pytest.mark.parametrize('case, error', [
    ('empty class', r"1 class folder\(s\) in .*/train with no image .*\n  .*/train/dog \(0 other file\(s\)\)"),
    ('class of text files', r"with no image \(images are files ending in \.jpg .*\n  .*/train/dog \(1 other file"),
    ('class in val only', r"1 class folder\(s\) in val/ that train/ does not have.*\n  .*/val/lion"),
    ('no split folders', r"neither train/ nor val/ found; the ImageFolder layout is"),
    ('no class folders', r"/train: no class folder in it"),
    ('too many classes', r"holds 3 class folders but MODEL.NUM_CLASSES is 2: pass -num_classes 3"),
])
def test_bad_tree_is_one_clear_data_error(tmp_path, case, error):
    root = str(tmp_path / 'd')
    num_classes = 3
    if case == 'no split folders':
        png(os.path.join(root, 'images', 'a.png'), COLORS['cat'])
    elif case == 'no class folders':
        png(os.path.join(root, 'train', 'a.png'), COLORS['cat'])
    else:
        make_tree(root)
    if case == 'empty class':
        _remove_images(os.path.join(root, 'train', 'dog'))
    elif case == 'class of text files':
        _remove_images(os.path.join(root, 'train', 'dog'))
        open(os.path.join(root, 'train', 'dog', 'notes.txt'), 'w').close()
    elif case == 'class in val only':
        png(os.path.join(root, 'val', 'lion', 'a.png'), COLORS['cat'])
    elif case == 'too many classes':
        num_classes = 2
    with pytest.raises(data.DataError, match=error):
        data.build_dataset(config_for(root, num_classes, DATA__DATASET='imagefolder'),
                           'train' if case != 'class in val only' else 'val')
    if case != 'too many classes':          # the list writer refuses the same trees the same way
        assert make_lists.main([root]) == USER_ERROR_EXIT_CODE
        assert not os.path.exists(os.path.join(root, 'train_list.txt'))


def test_lists_win_over_folders_and_dataset_chooses(tmp_path):
    root = make_tree(tmp_path)
    (tmp_path / 'train_list.txt').write_text('train/zebra/00.png 0\ntrain/cat/00.png 2\n')
    (tmp_path / 'val_list.txt').write_text('val/dog/00.png 1\n')
    lines = []
    train = data.build_dataset(config_for(root), 'train', log=lines.append)
    assert isinstance(train, data.ImageListDataset) and not isinstance(train, data.ImageFolderDataset)
    assert train.labels.tolist() == [0, 2]
    assert lines == [f'{root} holds list files (train_list.txt, val_list.txt) and class folders: reading '
                     f'the list files (-dataset imagefolder reads the folders)']
    folders = data.build_dataset(config_for(root, DATA__DATASET='imagefolder'), 'train')
    assert len(folders) == 12 and folders.labels[-1] == 2
    os.remove(tmp_path / 'train_list.txt')
    os.remove(tmp_path / 'val_list.txt')
    assert len(data.build_dataset(config_for(root), 'val')) == 6        # imagenet2012: folders now
    with pytest.raises(data.ListFileError, match='list file not found'):
        data.build_dataset(config_for(root, DATA__DATASET='imagelist'), 'val')


def test_data_path_with_neither_layout(tmp_path):
    (tmp_path / 'images').mkdir()
    with pytest.raises(data.DataError, match=r'no dataset found: expected the list files train_list.txt and '
                                             r'val_list.txt .* or the class folders train/<class>/'):
        data.build_dataset(config_for(tmp_path), 'train')
    with pytest.raises(data.DataError, match=r"DATA.DATA_PATH '.*/nowhere' is not a folder"):
        data.build_dataset(config_for(tmp_path / 'nowhere'), 'train')


def test_token_labeling_asks_for_lists(tmp_path):
    from engine.token_labeling import build_token_label_dataset
    root = make_tree(tmp_path)
    (tmp_path / 'maps').mkdir()
    with pytest.raises(data.DataError, match=rf'Token Labeling reads list files .* python tools/make_lists.py {root}'):
        build_token_label_dataset(config_for(root), str(tmp_path / 'maps'))


# --------------------------------------------------------------------------- tools/make_lists.py
def test_make_lists_writes_what_the_reader_sees(tmp_path, capsys):
    root = make_tree(tmp_path, {('val', 'zebra'): 0})
    png(tmp_path / 'train' / 'cat' / 'a b.png', COLORS['cat'], 7)     # a space in the name
    (tmp_path / 'val' / 'dog' / 'notes.md').write_text('x')
    folder = {split: data.build_dataset(config_for(root), split) for split in ('train', 'val')}
    assert make_lists.main([root]) == 0
    out = capsys.readouterr().out
    assert 'WARNING: 1 of the 3 classes of train/ have no folder in val/ (zebra)' in out
    assert 'skipped 1 file(s)' in out
    assert (tmp_path / 'labels.txt').read_text() == 'cat\ndog\nzebra\n'
    for split in ('train', 'val'):
        listed = data.build_dataset(config_for(root), split)     # the lists win now
        assert isinstance(listed, data.ImageListDataset) and not isinstance(listed, data.ImageFolderDataset)
        assert [listed.path(i) for i in range(len(listed))] == [folder[split].path(i) for i in range(len(folder[split]))]
        assert listed.labels.tolist() == folder[split].labels.tolist()
    assert (tmp_path / 'train_list.txt').read_text().splitlines()[:2] == ['train/cat/00.png 0', 'train/cat/01.png 0']
    # existing lists are kept unless --force
    (tmp_path / 'val_list.txt').write_text('val/dog/00.png 1\n')
    assert make_lists.main([root]) == USER_ERROR_EXIT_CODE
    assert 'already has train_list.txt, val_list.txt: pass --force' in capsys.readouterr().err
    assert make_lists.main([root, '--force']) == 0
    assert len((tmp_path / 'val_list.txt').read_text().splitlines()) == 4


@pytest.mark.slow
def test_make_lists_command_line(tmp_path):
    """As a user runs it: one message and exit status 2 for a bad tree, no traceback."""
    root = make_tree(tmp_path)
    png(str(tmp_path / 'val' / 'lion' / 'a.png'), COLORS['cat'])
    done = subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'make_lists.py'), root],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and 'Traceback' not in done.stderr
    assert 'make_lists.py: error: 1 class folder(s) in val/ that train/ does not have' in done.stderr


# --------------------------------------------------------------------------- -dataset
def test_dataset_flag_refuses_unknown_names(tmp_path):
    get_config = make_get_config(lambda c: None)

    class Args:
        cfg, dataset = None, 'foobar'

    with pytest.raises(ConfigError, match=r"-dataset: DATA.DATASET = 'foobar' is not allowed: must be one of "
                                          r"'imagenet2012' \(.*\); 'imagelist' \(.*\); 'imagefolder' \(.*\)"):
        get_config(args=Args)
    Args.dataset = 'cifar10'
    with pytest.raises(ConfigError, match=r"'cifar10' is not allowed: .*for CIFAR or any other set, write its "
                                          r"images as class folders and pass -dataset imagefolder"):
        get_config(args=Args)
    yaml_file = tmp_path / 'c.yaml'
    yaml_file.write_text('DATA:\n  DATASET: imagenet\n')
    with pytest.raises(ConfigError, match=rf"{yaml_file}, line 2: DATA.DATASET = 'imagenet' is not allowed"):
        get_config(str(yaml_file))
    for name in ('imagenet2012', 'imagelist', 'imagefolder'):
        Args.dataset = name
        assert get_config(args=Args).DATA.DATASET == name
    assert get_config().DATA.DATASET == 'imagenet2012'


# --------------------------------------------------------------------------- end to end
class _TinyNet(paddle.nn.Layer):
    CLASSIFIER = ('head',)

    def __init__(self, num_classes):
        super().__init__()
        self.conv = paddle.nn.Conv2D(3, 8, 3, stride=2)
        self.head = paddle.nn.Linear(8, num_classes)

    def forward(self, x):
        return self.head(paddle.nn.functional.relu(self.conv(x)).mean(axis=[2, 3]))


def _tiny_defaults(c):
    c.MODEL.TYPE, c.MODEL.NAME = 'Tiny', 'tiny'


def _train(root, out, *flags):
    cfg = os.path.join(out + '.yaml')   # -cfg is required: the Tiny family's defaults
    os.makedirs(os.path.dirname(cfg), exist_ok=True)
    with open(cfg, 'w') as f:
        f.write('MODEL:\n  TYPE: Tiny\n')
    argv = ['-cfg', cfg, '-data_path', root, '-output', out, '-batch_size', '4', '-num_classes', '3', *flags, '-opts',
            'DATA.IMAGE_SIZE', '12', 'DATA.NUM_WORKERS', '0', 'TRAIN.NUM_EPOCHS', '1',
            'TRAIN.WARMUP_EPOCHS', '0', 'TRAIN.MIXUP_ALPHA', '0.0', 'TRAIN.CUTMIX_ALPHA', '0.0',
            'TRAIN.RANDOM_ERASE_PROB', '0.0', 'TRAIN.RAND_AUGMENT', 'False', 'REPORT_FREQ', '1']
    return execute(make_get_config(_tiny_defaults), lambda c: _TinyNet(c.MODEL.NUM_CLASSES), argv=argv)


@pytest.mark.slow
def test_training_reads_class_folders_end_to_end(tmp_path):
    """One epoch on the folders, then on the lists make_lists.py wrote: the same run."""
    root = make_tree(tmp_path / 'data')
    folders = _train(root, str(tmp_path / 'folders'), '-dataset', 'imagefolder')
    assert folders['epoch'] == 1 and np.isfinite(folders['train_loss'])
    log = (tmp_path / 'folders' / 'log.txt').read_text()
    assert f'class folders {root}/train: 12 images in 3 classes' in log
    assert f'class folders {root}/val: 6 images in 3 classes' in log
    assert 'training: 12 images' in log and '(6 images scored)' in log
    assert (tmp_path / 'folders' / 'labels.txt').read_text() == 'cat\ndog\nzebra\n'
    assert make_lists.main([root]) == 0
    lists = _train(root, str(tmp_path / 'lists'))
    assert lists['train_loss'] == pytest.approx(folders['train_loss'], rel=1e-6)
    assert lists['acc1'] == pytest.approx(folders['acc1'])
    assert not (tmp_path / 'lists' / 'labels.txt').exists()
