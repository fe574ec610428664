"""Generate Token Labeling label maps: the top-k logits of a classifier at every position of its grid.

    python tools/generate_label.py -model regnety_160 \\
        -pretrained regnety_160.pdparams -data_path /dataset/imagenet -output /dataset/imagenet_token_labels \\
        [-list train_list.txt] [-topk 5] [-batch_size 32] [-skip_existing] \\
        [-opts DATA.IMAGE_SIZE 576 DATA.CROP_PCT 1.0]

As the seed's `generate_label.py` (NFNet-F6 at 576, crop_pct 1.0): every image of
the list goes through the config's evaluation transform, `paddlevit.create_transform(model)`
(short side resized to IMAGE_SIZE / CROP_PCT, centre crop IMAGE_SIZE), the model's
classifier is applied at every position of its last feature grid, and the top-k
logits and their classes are written to `<output>/<list path without extension>.npz`
with the region of the image the grid covers (engine/token_labeling/ reads them).
The label model is `paddlevit.create_model` of `-model` (a name of
`paddlevit.list_models()`) or `-cfg` (a YAML file of any family), with
`-pretrained` loaded strictly: a head of another class count is an error, since
a random head would make random labels.

Which models qualify (`dense_logits`):
  - models with `forward_dense(x) -> (class logits, token logits [B, N, C])`, N a
    square grid: SP-ViT (its auxiliary token head);
  - models whose `forward_features(x)` is a [B, C, H, W] map followed by global
    average pooling and one Linear classifier (`head.fc`, `head` or `fc`): the
    classifier is applied at every position (the official TokenLabelHead).  Since
    pooling and the Linear commute, the mean of the map is the model's own output:
    RegNet (the DeiT teacher regnety_160) qualifies.
  ViT, PiT, PerViT and VVT pool or keep only class tokens inside `forward_features`
  and do not qualify.
The top-1 accuracy of the pooled dense logits against the list's labels is
logged as a sanity check (meaningless with `-transfer`-style lists).
"""
import argparse
import math
import os
import sys
import time

import engine
engine.prepare_process()   # before paddle is imported
import numpy as np  # noqa: E402
import paddle  # noqa: E402

import paddlevit  # noqa: E402
from engine.data.dataset import ImageListDataset  # noqa: E402
from engine.data.decode import DEFAULT_MAX_IMAGE_PIXELS  # noqa: E402
from engine.data.transforms import eval_resize_shape, eval_resize_size  # noqa: E402
from engine.token_labeling import label_map_path, save_label_map  # noqa: E402

try:
    from .model_args import add_model_arguments, create_model, model_sources  # imported as tools.generate_label
except ImportError:
    from model_args import add_model_arguments, create_model, model_sources   # run as a script

__all__ = ['dense_logits', 'LabelSourceDataset', 'eval_region', 'generate_label_maps', 'main']


def _linear_classifier(model):
    for name in ('head.fc', 'head', 'fc'):
        layer = model
        for part in name.split('.'):
            layer = getattr(layer, part, None)
        if isinstance(layer, paddle.nn.Linear):
            return layer
    return None


def dense_logits(model, images):
    """[B, H, W, classes]: the model's class logits at every position of its grid (see module doc)."""
    if hasattr(model, 'forward_dense'):
        _, tokens = model.forward_dense(images)
        b, n, c = tokens.shape
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f'{type(model).__name__}.forward_dense gave {n} tokens: not a square grid')
        return tokens.reshape([b, side, side, c])
    classifier = _linear_classifier(model)
    if hasattr(model, 'forward_features') and classifier is not None:
        features = model.forward_features(images)
        if features.ndim == 4:
            return classifier(features.transpose([0, 2, 3, 1]))
    raise TypeError(f'{type(model).__name__} gives no dense logits: it needs forward_dense(x) or a '
                    f'[B, C, H, W] forward_features(x) with a Linear head.fc / head / fc (see tools/generate_label.py)')


def eval_region(width, height, image_size, crop_pct, resize='shorter'):
    """(top, left, height, width) fractions of a width x height image that the eval crop covers
    (all of it when DATA.EVAL_RESIZE is 'squash', which resizes without cropping)."""
    if resize == 'squash':
        return (0.0, 0.0, 1.0, 1.0)
    new_h, new_w = eval_resize_shape(height, width, eval_resize_size(image_size, crop_pct))
    top, left = int(round((new_h - image_size) / 2.0)), int(round((new_w - image_size) / 2.0))
    return (top / new_h, left / new_w, image_size / new_h, image_size / new_w)


class LabelSourceDataset(paddle.io.Dataset):
    """The images of a list file through an evaluation transform: (image, index, width, height)."""

    def __init__(self, root, list_file, num_classes, transform, skip_bad_images=False,
                 max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS):
        super().__init__()
        self.images = ImageListDataset(root, list_file, num_classes, transform=None,
                                       skip_bad_images=skip_bad_images, max_image_pixels=max_image_pixels)
        self.transform = transform

    def __len__(self):
        return len(self.images)

    def rel_path(self, index):
        return os.path.relpath(self.images.path(index), self.images.root)

    def __getitem__(self, index):
        image = self.images.load(index)
        return self.transform(image), np.int64(index), np.int64(image.shape[1]), np.int64(image.shape[0])


class _Batches(paddle.io.BatchSampler):
    """The given indices, in order, in batches (the last one may be short)."""

    def __init__(self, indices, batch_size):
        self.indices, self.batch_size = list(indices), batch_size

    def __iter__(self):
        for start in range(0, len(self.indices), self.batch_size):
            yield self.indices[start:start + self.batch_size]

    def __len__(self):
        return -(-len(self.indices) // self.batch_size)


@paddle.no_grad()
def generate_label_maps(model, dataset, out_dir, image_size, crop_pct, topk=5, batch_size=32, num_workers=0,
                        skip_existing=False, log=print, report_freq=50, resize='shorter'):
    """Write one label map per image of `dataset` (a LabelSourceDataset) under `out_dir`.

    Returns (images written, top-1 % of the pooled dense logits against the list labels).
    """
    model.eval()
    indices = list(range(len(dataset)))
    if skip_existing:
        indices = [i for i in indices if not os.path.isfile(label_map_path(out_dir, dataset.rel_path(i)))]
    if not indices:
        return 0, float('nan')
    loader = paddle.io.DataLoader(dataset, batch_sampler=_Batches(indices, batch_size), num_workers=num_workers,
                                  return_list=True)
    written, correct, start = 0, 0, time.time()
    for step, (images, index, widths, heights) in enumerate(loader):
        logits = dense_logits(model, images).astype('float32')               # [B, H, W, C]
        values, classes = paddle.topk(logits, k=topk, axis=-1)
        values = values.transpose([0, 3, 1, 2]).numpy()                       # [B, k, H, W]
        classes = classes.transpose([0, 3, 1, 2]).numpy()
        pooled = logits.mean(axis=[1, 2]).argmax(axis=-1).numpy()
        for b, i in enumerate(index.numpy().tolist()):
            region = eval_region(int(widths[b]), int(heights[b]), image_size, crop_pct, resize)
            save_label_map(label_map_path(out_dir, dataset.rel_path(i)), values[b], classes[b], region)
            correct += int(pooled[b] == dataset.images.labels[i])
        written += len(pooled)
        if (step + 1) % report_freq == 0 or written == len(indices):
            log(f'{written}/{len(indices)} label maps, grid {values.shape[2]}x{values.shape[3]}, '
                f'top-{topk}, pooled top-1 {100.0 * correct / written:.2f}%, '
                f'{written / max(time.time() - start, 1e-9):.1f} img/s')
    return written, 100.0 * correct / written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, cfg_help='YAML config of the label model (any family)')
    parser.add_argument('-pretrained', required=True, help='.pdparams of the label model')
    parser.add_argument('-data_path', required=True, help='folder holding the list file')
    parser.add_argument('-output', required=True, help='folder for the label maps (TRAIN.TOKEN_LABEL.DATA_DIR)')
    parser.add_argument('-list', default=None, help='list file under -data_path (default: DATA.TRAIN_LIST)')
    parser.add_argument('-topk', type=int, default=5)
    parser.add_argument('-batch_size', type=int, default=32)
    parser.add_argument('-num_workers', type=int, default=None, help='default: DATA.NUM_WORKERS')
    parser.add_argument('-skip_existing', action='store_true', help='keep label maps already written')
    args = parser.parse_args(argv)

    paddle.set_device('gpu' if paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() else 'cpu')
    model = create_model(model_sources(args), args.opts, pretrained=args.pretrained)
    config, data = model.config, model.config.DATA
    transform = paddlevit.create_transform(model)
    dataset = LabelSourceDataset(args.data_path, os.path.join(args.data_path, args.list or data.TRAIN_LIST),
                                 config.MODEL.NUM_CLASSES, transform, data.SKIP_BAD_IMAGES,
                                 max_image_pixels=data.MAX_IMAGE_PIXELS)
    print(f'{config.MODEL.NAME}: label maps of {len(dataset)} images at {data.IMAGE_SIZE} px '
          f'(crop_pct {data.CROP_PCT}) -> {args.output}')
    written, top1 = generate_label_maps(
        model, dataset, args.output, data.IMAGE_SIZE, data.CROP_PCT, topk=args.topk, batch_size=args.batch_size,
        num_workers=data.NUM_WORKERS if args.num_workers is None else args.num_workers,
        skip_existing=args.skip_existing, resize=data.EVAL_RESIZE)
    print(f'done: {written} label maps written, pooled top-1 {top1:.2f}%')
    return 0


if __name__ == '__main__':
    from engine.errors import cli
    sys.exit(cli(main))
