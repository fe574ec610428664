"""The chance levels of a segmentation validation set, to read a demo's mIoU against.

Two predictors that look at no pixel: every pixel the most frequent training
class, and a uniformly random class per pixel (seeded).  Their mIoU and aAcc on
the validation labels (after `reduce_zero_label`, ignored pixels skipped) are
printed.  `python -m semantic_segmentation.chance -cfg CFG -data_path ROOT`
"""
import numpy as np

from engine.errors import cli
from engine.hooks import FamilyHooks
from engine.launcher import build_parser

from .ade20k import ADE20K
from .config import get_config
from .metrics import confusion_matrix, segmentation_metrics


def chance_levels(train_labels, val_labels, num_classes, ignore_index=255, seed=0):
    """{'majority': metrics, 'uniform': metrics} (metrics.segmentation_metrics) of the two predictors."""
    counts = sum(np.bincount(l[l != ignore_index].ravel(), minlength=num_classes) for l in train_labels)
    majority = int(np.argmax(counts))
    rng = np.random.RandomState(seed)
    conf = {'majority': 0, 'uniform': 0}
    for label in val_labels:
        conf['majority'] = conf['majority'] + confusion_matrix(np.full_like(label, majority), label, num_classes,
                                                               ignore_index)
        conf['uniform'] = conf['uniform'] + confusion_matrix(rng.randint(0, num_classes, label.shape), label,
                                                             num_classes, ignore_index)
    return {name: segmentation_metrics(c) for name, c in conf.items()}


def main(argv=None):
    config = get_config(args=build_parser(FamilyHooks()).parse_args(argv))
    seg = config.SEG

    def labels(split):
        dataset = ADE20K(config.DATA.DATA_PATH, split, None, seg.DATA.REDUCE_ZERO_LABEL)
        return [dataset.load(i)[1] for i in range(len(dataset))]
    for name, m in chance_levels(labels('train'), labels('val'), seg.NUM_CLASSES, seg.IGNORE_INDEX).items():
        print(f'chance ({name}): mIoU {m["mIoU"]:.4f}, aAcc {m["aAcc"]:.4f}')


if __name__ == '__main__':
    cli(main)
