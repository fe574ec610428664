"""Save a ViT's attention over an image: attention rollout and the last layer's [CLS] attention.

    python tools/visualize_attention.py \\
        -cfg image_classification/ViT/configs/vit_base_patch16_224.yaml \\
        -pretrained vit_base_patch16_224.pdparams -image dog.jpg -output dog_attention.png

Without `-image` a generated test picture is used; without `-pretrained` the model
keeps its random initial weights (useful only to check the pipeline).  The
picture has three panels: the (resized, cropped) input, the input weighted by the
attention rollout of the class token (Abnar & Zuidema 2020, as in ViT-pytorch's
notebook: heads averaged, identity added for the residual path, rows renormalised,
layers multiplied), and the last block's [CLS]->patch attention averaged over
heads as a heat map.  The top-5 predictions are printed and written in the title
(class indices, or names from `-class_names FILE` with one name per line).

Works for any model whose `forward_attention(x)` returns (logits, [per-block
attention [B, heads, N, N]]) with one class token first (ViT).
"""
import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import engine  # noqa: E402,F401  (sets the environment before paddle)
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

__all__ = ['attention_rollout', 'cls_attention_maps', 'demo_image', 'preprocess', 'main']

def attention_rollout(attentions):
    """Joint attention from input tokens to each token after the last layer.

    `attentions`: per layer, [B, heads, N, N] (or [heads, N, N]) row-stochastic
    matrices.  Each layer's matrix is averaged over heads, the identity is added
    (the residual connection) and rows are renormalised; the result is
    A_L @ ... @ A_1, [B, N, N] (or [N, N]).
    """
    joint = None
    for attn in attentions:
        a = np.asarray(attn, dtype=np.float64).mean(axis=-3)
        a = a + np.eye(a.shape[-1])
        a = a / a.sum(axis=-1, keepdims=True)
        joint = a if joint is None else a @ joint
    return joint


def cls_attention_maps(attentions, grid):
    """(rollout map, last-layer map): the class token's attention to the patches of
    image 0, each [grid_h, grid_w]."""
    rollout = attention_rollout(attentions)
    rollout = rollout[0] if rollout.ndim == 3 else rollout
    last = np.asarray(attentions[-1], dtype=np.float64)
    last = (last[0] if last.ndim == 4 else last).mean(axis=0)
    return rollout[0, 1:].reshape(grid), last[0, 1:].reshape(grid)


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
    through the engine's eval transform (the config's IMAGE_SIZE, CROP_PCT,
    INTERPOLATION, MEAN, STD), so the model sees what evaluation feeds it."""
    from engine.data.transforms import build_transform
    x = build_transform(config, 'val')(np.asarray(image.convert('RGB')))       # [3, S, S]
    mean = np.asarray(config.DATA.MEAN, np.float32)[:, None, None]
    std = np.asarray(config.DATA.STD, np.float32)[:, None, None]
    picture = np.rint((x * std + mean) * 255).clip(0, 255).astype(np.uint8).transpose(1, 2, 0)
    return x[None].astype(np.float32), picture


def _upsample(mask, size):
    """[gh, gw] map -> [size, size] in [0, 1] (bilinear), scaled by its maximum."""
    mask = np.asarray(mask, np.float32)
    mask = mask / mask.max() if mask.max() > 0 else mask
    return np.asarray(Image.fromarray(mask).resize((size, size), Image.BILINEAR)).clip(0, 1)


def load_model(cfg, pretrained=None, opts=None):
    """(config, model in eval mode) from a config, with the weights of `pretrained`."""
    import paddle
    from engine.families import build_from_config
    from engine.weights_io import load_state_dict
    from port_weights.keymap import check_state
    config, model = build_from_config(cfg, opts)
    if not hasattr(model, 'forward_attention'):
        raise SystemExit(f'{config.MODEL.TYPE} models have no forward_attention(): not supported')
    if pretrained:
        state = load_state_dict(pretrained)   # restricted reader: a hostile file cannot run code
        if hasattr(model, 'adapt_state_dict'):
            for message in model.adapt_state_dict(state):
                print(f'WARNING: {message}')
        check_state({k: v.shape for k, v in model.state_dict().items()}, state, source=pretrained)
        model.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
    model.eval()
    return config, model


def visualize(model, config, image, output, class_names=None):
    """Run `model` on `image` (PIL), save the figure to `output`; returns
    (top-5 [(probability, label)], rollout map, last-layer map)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import paddle

    x, picture = preprocess(image, config)
    with paddle.no_grad():
        logits, attentions = model.forward_attention(paddle.to_tensor(x))
    probs = paddle.nn.functional.softmax(logits, axis=-1).numpy()[0]
    attentions = [a.numpy() for a in attentions]
    n = attentions[0].shape[-1] - 1
    grid = getattr(getattr(model, 'patch_embed', None), 'grid_size', None) or (int(n ** 0.5),) * 2
    rollout, last = cls_attention_maps(attentions, grid)
    size = picture.shape[0]
    rollout_img = (_upsample(rollout, size)[..., None] * picture).astype(np.uint8)
    top = np.argsort(-probs)[:5]
    top5 = [(float(probs[i]), class_names[i] if class_names else str(i)) for i in top]

    fig, axes = plt.subplots(1, 3, figsize=(13, 5))
    axes[0].imshow(picture)
    axes[0].set_title('Input')
    axes[1].imshow(rollout_img)
    axes[1].set_title('Attention rollout')
    axes[2].imshow(picture)
    axes[2].imshow(_upsample(last, size), cmap='jet', alpha=0.5)
    axes[2].set_title('Last layer [CLS] attention')
    for ax in axes:
        ax.axis('off')
    fig.suptitle(f'{config.MODEL.NAME}: ' + ',  '.join(f'{label} {p:.3f}' for p, label in top5), fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return top5, rollout, last


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-cfg', required=True, help='model config (YAML)')
    parser.add_argument('-pretrained', default=None, help='.pdparams with the weights')
    parser.add_argument('-image', default=None, help='image file (default: a generated picture)')
    parser.add_argument('-output', default='attention.png', help='where to save the figure (.png)')
    parser.add_argument('-class_names', default=None, help='text file, one class name per line')
    parser.add_argument('-opts', nargs='+', default=None, help='config overrides: KEY VALUE ...')
    args = parser.parse_args(argv)
    config, model = load_model(args.cfg, args.pretrained, args.opts)
    image = Image.open(args.image) if args.image else demo_image()
    names = None
    if args.class_names:
        with open(args.class_names, encoding='utf-8') as f:
            names = [line.strip() for line in f]
    top5, _, _ = visualize(model, config, image, args.output, names)
    for p, label in top5:
        print(f'{p:.5f} : {label}')
    print(f'saved {args.output}')
    return 0


if __name__ == '__main__':
    from engine.errors import cli
    sys.exit(cli(main))
