"""Write a small synthetic segmentation set in the ADE20K folder layout (the segmentation demo's data).

Each image (96 x 128, non-square on purpose) is a textured background with 1-3
shapes on it.  Label values, as in ADE20K annotations before `reduce_zero_label`:
    0  unlabelled: a 2-pixel frame around the image (so the reduction is exercised)
    1  background (random-colour noise)
    2  disc      (horizontal stripes of a random colour pair)
    3  square    (checkerboard of a random colour pair)
    4  triangle  (dots of a random colour pair)
Colours are random, so a model must use shape and texture, not colour.  After
`reduce_zero_label` the model sees 4 classes (SEG.NUM_CLASSES 4).

    python make_synthetic_dataset.py --out demo_data/shapes --train 160 --val 40
"""
import argparse
import os

import cv2
import numpy as np

HEIGHT, WIDTH = 96, 128
NUM_CLASSES = 4   # after reduce_zero_label


def texture(kind, h, w, rng):
    a, b = rng.randint(0, 256, 3), rng.randint(0, 256, 3)
    ys, xs = np.mgrid[:h, :w]
    period = rng.randint(3, 6)
    if kind == 'stripes':
        mask = (ys // period) % 2 == 0
    elif kind == 'checker':
        mask = ((ys // period) + (xs // period)) % 2 == 0
    else:   # dots
        mask = ((ys % period) < 2) & ((xs % period) < 2)
    return np.where(mask[..., None], a, b).astype(np.uint8)


def shape_mask(kind, rng):
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    size = rng.randint(14, 30)
    cy, cx = rng.randint(size, HEIGHT - size), rng.randint(size, WIDTH - size)
    if kind == 'disc':
        cv2.circle(mask, (cx, cy), size, 1, -1)
    elif kind == 'square':
        cv2.rectangle(mask, (cx - size, cy - size), (cx + size, cy + size), 1, -1)
    else:
        points = np.array([[cx, cy - size], [cx - size, cy + size], [cx + size, cy + size]], np.int32)
        cv2.fillPoly(mask, [points], 1)
    return mask.astype(bool)


SHAPES = (('disc', 'stripes', 2), ('square', 'checker', 3), ('triangle', 'dots', 4))


def make_sample(rng):
    """(RGB image, label map) of one synthetic scene."""
    noise = rng.randint(0, 256, (HEIGHT // 4 + 1, WIDTH // 4 + 1, 3)).astype(np.uint8)
    image = cv2.resize(noise, (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR)
    label = np.ones((HEIGHT, WIDTH), np.uint8)
    for index in rng.choice(len(SHAPES), rng.randint(1, 4), replace=False):
        kind, tex, value = SHAPES[index]
        mask = shape_mask(kind, rng)
        image[mask] = texture(tex, HEIGHT, WIDTH, rng)[mask]
        label[mask] = value
    label[:2], label[-2:], label[:, :2], label[:, -2:] = 0, 0, 0, 0
    return image, label


def write_split(root, split, count, rng):
    image_dir, label_dir = (os.path.join(root, kind, split) for kind in ('images', 'annotations'))
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(label_dir, exist_ok=True)
    for i in range(count):
        image, label = make_sample(rng)
        name = f'shapes_{split}_{i:05d}'
        cv2.imwrite(os.path.join(image_dir, name + '.png'), image[..., ::-1])   # lossless, RGB -> BGR file
        cv2.imwrite(os.path.join(label_dir, name + '.png'), label)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', required=True, help='dataset root (ADE20K layout)')
    parser.add_argument('--train', type=int, default=160)
    parser.add_argument('--val', type=int, default=40)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.RandomState(args.seed)
    write_split(args.out, 'training', args.train, rng)
    write_split(args.out, 'validation', args.val, rng)
    print(f'{args.train} training and {args.val} validation images ({HEIGHT}x{WIDTH}, '
          f'{NUM_CLASSES} classes after reduce_zero_label) in {args.out}')


if __name__ == '__main__':
    main()
