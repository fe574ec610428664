"""Why this class?  Save a relevance map of a model's prediction over each image.

    python tools/explain.py -model spvit_s_224 -pretrained spvit_s_224.pdparams \\
        --method lrp --image dog.jpg [-class 243] [-output explain_out]
    python tools/explain.py -cfg image_classification/ViT/configs/vit_base_patch16_224.yaml \\
        -pretrained vit_base_patch16_224.pdparams --method gradient --image photos/

The model is named (`-model`, see `paddlevit.list_models()`) or given by its config
(`-cfg`), built by `paddlevit.create_model` (tools/model_args.py); `-pretrained` loads
its weights strictly (a hostile or mis-fitting file is refused).  `--image` is one
image or a folder of them (without it, a generated picture).  For each image, in
`-output`: `<stem>_<method>.png` with the input, the map over it, the explained
class's name and probability, and `<stem>_<method>.npy`, the raw map on the token grid.

Methods (`--method`, see engine/explain/methods.py for the details and the why):
  gradient   Chefer et al. ICCV 2021, class-specific      ViT / DeiT, SP-ViT
  lrp        Chefer et al. CVPR 2021 (transformer_attribution, the SP-ViT README's maps)
                                                          ViT / DeiT, SP-ViT
  rollout    attention rollout, class-agnostic            ViT / DeiT, SP-ViT
  attention  last block's class-token attention           ViT / DeiT, SP-ViT
  gradcam    Grad-CAM on the last block's input tokens    every transformer family
             (the only one for PiT, PerViT and VVT)
`-class N` explains class N (default: the top-1); `--head class` explains SP-ViT's
class head alone instead of the logit evaluation reports (class head + 0.5 x max of
the token-label head).  `-class_names FILE`: one name per line, line i = class i.
PerViT's own `PerViT/visualize.py` draws its position-attention maps.
"""
import argparse
import os
import sys

import engine
engine.prepare_process()   # before paddle is imported
import numpy as np  # noqa: E402
from PIL import Image, UnidentifiedImageError  # noqa: E402

from engine.errors import UserError  # noqa: E402
from engine.explain import HEADS, METHODS, explain  # noqa: E402

try:
    from .model_args import add_model_arguments, create_model, model_sources  # imported as tools.explain
except ImportError:
    from model_args import add_model_arguments, create_model, model_sources   # run as a script

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff')


def demo_image(size=384):
    """A generated RGB picture (sky, ground, a red disc and a yellow square), so the
    tool runs without any file."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.zeros((size, size, 3), np.float32)
    sky = y < 0.6
    img[sky] = np.stack([0.3 + 0.2 * y, 0.5 + 0.3 * y, 0.9 - 0.1 * x], -1)[sky]
    img[~sky] = np.stack([0.7 - 0.1 * y, 0.6 - 0.1 * y, 0.4 + 0.0 * x], -1)[~sky]
    disc = (x - 0.35) ** 2 + (y - 0.55) ** 2 < 0.15 ** 2
    img[disc] = (0.85, 0.15, 0.1)
    square = (abs(x - 0.72) < 0.1) & (abs(y - 0.7) < 0.1)
    img[square] = (0.95, 0.85, 0.2)
    return Image.fromarray((img * 255).clip(0, 255).astype(np.uint8))


def preprocess(image, config):
    """(input [1, 3, S, S] float32, the resized and cropped RGB picture [S, S, 3] uint8)
    through the engine's eval transform, so the model sees what evaluation feeds it."""
    from engine.data.transforms import build_transform
    x = build_transform(config, 'val')(np.asarray(image.convert('RGB')))       # [3, S, S]
    mean = np.asarray(config.DATA.MEAN, np.float32)[:, None, None]
    std = np.asarray(config.DATA.STD, np.float32)[:, None, None]
    picture = np.rint((x * std + mean) * 255).clip(0, 255).astype(np.uint8).transpose(1, 2, 0)
    return x[None].astype(np.float32), picture


def upsample(relevance, size):
    """[gh, gw] map -> [size, size] in [0, 1] (bilinear), scaled by its maximum."""
    relevance = np.asarray(relevance, np.float32)
    top = relevance.max()
    relevance = relevance / top if top > 0 else relevance
    return np.asarray(Image.fromarray(relevance).resize((size, size), Image.BILINEAR)).clip(0, 1)


def save_figure(picture, panels, output):
    """The input, then each (map, title) of `panels` over it (jet, red = most relevant), in one row."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 1 + len(panels), figsize=(3.2 * (1 + len(panels)), 3.5))
    axes[0].imshow(picture)
    axes[0].set_title('input', fontsize=9)
    for ax, (relevance, title) in zip(axes[1:], panels):
        ax.imshow(picture)
        ax.imshow(upsample(relevance, picture.shape[0]), cmap='jet', alpha=0.5, vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
    for ax in axes:
        ax.axis('off')
    fig.tight_layout()
    fig.savefig(output, dpi=80)
    plt.close(fig)


def images(path):
    """(stem, PIL image) of a file, of every image in a folder (sorted), or of the generated picture;
    read one at a time."""
    if path is None:
        yield 'demo', demo_image()
        return
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise UserError(f'--image {path}: the folder holds no image ({", ".join(IMAGE_EXTENSIONS)})')
    elif os.path.isfile(path):
        files = [path]
    else:
        raise UserError(f'--image {path}: no such file or folder')
    for f in files:
        try:
            with Image.open(f) as image:
                picture = image.convert('RGB')
        except (UnidentifiedImageError, OSError) as error:
            raise UserError(f'--image {f}: not a readable image ({error})') from None
        yield os.path.splitext(os.path.basename(f))[0], picture


def class_names(path, num_classes):
    if not path:
        return None
    with open(path, encoding='utf-8') as f:
        names = [line.strip() for line in f if line.strip()]
    if len(names) != num_classes:
        raise UserError(f'-class_names {path}: {len(names)} names for a model of {num_classes} classes')
    return names


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument('-pretrained', default=None, help='.pdparams with the weights')
    parser.add_argument('-method', '--method', default='gradient', choices=METHODS)
    parser.add_argument('-image', '--image', default=None, help='an image or a folder (default: a generated picture)')
    parser.add_argument('-class', '--class', dest='class_index', type=int, default=None,
                        help='class to explain (default: the top-1)')
    parser.add_argument('-head', '--head', default='eval', choices=HEADS,
                        help="SP-ViT: explain the evaluation logit (eval) or the class head alone (class)")
    parser.add_argument('-output', default='explain_out', help='folder for the .png and .npy files')
    parser.add_argument('-class_names', default=None, help='text file, one class name per line')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    model = create_model(model_sources(args), args.opts, pretrained=args.pretrained)
    config = model.config
    names = class_names(args.class_names, config.MODEL.NUM_CLASSES)
    os.makedirs(args.output, exist_ok=True)
    for stem, image in images(args.image):
        x, picture = preprocess(image, config)
        result = explain(model, x, args.method, args.class_index, args.head)
        label = names[result.class_index] if names else f'class {result.class_index}'
        base = os.path.join(args.output, f'{stem}_{args.method}')
        np.save(base + '.npy', result.map)
        save_figure(picture, [(result.map, f'{args.method}: {label} (p = {result.probability:.3f})')], base + '.png')
        print(f'{stem}: {label} p={result.probability:.4f} -> {base}.png, {base}.npy')
        if not result.map.any():
            print(f'{stem}: the {args.method} map is 0 everywhere: no token carries positive evidence for '
                  f'{label} at the layer the method reads')
    return 0


if __name__ == '__main__':
    from engine.errors import cli
    sys.exit(cli(main))
