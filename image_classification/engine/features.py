"""Shared pieces of `forward_intermediates`, the dense-task feature API of every family.

Every model exposes, with timm's semantics (`timm/models/vision_transformer.py`):

    model.feature_info      [{'module': str, 'num_chs': int, 'reduction': int}, ...]
                            one entry per feature the model can return (a block of
                            the isotropic ViTs, a stage of the hierarchical models)
    model.forward_features(x)
                            the classifier's input (unchanged meaning in this repo)
    model.forward_intermediates(x, indices=None, norm=False, output_fmt='NCHW',
                                intermediates_only=False, return_prefix_tokens=False)

`indices` picks entries of `feature_info`: None = all of them, an int n = the
last n, a list = those positions (negative ones count from the end).  Maps come
back in network order, NCHW ([B, C, H, W]) or NLC ([B, H*W, C]); class /
distillation tokens are never part of a map (with `return_prefix_tokens` each
item becomes a (map, prefix tokens [B, T, C]) pair).  `intermediates_only=True`
returns the list alone and stops the network after the deepest requested
feature; otherwise the call returns (forward_features(x), list).

`reduction` is the nominal stride (input side / map side when the input side is
a multiple of it; PiT's unpadded patch conv gives floor((S - 16) / 8) + 1, one
less than S / 8).
"""
import paddle

__all__ = ['feature_indices', 'tokens_to_map', 'format_map', 'OUTPUT_FORMATS']

OUTPUT_FORMATS = ('NCHW', 'NLC')


def feature_indices(num_features, indices):
    """Sorted, de-duplicated positions in [0, num_features) chosen by `indices` (see module doc)."""
    if indices is None:
        return list(range(num_features))
    if isinstance(indices, int) and not isinstance(indices, bool):
        if not 0 < indices <= num_features:
            raise ValueError(f'indices={indices}: an int asks for the last n of the {num_features} '
                             f'features, so it must be in 1..{num_features}')
        return list(range(num_features - indices, num_features))
    chosen = set()
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, int) or not -num_features <= i < num_features:
            raise ValueError(f'indices {list(indices)}: each entry must be an int in '
                             f'[{-num_features}, {num_features}) (this model has {num_features} features)')
        chosen.add(i % num_features)
    if not chosen:
        raise ValueError('indices: an empty list selects no feature')
    return sorted(chosen)


def check_output_format(output_fmt):
    if output_fmt not in OUTPUT_FORMATS:
        raise ValueError(f'output_fmt {output_fmt!r}: expected one of {OUTPUT_FORMATS}')


def check_grid(family, got, built, image_hw):
    """Refuse an input whose token grid differs from the one the model was built for (fixed
    position embeddings: the families that have them resize them when loading weights, not per input)."""
    if tuple(got) != tuple(built):
        raise ValueError(f'{family}: a {image_hw[0]} x {image_hw[1]} input gives a {got[0]} x {got[1]} token '
                         f'grid; this model was built for a {built[0]} x {built[1]} grid (DATA.IMAGE_SIZE) '
                         f'and takes only images of that size')


def tokens_to_map(tokens, height, width):
    """[B, H*W, C] tokens (row-major grid) -> [B, C, H, W]."""
    return tokens.transpose([0, 2, 1]).reshape([tokens.shape[0], tokens.shape[2], height, width])


def format_map(feature_map, output_fmt):
    """A [B, C, H, W] map in `output_fmt` ('NCHW' as is, 'NLC' as [B, H*W, C])."""
    if output_fmt == 'NLC':
        return feature_map.flatten(2).transpose([0, 2, 1])
    return feature_map


def pack(maps, prefixes, return_prefix_tokens):
    """The list a forward_intermediates returns: maps, or (map, prefix tokens) pairs."""
    if return_prefix_tokens:
        return list(zip(maps, prefixes))
    return maps


def no_prefix(batch, dim, dtype):
    """An empty [B, 0, C] prefix for features that carry no class token."""
    return paddle.zeros([batch, 0, dim], dtype=dtype)
