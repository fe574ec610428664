"""Segmentation metrics from a confusion matrix, as MMSegmentation reports them.

`confusion[t, p]` counts the pixels of true class t predicted as p, over the
pixels whose label is not the ignore index.  Per class c: IoU = TP / (TP + FP +
FN), Acc = TP / (pixels of c).  A class absent from the labels and never
predicted has union 0: its IoU is NaN and it is left out of the mean (mIoU is
a nan-mean, mAcc likewise), as MMSegmentation does.  aAcc = all TP / all
labelled pixels.  Ranks sum their matrices (`engine.distributed.all_reduce_sum`)
before the metrics are read.
"""
import numpy as np


def confusion_matrix(pred, label, num_classes, ignore_index=255):
    """[classes, classes] int64 counts of (label, pred) pairs, `ignore_index` labels skipped."""
    pred, label = np.asarray(pred).reshape(-1), np.asarray(label).reshape(-1)
    keep = label != ignore_index
    pairs = label[keep].astype(np.int64) * num_classes + pred[keep].astype(np.int64)
    return np.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_metrics(confusion):
    """{'aAcc', 'mIoU', 'mAcc', 'IoU' [classes], 'Acc' [classes]} from a confusion matrix (NaN: absent)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion)
    area_label, area_pred = confusion.sum(1), confusion.sum(0)
    union = area_label + area_pred - tp
    with np.errstate(divide='ignore', invalid='ignore'):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(area_label > 0, tp / area_label, np.nan)
    total = area_label.sum()
    return {'aAcc': tp.sum() / total if total else float('nan'),
            'mIoU': float(np.nanmean(iou)) if np.isfinite(iou).any() else float('nan'),
            'mAcc': float(np.nanmean(acc)) if np.isfinite(acc).any() else float('nan'),
            'IoU': iou, 'Acc': acc}
