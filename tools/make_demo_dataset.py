"""Write a small real image dataset in PaddleViT's list layout, with no download.

The images are scikit-learn's bundled handwritten digits (UCI optical
recognition of handwritten digits: 1797 scans of 8x8 pixels, 16 grey levels,
10 classes, about 180 per class), upscaled with bicubic interpolation and
written as 8-bit grayscale PNG files:

    <out>/train/<class>/<index>.png     80% of each class (stratified, seeded)
    <out>/val/<class>/<index>.png       the other 20%
    <out>/train_list.txt, val_list.txt  "train/3/0042.png 3" per line
    <out>/meta.json                     what was written, to make re-runs no-ops

    python tools/make_demo_dataset.py --out demo_data/digits [--size 32] [--val_fraction 0.2] [--seed 0]

A run whose outputs already exist and match the arguments does nothing.
"""
import argparse
import json
import os
import sys

import numpy as np

_FORMAT_VERSION = 1


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', required=True, help='output folder (becomes DATA.DATA_PATH)')
    p.add_argument('--size', type=int, default=32, help='side of the written images in pixels')
    p.add_argument('--val_fraction', type=float, default=0.2, help='share of each class held out')
    p.add_argument('--seed', type=int, default=0, help='seed of the train/val split')
    return p.parse_args(argv)


def split(labels, val_fraction, seed):
    """Stratified split: (train indices, val indices), each sorted."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = int(round(len(members) * val_fraction))
        val += members[:n_val].tolist()
        train += members[n_val:].tolist()
    return sorted(train), sorted(val)


def _complete(out, meta):
    """True when `out` holds exactly what `meta` describes."""
    try:
        with open(os.path.join(out, 'meta.json'), encoding='utf-8') as f:
            if json.load(f) != meta:
                return False
        for name, count in (('train_list.txt', meta['train']), ('val_list.txt', meta['val'])):
            with open(os.path.join(out, name), encoding='utf-8') as f:
                lines = [line.split() for line in f if line.strip()]
            if len(lines) != count or not all(os.path.isfile(os.path.join(out, p)) for p, _ in lines):
                return False
    except (OSError, ValueError, KeyError):
        return False
    return True


def _write_atomic(path, text):
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w', encoding='utf-8') as f:
        f.write(text)
    os.replace(tmp, path)


def make_dataset(out, size=32, val_fraction=0.2, seed=0):
    """Write the dataset (if not already there); returns its meta dict."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = digits.images, digits.target.astype(int)
    train, val = split(labels, val_fraction, seed)
    meta = {'source': 'sklearn.datasets.load_digits', 'version': _FORMAT_VERSION, 'size': size,
            'val_fraction': val_fraction, 'seed': seed, 'classes': int(labels.max()) + 1,
            'train': len(train), 'val': len(val)}
    if _complete(out, meta):
        return meta, False
    for name in ('meta.json', 'train_list.txt', 'val_list.txt'):   # incomplete until rewritten
        if os.path.exists(os.path.join(out, name)):
            os.remove(os.path.join(out, name))
    for subset, indices in (('train', train), ('val', val)):
        lines = []
        for i in indices:
            rel = f'{subset}/{labels[i]}/{i:04d}.png'
            path = os.path.join(out, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            pixels = np.round(images[i] * (255.0 / 16.0)).astype(np.uint8)   # 0..16 -> 0..255
            Image.fromarray(pixels, 'L').resize((size, size), Image.BICUBIC).save(path)
            lines.append(f'{rel} {labels[i]}\n')
        _write_atomic(os.path.join(out, f'{subset}_list.txt'), ''.join(lines))
    _write_atomic(os.path.join(out, 'meta.json'), json.dumps(meta, indent=1))
    return meta, True


def main(argv=None):
    args = parse_args(argv)
    meta, written = make_dataset(args.out, args.size, args.val_fraction, args.seed)
    state = 'wrote' if written else 'already complete:'
    print(f'{state} {args.out}: {meta["train"]} train / {meta["val"]} val images, '
          f'{meta["classes"]} classes, {meta["size"]}x{meta["size"]} grayscale PNG '
          f'(sklearn handwritten digits, split seed {meta["seed"]})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
