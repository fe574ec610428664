"""The README's explanation figures (`docs/explain/`): one small model per family, trained on
the spot to name the colour of the one object in a synthetic picture, then explained.

    python tools/make_explain_figures.py [--out docs/explain] [--steps 300]

The pictures (`synthetic_images`): a textured grey background (random stripes and
noise) and one filled disc or square in one of four colours, the class being the
colour, or no object (a fifth class, so that no colour can be learnt as "none of
the others": each has to be seen).  The only evidence of a colour class is the
object, and a faithful map of it falls there.  Each family's model is a small variant of its real architecture (its
config with fewer and narrower blocks, `TOYS`), trained from scratch with AdamW for
`--steps` batches of fresh pictures; each figure shows the family's
class-specific methods on the same held-out picture (not chosen), with the share
of the map's mass on the object's tokens.  The test suite trains the ViT toy the same way and
checks that share (tests/test_explain.py).
"""
import argparse
import os
import sys

import engine
engine.prepare_process()   # before paddle is imported
import numpy as np  # noqa: E402

COLOURS = {'red': (0.9, 0.15, 0.1), 'green': (0.1, 0.75, 0.2), 'blue': (0.15, 0.3, 0.95),
           'yellow': (0.95, 0.85, 0.1)}
CLASS_NAMES = list(COLOURS) + ['no object']

# family -> (model name, input size, config overrides): small variants, 5 classes; VVT's last stage
# has stride 32, so it gets 128 x 128 pictures for a 4 x 4 map
TOYS = {
    'ViT': ('vit_tiny_patch16_224', 64, {'MODEL.PATCH_SIZE': 8, 'MODEL.EMBED_DIM': 48, 'MODEL.DEPTH': 2,
                                     'MODEL.NUM_HEADS': 3, 'MODEL.MLP_DIM': 96, 'MODEL.DROPOUT': 0.}),
    'SPViT': ('spvit_s_224', 64, {'MODEL.PATCH_SIZE': 8, 'MODEL.EMBED_DIM': 48, 'MODEL.DEPTH': 3,
                              'MODEL.NUM_HEADS': 3, 'MODEL.LOCAL_UP_TO_LAYER': 1,
                              'TRAIN.TOKEN_LABEL.ENABLE': False}),
    'PiT': ('pit_ti_224', 64, {'MODEL.PATCH_SIZE': 4, 'MODEL.STRIDE': 4, 'MODEL.BASE_DIMS': [16, 16, 16],
                           'MODEL.DEPTH': [1, 1, 1], 'MODEL.NUM_HEADS': [2, 4, 8]}),
    'PerViT': ('pervit_tiny_224', 64, {'MODEL.EMBED_DIMS': [32, 48, 64, 64], 'MODEL.STEM_DIMS': [16, 16, 32, 32]}),
    'VVT': ('vvt_tiny_224', 128, {'MODEL.EMBED_DIMS': [16, 32, 48, 64], 'MODEL.DEPTHS': [1, 1, 1, 1],
                             'MODEL.NUM_HEADS': [1, 1, 2, 2]}),
}
# the class-specific methods each family has (engine.explain.SUPPORT)
METHODS = {'ViT': ('gradient', 'lrp'), 'SPViT': ('gradient', 'lrp'), 'PiT': ('gradcam',), 'PerViT': ('gradcam',),
           'VVT': ('gradcam',)}


def synthetic_images(rng, count, size=64, with_object=False):
    """(images [count, size, size, 3] uint8, labels [count], object masks [count, size, size] bool);
    `with_object`: every picture has an object (no 'no object' class)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.empty((count, size, size, 3), np.uint8)
    labels = rng.integers(0, len(COLOURS) + (0 if with_object else 1), count)
    masks = np.zeros((count, size, size), bool)
    for i in range(count):
        angle, freq = rng.uniform(0, np.pi), rng.uniform(0.3, 0.9)
        stripes = 0.5 + 0.15 * np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle)))
        grey = stripes + 0.08 * rng.standard_normal((size, size))
        background = np.repeat(grey[..., None], 3, axis=-1)
        if labels[i] == len(COLOURS):
            images[i] = np.rint(background.clip(0, 1) * 255).astype(np.uint8)
            continue
        radius = rng.uniform(0.1, 0.15) * size
        cy, cx = rng.uniform(radius + 1, size - radius - 1, 2)
        if rng.random() < 0.5:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
        else:
            mask = (abs(yy - cy) <= radius * 0.85) & (abs(xx - cx) <= radius * 0.85)
        colour = np.asarray(COLOURS[CLASS_NAMES[labels[i]]], np.float32)
        picture = np.where(mask[..., None], colour + 0.05 * rng.standard_normal((size, size, 3)), background)
        images[i] = np.rint(picture.clip(0, 1) * 255).astype(np.uint8)
        masks[i] = mask
    return images, labels, masks


def normalise(images, config):
    """uint8 HWC pictures -> the model's input [B, 3, H, W] (the config's MEAN / STD; the
    pictures are already at the model's size)."""
    mean, std = (np.asarray(v, np.float32)[:, None, None] for v in (config.DATA.MEAN, config.DATA.STD))
    return ((images.transpose(0, 3, 1, 2).astype(np.float32) / 255) - mean) / std


def build_toy(family, seed=0):
    """The untrained toy model of `family` (one class per name of CLASS_NAMES)."""
    import paddle
    import paddlevit
    paddle.seed(seed)
    name, size, opts = TOYS[family]
    return paddlevit.create_model(name, num_classes=len(CLASS_NAMES), image_size=size, **opts)


def train_toy(model, steps, seed=0, batch=32, lr=2e-3):
    """Train `model` for `steps` batches of fresh synthetic pictures; returns it in eval mode."""
    import paddle
    import paddle.nn.functional as F
    rng = np.random.default_rng(seed)
    optimizer = paddle.optimizer.AdamW(lr, parameters=model.parameters(), weight_decay=0.01)
    model.train()
    for _ in range(steps):
        images, labels, _ = synthetic_images(rng, batch, size=model.config.DATA.IMAGE_SIZE)
        loss = F.cross_entropy(model(paddle.to_tensor(normalise(images, model.config))),
                               paddle.to_tensor(labels))
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
    model.eval()
    return model


def object_tokens(mask, grid):
    """[gh, gw] bool: the tokens whose image cell holds part of the object."""
    gh, gw = grid
    return mask.reshape(gh, mask.shape[0] // gh, gw, mask.shape[1] // gw).any(axis=(1, 3))


def mass_on_object(relevance, mask):
    """Share of the map's mass on the tokens that hold part of the object (`object_tokens`)."""
    return float(relevance[object_tokens(mask, relevance.shape)].sum() / max(relevance.sum(), 1e-12))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='docs/explain')
    parser.add_argument('--steps', type=int, default=300)
    args = parser.parse_args(argv)
    from engine.explain import explain
    try:
        from .explain import save_figure     # imported as tools.make_explain_figures
    except ImportError:
        from explain import save_figure      # run as a script: tools/explain.py beside it
    os.makedirs(args.out, exist_ok=True)
    from PIL import Image
    picture, _, mask = synthetic_images(np.random.default_rng(1234), 1, size=128, with_object=True)
    for family in TOYS:
        model = train_toy(build_toy(family), args.steps)
        size = model.config.DATA.IMAGE_SIZE             # the one picture, at the model's size
        image = np.asarray(Image.fromarray(picture[0]).resize((size, size), Image.BILINEAR))
        on_object = np.asarray(Image.fromarray(mask[0]).resize((size, size), Image.NEAREST))
        panels = []
        for method in METHODS[family]:
            result = explain(model, normalise(image[None], model.config), method)
            title = (f'{family} {method}: {CLASS_NAMES[result.class_index]} p={result.probability:.2f}, '
                     f'{mass_on_object(result.map, on_object):.0%} on object')
            panels.append((result.map, title))
            print(title)
        save_figure(image, panels, os.path.join(args.out, f'{family.lower()}.png'))
    return 0


if __name__ == '__main__':
    sys.exit(main())
