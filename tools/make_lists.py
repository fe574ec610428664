"""Write PaddleViT list files for a torchvision ImageFolder tree.

    python tools/make_lists.py DIR [--force]

DIR holds train/<class>/**/<image> and val/<class>/**/<image> (the layout of the
official PerViT, SP-ViT, VVT and DeiT READMEs).  Writes, into DIR:

    train_list.txt, val_list.txt   "train/<class>/<file> <label>" per line: paths relative
                                   to DIR, label 0-based (what -data_path DIR reads)
    labels.txt                     the class names, line i = class i (tools/predict.py --labels)

The tree is read by the same code as training reads it without lists
(engine/data/image_folder.py): class index = sorted folder names of train/,
files kept by image extension, the same checks and messages.  A split folder
that does not exist gets no list (say, val/ only: val_list.txt only).  Existing
list files are kept unless --force is given.  Exit status 2 and one message for
a tree that cannot be used.
"""
import argparse
import os
import sys

import engine
engine.prepare_process()   # before paddle is imported
from engine.data.image_folder import SPLITS, folder_classes, scan_split, write_labels  # noqa: E402
from engine.errors import USER_ERROR_EXIT_CODE, UserError  # noqa: E402
from engine.data.dataset import DataError  # noqa: E402

__all__ = ['make_lists', 'main']


def _check_writable(path):
    """A path the list parser reads back unchanged (it strips each line and takes the last
    token as the label), else DataError."""
    if path != path.strip() or '\n' in path or '\r' in path:
        raise DataError(f'{path!r}: a path that starts or ends with white space or holds a line '
                        f'break cannot be written to a list file; rename it')


def _write_atomically(path, lines):
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w', encoding='utf-8') as f:
        f.writelines(lines)
    os.replace(tmp, path)


def make_lists(root, train_list='train_list.txt', val_list='val_list.txt', force=False, log=print):
    """Write the list files and labels.txt of the class-folder tree `root`; returns
    {split: number of samples written}.  DataError for an unusable tree or existing lists
    (without `force`)."""
    names = {'train': train_list, 'val': val_list}
    classes, source = folder_classes(root)
    splits = [split for split in SPLITS if os.path.isdir(os.path.join(root, split))]
    existing = [names[s] for s in splits if os.path.exists(os.path.join(root, names[s]))]
    if existing and not force:
        raise DataError(f'{root} already has {", ".join(existing)}: pass --force to overwrite '
                        f'(training reads the lists, not the folders, while they exist)')
    scanned = {split: scan_split(root, split, classes, source) for split in splits}   # check all, then write
    for split in scanned.values():
        for path, _label in split.samples:
            _check_writable(path)
    written = {}
    for split_name, split in scanned.items():
        log(split.describe())
        for warning in split.warnings():
            log(f'WARNING: {warning}')
        path = os.path.join(root, names[split_name])
        _write_atomically(path, [f'{p} {label}\n' for p, label in split.samples])
        written[split_name] = len(split.samples)
        log(f'wrote {path} ({len(split.samples)} lines)')
    write_labels(os.path.join(root, 'labels.txt'), classes)
    log(f'wrote {os.path.join(root, "labels.txt")} ({len(classes)} classes, from {source}/)')
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('root', metavar='DIR', help='folder holding train/<class>/ and val/<class>/')
    parser.add_argument('--train_list', default='train_list.txt', help='name of the training list (DATA.TRAIN_LIST)')
    parser.add_argument('--val_list', default='val_list.txt', help='name of the validation list (DATA.VAL_LIST)')
    parser.add_argument('--force', action='store_true', help='overwrite existing list files')
    args = parser.parse_args(argv)
    try:
        make_lists(args.root, args.train_list, args.val_list, args.force)
    except UserError as e:
        print(f'{parser.prog}: error: {e}', file=sys.stderr)
        return USER_ERROR_EXIT_CODE
    return 0


if __name__ == '__main__':
    sys.exit(main())
