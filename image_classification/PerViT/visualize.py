"""Pictures of PerViT's learned attention (the official `--visualize`, util/visualize.py).

    python visualize.py -cfg configs/pervit_tiny_224.yaml -pretrained pervit_tiny.pdparams \\
        -output ./output [-image dog.jpg] [-query ROW COL]

writes under `<output>/vis/`:

* `position_attention.png`: the position-based attention Phi_p of every block
  (columns, layer 1 -> L) and head (rows) for one query token (default: the
  grid centre, (7, 7) at 224 as in the official script; red square), the heads
  of each layer sorted by non-locality, local at the top (the layout of the
  paper's learned-attention figure).  One PNG per map in `position_attention/`
  (`L03_rank1_head2.png`: layer 3, second most local head, head index 2), and
  `nonlocality.txt` with the values.
* with `-image`: `attention_<image name>.png`: the (resized, centre-cropped)
  image with the query marked and, for every layer (rows), Phi_p and the mixed
  attention A = Phi_c * Phi_p / sum (what the block really uses for that image)
  of each head, heads ordered as in the first figure.

Non-locality of a head, as the official script computes it: the mean over all
(query, key) pairs of Phi_p[q, k] * |p_q - p_k|, token positions spanning
[-1, 1] on each axis.  Phi_p is a sigmoid (not normalised over keys), so a head
that lets everything through scores higher than one that damps all keys alike.
Each map is coloured by its own min..max (viridis), as matplotlib's matshow in
the official script; a constant map is drawn on the absolute 0..1 scale.

Inside training / evaluation runs the same pictures come from `-visualize`
(and `-visualize_image`) through `hooks.PerViTHooks`.
"""
import argparse
import os
import sys

import numpy as np
from PIL import Image, ImageDraw

__all__ = ['token_distances', 'nonlocality', 'sort_heads_by_nonlocality', 'colorize',
           'save_position_attention', 'save_image_attention', 'visualize', 'main']

GAP = 6           # white pixels between maps
LABEL = 18        # height of a text row


def token_distances(side):
    """[N, N] Euclidean distances between the tokens of a side x side grid spanning [-1, 1]."""
    c = np.linspace(-1.0, 1.0, side)
    y, x = np.meshgrid(c, c, indexing='ij')
    pos = np.stack([y.ravel(), x.ravel()], axis=-1)
    return np.linalg.norm(pos[None, :, :] - pos[:, None, :], axis=-1)


def nonlocality(phi, distances):
    """[heads] mean over (query, key) of phi * distance, for phi [heads, N, N] and distances [N, N]."""
    return (np.asarray(phi, dtype=np.float64) * distances[None]).mean(axis=(-1, -2))


def sort_heads_by_nonlocality(phi, distances):
    """(head order, non-locality in that order): the most local head first."""
    score = nonlocality(phi, distances)
    order = np.argsort(score, kind='stable')
    return order, score[order]


def _query(query, side):
    row, col = (side // 2, side // 2) if query is None else query
    if not (0 <= row < side and 0 <= col < side):
        raise ValueError(f'query token ({row}, {col}) is outside the {side} x {side} grid')
    return row, col


def colorize(values, query=None, scale=6):
    """A [side, side] map as a viridis PIL image, each token `scale` px, the query token boxed in red."""
    from matplotlib import colormaps
    values = np.asarray(values, dtype=np.float64)
    lo, hi = values.min(), values.max()
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):      # constant map: absolute 0..1 scale
        norm = np.clip(values, 0.0, 1.0)
    else:
        norm = (values - lo) / (hi - lo)
    rgb = (colormaps['viridis'](norm)[..., :3] * 255).astype(np.uint8)
    img = Image.fromarray(rgb).resize((values.shape[1] * scale, values.shape[0] * scale), Image.NEAREST)
    if query is not None:
        _mark(img, query, scale)
    return img


def _mark(img, query, scale):
    """Box token `query` (row, col) of a picture with `scale` px per token in red."""
    r, c = query
    ImageDraw.Draw(img).rectangle([c * scale, r * scale, (c + 1) * scale - 1, (r + 1) * scale - 1],
                                  outline=(255, 0, 0), width=max(1, scale // 4))


def _canvas(width, height):
    return Image.new('RGB', (width, height), 'white')


def _text(draw, xy, text, anchor='la'):
    draw.text(xy, text, fill=(0, 0, 0), anchor=anchor)


def _position_maps(model, query):
    """(phi of every block [L, heads, N, N] as numpy, grid side, query (row, col))."""
    import paddle
    with paddle.no_grad():
        phi = np.stack([p[0].numpy() for p in model.position_attention()])
    side = round(np.sqrt(phi.shape[-1]))
    return phi, side, _query(query, side)


def save_position_attention(model, out_dir, query=None, scale=None):
    """Save the sorted position-based attention grid; returns the paths written."""
    phi, side, q = _position_maps(model, query)
    scale = scale or max(2, 84 // side)
    distances = token_distances(side)
    layers, heads = phi.shape[:2]
    tiles = os.path.join(out_dir, 'position_attention')
    os.makedirs(tiles, exist_ok=True)
    cell = side * scale
    left = 56
    height = heads * cell + (heads - 1) * GAP
    grid = _canvas(left + layers * cell + (layers - 1) * GAP, height + LABEL + 4)
    draw = ImageDraw.Draw(grid)
    lines = [f'non-locality (mean of Phi_p * distance) for query {q}; heads sorted, most local first']
    qi = q[0] * side + q[1]
    for layer in range(layers):
        order, score = sort_heads_by_nonlocality(phi[layer], distances)
        lines.append(f'layer {layer + 1}: ' + ', '.join(f'head {h}: {s:.4f}' for h, s in zip(order, score)))
        x = left + layer * (cell + GAP)
        for rank, head in enumerate(order):
            img = colorize(phi[layer, head, qi].reshape(side, side), q, scale)
            img.save(os.path.join(tiles, f'L{layer + 1:02d}_rank{rank}_head{head}.png'))
            grid.paste(img, (x, rank * (cell + GAP)))
        _text(draw, (x + cell // 2, height + 4), f'Layer {layer + 1}', anchor='ma')
    # the vertical axis: heads, from local (top) to global (bottom)
    _text(draw, (left // 2, 2), 'local', anchor='ma')
    _text(draw, (left // 2, height), 'global', anchor='md')
    _text(draw, (left // 2, height // 2), 'heads', anchor='mm')
    draw.line([left // 2, 16, left // 2, height // 2 - 8], fill=(0, 0, 0))
    draw.line([left // 2, height // 2 + 8, left // 2, height - 14], fill=(0, 0, 0))
    path = os.path.join(out_dir, 'position_attention.png')
    grid.save(path)
    text_path = os.path.join(out_dir, 'nonlocality.txt')
    with open(text_path, 'w', encoding='utf-8') as f:
        f.write('\n'.join(lines) + '\n')
    return [path, text_path]


def load_image(path, config):
    """(model input [1, 3, S, S] float32, the cropped RGB picture) with the config's eval preprocessing."""
    from engine.data import EvalTransform
    from engine.data.decode import pil_to_rgb_array
    rgb = pil_to_rgb_array(Image.open(path))
    d = config.DATA
    x = EvalTransform(d.IMAGE_SIZE, d.CROP_PCT, d.MEAN, d.STD, d.INTERPOLATION)(rgb)
    x = np.asarray(x, dtype=np.float32)                    # [3, S, S]
    picture = (x.transpose(1, 2, 0) * np.asarray(d.STD) + np.asarray(d.MEAN)).clip(0, 1)
    return x[None], Image.fromarray((picture * 255).round().astype(np.uint8))


def save_image_attention(model, image_path, config, out_dir, query=None, scale=None):
    """Save Phi_p and the mixed attention of every layer and head for one image; returns the path."""
    import paddle
    x, picture = load_image(image_path, config)
    phi, side, q = _position_maps(model, query)
    with paddle.no_grad():
        logits, mixed = model.forward_attention(paddle.to_tensor(x))
    mixed = np.stack([a[0].numpy() for a in mixed])           # [L, heads, N, N]
    if mixed.shape[-1] != side * side:
        raise ValueError(f'the image gives {mixed.shape[-1]} tokens, the position attention '
                         f'{side * side}: set DATA.IMAGE_SIZE to the size the model runs at')
    scale = scale or max(2, 84 // side)
    distances = token_distances(side)
    layers, heads = phi.shape[:2]
    cell = side * scale
    qi = q[0] * side + q[1]
    left = 70
    block = heads * cell + (heads - 1) * GAP
    width = max(left + 2 * block + 3 * GAP, left + cell + 2 * GAP + 240)
    top = max(cell, 5 * 14) + LABEL + 8
    canvas = _canvas(width, top + layers * (cell + GAP))
    draw = ImageDraw.Draw(canvas)
    pic = picture.resize((cell, cell), Image.BICUBIC)
    _mark(pic, q, scale)
    canvas.paste(pic, (left, 0))
    top5 = np.argsort(-logits.numpy()[0])[:5]
    for i, line in enumerate([f'{os.path.basename(image_path)}: top-5 classes {top5.tolist()}',
                              f'query token {q} of the {side} x {side} grid (red)',
                              'Phi_p: position-based attention',
                              'mixed: Phi_c * Phi_p, normalised',
                              'heads sorted by non-locality']):
        _text(draw, (left + cell + 2 * GAP, 2 + i * 14), line)
    _text(draw, (left + block // 2, top - 4), 'Phi_p', anchor='md')
    _text(draw, (left + block + 3 * GAP + block // 2, top - 4), 'mixed', anchor='md')
    for layer in range(layers):
        order, _ = sort_heads_by_nonlocality(phi[layer], distances)
        y = top + layer * (cell + GAP)
        _text(draw, (4, y + cell // 2), f'Layer {layer + 1}', anchor='lm')
        for rank, head in enumerate(order):
            x = left + rank * (cell + GAP)
            canvas.paste(colorize(phi[layer, head, qi].reshape(side, side), q, scale), (x, y))
            canvas.paste(colorize(mixed[layer, head, qi].reshape(side, side), q, scale),
                         (x + block + 3 * GAP, y))
    name = os.path.splitext(os.path.basename(image_path))[0]
    path = os.path.join(out_dir, f'attention_{name}.png')
    canvas.save(path)
    return path


def visualize(model, config, out_dir, image=None, query=None):
    """All pictures for `model` (eval mode) into `out_dir`; returns the paths written."""
    model.eval()
    os.makedirs(out_dir, exist_ok=True)
    paths = save_position_attention(model, out_dir, query)
    if image:
        paths.append(save_image_attention(model, image, config, out_dir, query))
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description='Save PerViT attention pictures under <output>/vis/.')
    parser.add_argument('-cfg', required=True, help='YAML config of the variant')
    parser.add_argument('-pretrained', default=None, help='.pdparams (default: the random initial weights)')
    parser.add_argument('-output', default='./output', help='folder; pictures go to <output>/vis/')
    parser.add_argument('-image', default=None, help='also show the attention of this image')
    parser.add_argument('-query', type=int, nargs=2, default=None, metavar=('ROW', 'COL'),
                        help='query token (default: grid centre)')
    parser.add_argument('-opts', nargs='+', default=None, help='config overrides: KEY VALUE ...')
    args = parser.parse_args(argv)

    from engine.cpu.settings import configure as configure_cpu
    from engine.families import load_family   # imports PerViT's config.py / pervit.py by path
    configure_cpu()
    family = load_family('PerViT')
    config = family.get_config(args.cfg, opts=args.opts)
    model = family.build_model(config)
    if args.pretrained:
        from engine.weights import load_weights
        load_weights(model, args.pretrained, what='pretrained')   # strict: every key, its shape
    else:
        print('no -pretrained: showing the initial (peripheral-initialised) weights')
    for path in visualize(model, config, os.path.join(args.output, 'vis'), args.image, args.query):
        print(f'saved {path}')


if __name__ == '__main__':
    import engine
    engine.prepare_process()   # before paddle is imported
    from engine.errors import cli
    sys.exit(cli(main))
