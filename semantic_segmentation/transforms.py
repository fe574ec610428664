"""MMSegmentation 0.x's ADE20K pipelines (configs/_base_/datasets/ade20k.py), on numpy / OpenCV.

Training, in this order, on an RGB uint8 image and its uint8 label map:
  resize      keep-ratio rescale to IMG_SCALE x r, r ~ U(RATIO_RANGE): the factor is
              min(long_bound / long side, short_bound / short side); image bilinear,
              label nearest;
  crop        a CROP x CROP window at a uniform offset; up to 10 draws are made until
              the window's most frequent class (ignored pixels aside) covers at most
              CAT_MAX_RATIO of its labelled pixels and it holds more than one class
              (else the 10th draw is kept);
  flip        horizontal, with FLIP_PROB;
  photometric brightness (+-32), contrast (x 0.5-1.5, before or after the next two,
              by a coin), saturation (x 0.5-1.5), hue (+-18 degrees), each by a coin;
  normalize   (x - MEAN) / STD (MEAN, STD in [0, 1] units, as DATA.MEAN / DATA.STD);
  pad         to CROP x CROP: image with 0, label with IGNORE_INDEX.
Evaluation: normalize only; the keep-ratio rescale into IMG_SCALE (x each test
scale) is done by the segmentor's `predict` from the image at its own size, and
the prediction is brought back to that size, where the label stays and the
metrics are computed.
`reduce_zero_label` belongs to reading the label (ade20k.py).
"""
import cv2
import numpy as np

__all__ = ['rescale_size', 'TrainTransform', 'EvalTransform']

CROP_TRIES = 10


def rescale_size(hw, scale):
    """(h, w) of a keep-ratio rescale of an `hw` image into the bounds `scale` (long, short) (mmcv)."""
    h, w = int(hw[0]), int(hw[1])
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def resize_pair(image, label, size):
    h, w = size
    return (cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR),
            cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST))


def crop_box(label, crop, cat_max_ratio, ignore_index, rng):
    """(y1, x1) of a crop whose largest class is at most `cat_max_ratio` of it (module doc)."""
    h, w = label.shape
    for _ in range(CROP_TRIES):
        y1 = rng.randint(0, max(h - crop, 0) + 1)
        x1 = rng.randint(0, max(w - crop, 0) + 1)
        if cat_max_ratio >= 1:
            break
        classes, counts = np.unique(label[y1:y1 + crop, x1:x1 + crop], return_counts=True)
        counts = counts[classes != ignore_index]
        if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
            break
    return y1, x1


def photometric_distortion(image, rng):
    """MMSegmentation's PhotoMetricDistortion on an RGB image; returns float32 in [0, 255]."""
    img = image.astype(np.float32)

    def coin():
        return rng.randint(2) == 1
    if coin():
        img = np.clip(img + rng.uniform(-32, 32), 0, 255)
    contrast_first = rng.randint(2) == 1
    contrast = coin(), rng.uniform(0.5, 1.5)
    if contrast_first and contrast[0]:
        img = np.clip(img * contrast[1], 0, 255)
    if coin():
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[..., 1] = hsv[..., 1] * rng.uniform(0.5, 1.5)
        img = np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), 0, 255)
    if coin():
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0] + rng.randint(-18, 19)) % 360
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if not contrast_first and contrast[0]:
        img = np.clip(img * contrast[1], 0, 255)
    return img


def normalize(image, mean, std):
    """HWC RGB in [0, 255] -> CHW float32, (x / 255 - mean) / std."""
    mean = np.asarray(mean, np.float32) * 255
    std = np.asarray(std, np.float32) * 255
    return ((image.astype(np.float32) - mean) / std).transpose(2, 0, 1)


class TrainTransform:
    def __init__(self, crop, img_scale, ratio_range, cat_max_ratio, flip_prob, photometric, mean, std,
                 ignore_index=255):
        self.crop, self.img_scale, self.ratio_range = crop, list(img_scale), list(ratio_range)
        self.cat_max_ratio, self.flip_prob, self.photometric = cat_max_ratio, flip_prob, photometric
        self.mean, self.std, self.ignore_index = mean, std, ignore_index

    def __call__(self, image, label, rng=np.random):
        ratio = rng.uniform(*self.ratio_range)
        image, label = resize_pair(image, label, rescale_size(image.shape[:2], [s * ratio for s in self.img_scale]))
        y1, x1 = crop_box(label, self.crop, self.cat_max_ratio, self.ignore_index, rng)
        image = image[y1:y1 + self.crop, x1:x1 + self.crop]
        label = label[y1:y1 + self.crop, x1:x1 + self.crop]
        if rng.uniform() < self.flip_prob:
            image, label = image[:, ::-1], label[:, ::-1]
        if self.photometric:
            image = photometric_distortion(image, rng)
        image = normalize(image, self.mean, self.std)
        h, w = label.shape
        padded = np.zeros((3, self.crop, self.crop), np.float32)
        padded[:, :h, :w] = image
        padded_label = np.full((self.crop, self.crop), self.ignore_index, np.int64)
        padded_label[:h, :w] = label
        return padded, padded_label


class EvalTransform:
    def __init__(self, mean, std):
        self.mean, self.std = mean, std

    def __call__(self, image, label):
        return normalize(image, self.mean, self.std), label.astype(np.int64)
