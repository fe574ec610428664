"""UperNet: backbone -> side-layer neck -> UPerHead (+ FCNHead auxiliary), and its inference modes.

Training: `losses(images, labels)` gives the decode loss and, weighted by
`SEG.AUX.LOSS_WEIGHT`, the auxiliary loss; each is a pixel cross-entropy of the
logits upsampled (bilinear) to the label size, averaged over the pixels whose
label is not `SEG.IGNORE_INDEX` (MMSegmentation's `CrossEntropyLoss`).

Inference (`predict`) returns softmax probabilities at the image's size:
  whole   the image in one forward;
  slide   windows of `crop` at `stride` (the last window of a row / column
          aligned to the image's edge), logits summed and divided by how many
          windows cover each pixel (MMSegmentation's `slide_inference`);
  scales / flip
          the image resized (keep ratio) into `SEG.DATA.IMG_SCALE` x each ratio
          of `SEG.TEST.SCALES` (one ratio 1.0: the single-scale test) and / or flipped, each prediction brought back to the image's size
          (and unflipped) and the probabilities averaged (`aug_test`).
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .backbone import build_backbone
from .heads import FCNHead, UPerHead, resize
from .neck import SideLayerNeck
from .transforms import rescale_size


class UperNet(nn.Layer):
    def __init__(self, backbone, num_classes, neck_scales=(4, 2, 1, 1), neck_last_channels=2048,
                 decode_channels=256, pool_scales=(1, 2, 3, 6), decode_dropout=0.1, aux=None,
                 ignore_index=255):
        """`aux`: None, or a dict(in_index, channels, num_convs, dropout, loss_weight) for the FCNHead."""
        super().__init__()
        self.backbone = backbone
        self.neck = SideLayerNeck(backbone.channels, backbone.reductions, neck_scales, neck_last_channels)
        self.decode_head = UPerHead(self.neck.out_channels, decode_channels, num_classes, pool_scales,
                                    decode_dropout)
        self.aux = dict(aux) if aux else None
        if self.aux:
            self.auxiliary_head = FCNHead(self.neck.out_channels[self.aux['in_index']], self.aux['channels'],
                                          num_classes, self.aux['num_convs'], self.aux['dropout'])
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def forward(self, images):
        """Decode logits at the finest neck stride (4), and the auxiliary logits while training."""
        features = self.neck(self.backbone(images))
        logits = self.decode_head(features)
        if self.training and self.aux:
            return logits, self.auxiliary_head(features[self.aux['in_index']])
        return logits

    def pixel_loss(self, logits, labels):
        logits = resize(logits, labels.shape[1:])
        return F.cross_entropy(logits, labels.unsqueeze(1).astype('int64'), axis=1,
                               ignore_index=self.ignore_index)

    def losses(self, outputs, labels):
        """{'decode': loss, 'aux': weighted loss (when the aux head is on), 'total': their sum}."""
        logits, aux_logits = outputs if self.aux else (outputs, None)
        out = {'decode': self.pixel_loss(logits, labels)}
        if self.aux:
            out['aux'] = self.aux['loss_weight'] * self.pixel_loss(aux_logits, labels)
        out['total'] = sum(out.values())
        return out

    # ------------------------------------------------------------------ inference
    def logits_at(self, images):
        """Logits of one forward, upsampled to the images' size."""
        return resize(self(images), images.shape[2:])

    def slide_logits(self, images, crop, stride):
        """MMSegmentation's slide inference: summed window logits / window count per pixel."""
        _, _, h, w = images.shape
        grids_h = max(h - crop + stride - 1, 0) // stride + 1
        grids_w = max(w - crop + stride - 1, 0) // stride + 1
        total = paddle.zeros([images.shape[0], self.num_classes, h, w], dtype=images.dtype)
        count = paddle.zeros([1, 1, h, w], dtype=images.dtype)
        for i in range(grids_h):
            for j in range(grids_w):
                y2, x2 = min(i * stride + crop, h), min(j * stride + crop, w)
                y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
                logits = self.logits_at(images[:, :, y1:y2, x1:x2])
                total = total + F.pad(logits, [x1, w - x2, y1, h - y2])
                count = count + F.pad(paddle.ones([1, 1, y2 - y1, x2 - x1], dtype=images.dtype),
                                      [x1, w - x2, y1, h - y2])
        return total / count

    def infer_logits(self, images, mode='slide', crop=512, stride=341):
        if mode == 'whole':
            return self.logits_at(images)
        return self.slide_logits(images, crop, stride)

    @paddle.no_grad()
    def predict(self, images, mode='slide', crop=512, stride=341, scales=(1.0,), flip=False, img_scale=None,
                out_size=None):
        """Class probabilities [B, classes, H, W] at `out_size` (default: the images' size).

        For each ratio of `scales` the images are resized (keep ratio, bilinear) into
        `img_scale` x ratio, each scale one resize from the images as given, as
        MMSegmentation's MultiScaleFlipAug does; without `img_scale` they run as given.
        """
        out_size = list(out_size or images.shape[2:])
        if img_scale is None and list(scales) != [1.0]:
            raise ValueError(f'scales {list(scales)} need img_scale, the (long, short) bound they multiply')
        probs, runs = 0, 0
        for ratio in scales:
            size = tuple(images.shape[2:]) if img_scale is None else \
                rescale_size(images.shape[2:], [s * ratio for s in img_scale])
            scaled = images if size == tuple(images.shape[2:]) else \
                F.interpolate(images, size=list(size), mode='bilinear', align_corners=False)
            for flipped in ([False, True] if flip else [False]):
                x = paddle.flip(scaled, axis=[3]) if flipped else scaled
                logits = self.infer_logits(x, mode, crop, stride)
                if flipped:
                    logits = paddle.flip(logits, axis=[3])
                probs = probs + F.softmax(resize(logits, out_size), axis=1)
                runs += 1
        return probs / runs


def build_segmentor(config):
    """(UperNet, prefixes removed from the classification model) from a segmentation config."""
    seg = config.SEG
    backbone, removed = build_backbone(config)
    aux = dict(in_index=seg.AUX.IN_INDEX, channels=seg.AUX.CHANNELS, num_convs=seg.AUX.NUM_CONVS,
               dropout=seg.AUX.DROPOUT, loss_weight=seg.AUX.LOSS_WEIGHT) if seg.AUX.ENABLE else None
    model = UperNet(backbone, seg.NUM_CLASSES, seg.NECK.SCALES, seg.NECK.LAST_CHANNELS, seg.DECODE.CHANNELS,
                    seg.DECODE.POOL_SCALES, seg.DECODE.DROPOUT, aux, seg.IGNORE_INDEX)
    return model, removed
