"""Mixup / CutMix on a batch of Paddle tensors, with label smoothing folded into the targets.

The semantics are timm's `Mixup` (what DeiT trains with):
- with probability `prob` a batch is mixed, else its targets are only smoothed;
- when both alphas are > 0, CutMix is chosen with probability `switch_prob`;
  lambda ~ Beta(alpha, alpha) of the chosen method;
- each image is mixed with the batch flipped (image i with image B-1-i);
- CutMix pastes a box of area (1 - lambda) centred at a uniform point and
  clipped to the image; lambda is then corrected to the pasted area
  (`correct_lam`); with `cutmix_minmax` the box sides are drawn uniformly in
  [min, max) x the image side instead, and lambda follows the box;
- targets: y = one_hot * (1 - smoothing) + smoothing / num_classes for each
  label, mixed as lambda * y + (1 - lambda) * y_flipped.
Modes: 'batch' (one lambda and box per batch), 'elem' (one per image), 'pair'
(one per image pair i, B-1-i; needs an even batch).

Random draws use numpy's global generator, which the trainer reseeds before
each step from (SEED, rank, epoch, step) (engine.seeding), so resuming at an
epoch boundary replays the same mixes.
Nothing is read back from the device: in 'batch' mode lambda and the box are
Python numbers; 'elem' / 'pair' upload a few small arrays.
"""
import numpy as np
import paddle
import paddle.nn.functional as F

__all__ = ['Mixup', 'build_mixup', 'smooth_one_hot', 'mix_with_flipped']


def smooth_one_hot(labels, num_classes, smoothing=0.0):
    """[B] int labels -> [B, num_classes] float32 targets with label smoothing."""
    labels = labels.reshape([-1]).astype('int64')
    off = smoothing / num_classes
    return F.one_hot(labels, num_classes) * (1.0 - smoothing) + off


def mix_with_flipped(x, lam):
    """lam * x + (1 - lam) * x with its batch flipped (row i with row B-1-i): how images (Mixup)
    and every kind of target are mixed.  lam is a float or a tensor broadcasting against x."""
    return x * lam + x.flip(0) * (1.0 - lam)


class Mixup:
    def __init__(self, num_classes, mixup_alpha=0.8, cutmix_alpha=1.0, cutmix_minmax=None, prob=1.0,
                 switch_prob=0.5, mode='batch', label_smoothing=0.1, correct_lam=True):
        if mode not in ('batch', 'elem', 'pair'):
            raise ValueError(f"TRAIN.MIXUP_MODE must be 'batch', 'elem' or 'pair', got {mode!r}")
        if cutmix_minmax is not None:
            if len(cutmix_minmax) != 2 or not 0 <= cutmix_minmax[0] < cutmix_minmax[1] <= 1:
                raise ValueError(f'TRAIN.CUTMIX_MINMAX must be [min, max] with 0 <= min < max <= 1, '
                                 f'got {cutmix_minmax}')
            cutmix_alpha = 1.0    # as timm: the box comes from minmax, any alpha > 0 enables CutMix
        self.num_classes = int(num_classes)
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.cutmix_minmax = tuple(cutmix_minmax) if cutmix_minmax is not None else None
        self.prob = float(prob)
        self.switch_prob = float(switch_prob)
        self.mode = mode
        self.smoothing = float(label_smoothing)
        self.correct_lam = correct_lam

    def __repr__(self):
        return (f'Mixup(mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha}, '
                f'cutmix_minmax={self.cutmix_minmax}, prob={self.prob}, switch_prob={self.switch_prob}, '
                f'mode={self.mode}, smoothing={self.smoothing}, num_classes={self.num_classes})')

    # ------------------------------------------------------------------ random draws (host)
    def draw(self, n):
        """(lam [n] float64, use_cutmix [n] bool) before the CutMix area correction."""
        lam = np.ones(n)
        use_cutmix = np.zeros(n, dtype=bool)
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = np.random.rand(n) < self.switch_prob
            lam_mix = np.where(use_cutmix, np.random.beta(self.cutmix_alpha, self.cutmix_alpha, n),
                               np.random.beta(self.mixup_alpha, self.mixup_alpha, n))
        elif self.mixup_alpha > 0:
            lam_mix = np.random.beta(self.mixup_alpha, self.mixup_alpha, n)
        elif self.cutmix_alpha > 0:
            use_cutmix = np.ones(n, dtype=bool)
            lam_mix = np.random.beta(self.cutmix_alpha, self.cutmix_alpha, n)
        else:
            return lam, use_cutmix
        applied = np.random.rand(n) < self.prob
        return np.where(applied, lam_mix, lam), use_cutmix & applied

    def boxes(self, height, width, lam):
        """CutMix boxes (y0, y1, x0, x1) as int arrays and the area-corrected lam, for each lam."""
        n = len(lam)
        if self.cutmix_minmax is not None:
            lo, hi = self.cutmix_minmax
            cut_h = np.random.randint(int(height * lo), int(height * hi), size=n)
            cut_w = np.random.randint(int(width * lo), int(width * hi), size=n)
            y0 = np.random.randint(0, height - cut_h, size=n)
            x0 = np.random.randint(0, width - cut_w, size=n)
            y1, x1 = y0 + cut_h, x0 + cut_w
        else:
            ratio = np.sqrt(1.0 - lam)
            cut_h, cut_w = (height * ratio).astype(int), (width * ratio).astype(int)
            cy, cx = np.random.randint(0, height, size=n), np.random.randint(0, width, size=n)
            y0, y1 = np.clip(cy - cut_h // 2, 0, height), np.clip(cy + cut_h // 2, 0, height)
            x0, x1 = np.clip(cx - cut_w // 2, 0, width), np.clip(cx + cut_w // 2, 0, width)
        if self.correct_lam or self.cutmix_minmax is not None:
            lam = 1.0 - (y1 - y0) * (x1 - x0) / float(height * width)
        return (y0, y1, x0, x1), lam

    def draw_batch(self, height, width):
        """The draw of 'batch' mode for a batch of height x width images: (lam, box).

        box is CutMix's (y0, y1, x0, x1) in pixels, with lam corrected to its area, or None
        (Mixup, or no mixing: lam 1.0).  Token labeling mixes its label maps with this same
        draw, so both make the same random draws in the same order.
        """
        lam, use_cutmix = self.draw(1)
        lam, use_cutmix = float(lam[0]), bool(use_cutmix[0])
        if lam == 1.0 or not use_cutmix:
            return lam, None
        (y0, y1, x0, x1), lam = self.boxes(height, width, np.array([lam]))
        return float(lam[0]), (int(y0[0]), int(y1[0]), int(x0[0]), int(x1[0]))

    # ------------------------------------------------------------------ tensor ops (device)
    @staticmethod
    def mix_images(images, lam, box):
        """A batch [B, C, H, W] mixed by a `draw_batch` result: the box pasted from the flipped
        batch (CutMix), or the flipped batch blended in by lam (Mixup)."""
        if box is None:
            return images if lam == 1.0 else mix_with_flipped(images, lam)
        y0, y1, x0, x1 = box
        mixed = images.clone()
        if y1 > y0 and x1 > x0:
            mixed[:, :, y0:y1, x0:x1] = images.flip(0)[:, :, y0:y1, x0:x1]
        return mixed

    def targets(self, labels, lam):
        """Soft targets [B, num_classes]; lam is a float or a [B, 1] tensor."""
        return mix_with_flipped(smooth_one_hot(labels, self.num_classes, self.smoothing), lam)

    def __call__(self, images, labels):
        if self.mode == 'batch':
            return self._mix_batch(images, labels)
        return self._mix_elementwise(images, labels)

    def _mix_batch(self, images, labels):
        lam, box = self.draw_batch(images.shape[-2], images.shape[-1])
        return self.mix_images(images, lam, box), self.targets(labels, lam)

    def _mix_elementwise(self, images, labels):
        batch, height, width = images.shape[0], images.shape[-2], images.shape[-1]
        if self.mode == 'pair':
            if batch % 2:
                raise ValueError(f"TRAIN.MIXUP_MODE 'pair' needs an even batch, got {batch}")
            lam, use_cutmix = self.draw(batch // 2)
        else:
            lam, use_cutmix = self.draw(batch)
        (y0, y1, x0, x1), cut_lam = self.boxes(height, width, lam)
        use_cutmix &= lam < 1.0
        lam = np.where(use_cutmix, cut_lam, lam)
        empty = ~use_cutmix                      # no box: an empty one
        y0, y1, x0, x1 = (np.where(empty, 0, v) for v in (y0, y1, x0, x1))
        params = np.stack([lam, use_cutmix, y0, y1, x0, x1], axis=1)
        if self.mode == 'pair':                  # image B-1-i mixes with image i the same way
            params = np.concatenate([params, params[::-1]], axis=0)
        params = paddle.to_tensor(params.astype(np.float32), place=images.place)
        lam_t, cut_t = params[:, 0:1], params[:, 1:2]
        ys = paddle.arange(height, dtype='float32').reshape([1, height, 1])
        xs = paddle.arange(width, dtype='float32').reshape([1, 1, width])
        p = params.reshape([batch, 6, 1, 1])
        inside = ((ys >= p[:, 2]) & (ys < p[:, 3]) & (xs >= p[:, 4]) & (xs < p[:, 5])).astype('float32')
        # weight of the image itself: 1 - box for CutMix, lam for Mixup
        weight = cut_t.reshape([batch, 1, 1]) * (1.0 - inside) \
            + (1.0 - cut_t.reshape([batch, 1, 1])) * lam_t.reshape([batch, 1, 1])
        weight = weight.unsqueeze(1).astype(images.dtype)
        flipped = images.flip(0)
        mixed = flipped + weight * (images - flipped)
        return mixed, self.targets(labels, lam_t)


def build_mixup(config):
    """Mixup from TRAIN.* (num_classes = MODEL.NUM_CLASSES), or None when it would never mix."""
    train = config.TRAIN
    active = train.MIXUP_ALPHA > 0 or train.CUTMIX_ALPHA > 0 or train.CUTMIX_MINMAX is not None
    if not active or train.MIXUP_PROB <= 0:
        return None
    return Mixup(config.MODEL.NUM_CLASSES, mixup_alpha=train.MIXUP_ALPHA, cutmix_alpha=train.CUTMIX_ALPHA,
                 cutmix_minmax=train.CUTMIX_MINMAX, prob=train.MIXUP_PROB,
                 switch_prob=train.MIXUP_SWITCH_PROB, mode=train.MIXUP_MODE,
                 label_smoothing=train.SMOOTHING)
