"""Weights into a model: the one function every entry point loads them with.

`load_weights(model, source, ...)` is what `-pretrained`, the distillation
teacher, `-resume` (model and EMA), `port_weights/port.py`,
`paddlevit.create_model(pretrained=...)` and PerViT's visualisation run.  They
differ only in the options they pass, never in how strictly a file is checked:

- source: a file (read by `load_checkpoint`: `.pdparams` through the restricted
  Paddle reader, `.pth`/`.pt`/`.bin` through the torch-free reader,
  `.safetensors`, `.npz`; a path without one of these extensions gets
  `.pdparams`, as PaddleViT's `-pretrained` takes a prefix), or a state dict
  already in memory (a port's converted official weights);
- `ema`: take the exponential moving average instead of the model's weights:
  from a PyTorch training checkpoint its `state_dict_ema` (timm, TLT, SP-ViT)
  or `model_ema` (DeiT, PerViT); from our `<prefix>.pdparams` the file
  `<prefix>-EMA.pdparams` that `CheckpointManager` writes beside it.  Asked for
  an EMA that is not there, it stops and says what the file holds (timm would
  silently fall back to the model's weights);
- `resize`: let the model's `adapt_state_dict` resize image-size-dependent
  tensors (position embeddings of a checkpoint trained at another
  resolution), each change logged as a WARNING line;
- `drop_head`: a classifier head (the model's `CLASSIFIER` prefixes, default
  `head`) of another class count is dropped and keeps its initialisation,
  logged (fine-tuning on another label set).  Without it such a head is an
  error of its own text, since a random head would give meaningless
  predictions silently.

Then, always: every missing, unexpected or mis-shaped key is a
`KeyMismatchError` listing the keys with both shapes and naming the source
(`set_state_dict` alone only warns and skips a mis-shaped tensor, and ignores a
missing one), and NaN/inf anywhere is a `NonFiniteWeightsError` naming the
keys.  Only then is anything set.
"""
import collections
import os

import numpy as np
import paddle

from .errors import UserError
from .torch_reader import load_torch, unwrap_state_dict
from .weights_io import load_state_dict

__all__ = ['KeyMismatchError', 'NonFiniteWeightsError', 'MissingEMAError', 'EMA_KEYS', 'load_weights',
           'load_checkpoint', 'weights_path', 'check_state', 'check_finite_weights', 'non_finite_keys',
           'describe_non_finite', 'describe_keys', 'model_shapes']

WEIGHT_FORMATS = ('.pdparams', '.pth', '.pt', '.bin', '.safetensors', '.npz')

# where training scripts store the EMA weights beside the model's, in the order looked for
EMA_KEYS = ('state_dict_ema', 'model_ema')


class KeyMismatchError(UserError, ValueError):
    """Keys or shapes of a state dict do not line up with the model; the message lists them."""


class NonFiniteWeightsError(UserError, ValueError):
    """A weights file holds NaN or infinite values; the message names the keys."""


class MissingEMAError(UserError, KeyError):
    """EMA weights were asked for and the source holds none."""

    def __str__(self):   # KeyError would quote the message
        return str(self.args[0])


# ----------------------------------------------------------------------------- checks

def describe_keys(keys, limit=40):
    """Sorted keys as one line, the first `limit` of them and a count of the rest."""
    keys = sorted(keys)
    text = ', '.join(keys[:limit])
    return text + (f', ... ({len(keys) - limit} more)' if len(keys) > limit else '')


def check_state(expected_shapes, state, source='checkpoint', ignore=()):
    """Raise KeyMismatchError unless `state` has exactly the keys and shapes expected.

    `expected_shapes`: `{name: shape}` of the model; `ignore`: names allowed to
    be absent from `state` (a classifier head dropped on purpose).
    """
    missing = [k for k in expected_shapes if k not in state and k not in ignore]
    unexpected = [k for k in state if k not in expected_shapes]
    wrong = [f'{k}: {tuple(np.shape(state[k]))} in {source}, {tuple(expected_shapes[k])} in model'
             for k in expected_shapes
             if k in state and tuple(np.shape(state[k])) != tuple(expected_shapes[k])]
    problems = []
    if missing:
        problems.append(f'{len(missing)} missing key(s): {describe_keys(missing)}')
    if unexpected:
        problems.append(f'{len(unexpected)} unexpected key(s): {describe_keys(unexpected)}')
    if wrong:
        problems.append(f'{len(wrong)} shape mismatch(es): {describe_keys(wrong, 20)}')
    if problems:
        raise KeyMismatchError(
            f'{source} does not fit the model: ' + '; '.join(problems) +
            '. Is it a checkpoint of this architecture and variant (MODEL.NAME, image size, classes)?')


def model_shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def non_finite_keys(state):
    """`{key: count of NaN/inf values}` of a state dict (numpy arrays or Paddle tensors).

    Integer entries cannot hold NaN and are skipped.  Paddle tensors are
    checked where they live (one small read-back per tensor), so a GPU model
    is not copied to the host for it.
    """
    bad = {}
    for key, value in state.items():
        if isinstance(value, paddle.Tensor):
            if not paddle.is_floating_point(value):
                continue
            count = int((~paddle.isfinite(value)).astype('int64').sum().item())
        else:
            value = np.asarray(value)
            if not np.issubdtype(value.dtype, np.floating):
                continue
            count = int(value.size - np.count_nonzero(np.isfinite(value)))
        if count:
            bad[key] = count
    return bad


def describe_non_finite(bad, limit=10):
    """`non_finite_keys`' result as one line: each key with its count of NaN/inf values."""
    keys = sorted(bad)
    text = ', '.join(f'{k} ({bad[k]} value{"s" if bad[k] > 1 else ""})' for k in keys[:limit])
    return text + (f', ... ({len(keys) - limit} more tensors)' if len(keys) > limit else '')


def check_finite_weights(state, source):
    """Raise NonFiniteWeightsError naming the keys of `state` that hold NaN or inf."""
    bad = non_finite_keys(state)
    if bad:
        raise NonFiniteWeightsError(
            f'{source}: {len(bad)} tensor(s) hold NaN or infinite values: {describe_non_finite(bad)}. '
            f'These weights are broken (saved from a diverged run, or a damaged file) and would only '
            f'produce NaN outputs; use an earlier checkpoint.')


# ----------------------------------------------------------------------------- reading

def weights_path(path):
    """`path` itself when it names a weights format, else `path + '.pdparams'` (PaddleViT's prefix)."""
    return path if os.path.splitext(path)[1].lower() in WEIGHT_FORMATS else path + '.pdparams'


def _describe_top_level(obj):
    if not isinstance(obj, dict):
        return f'a {type(obj).__name__}, not a dict'
    keys = [str(k) for k in obj]
    if obj and all(isinstance(v, np.ndarray) for v in obj.values()):
        shown = ', '.join(keys[:5]) + (', ...' if len(keys) > 5 else '')
        return f'a bare state dict of {len(keys)} tensors ({shown})'
    return 'top-level keys: ' + ', '.join(sorted(keys))


def _ema_path(path):
    """Our EMA file beside `<prefix>.pdparams` (CheckpointManager's layout)."""
    return path[:-len('.pdparams')] + '-EMA.pdparams'


def _torch_ema(path):
    obj = load_torch(path)
    key = next((k for k in EMA_KEYS if isinstance(obj, dict) and isinstance(obj.get(k), dict)), None)
    if key is None:
        raise MissingEMAError(f'{path}: EMA weights were asked for, but the checkpoint has none '
                              f'(looked for {" or ".join(EMA_KEYS)}); it is {_describe_top_level(obj)}. '
                              f'Take it without EMA to use the model weights.')
    return unwrap_state_dict(obj[key], source=f'{path}[{key!r}]')


def load_checkpoint(path, ema=False):
    """`{name: np.ndarray}` of a .pdparams, .pth/.pt/.bin, .safetensors or .npz file; with `ema`,
    its EMA weights (see the module docstring).  No code in the file can run: pickles go
    through the restricted readers."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: {path}')
    ext = os.path.splitext(path)[1].lower()
    if ema and ext in ('.safetensors', '.npz'):
        raise MissingEMAError(f'{path}: EMA weights come from a PyTorch training checkpoint (keys '
                              f'{" or ".join(EMA_KEYS)}) or our <prefix>-EMA.pdparams; a {ext} file holds '
                              f'one set of weights: take it without EMA')
    if ext == '.safetensors':
        from safetensors.numpy import load_file
        return collections.OrderedDict(load_file(path))
    if ext == '.npz':
        with np.load(path, allow_pickle=False) as data:
            return collections.OrderedDict((k, data[k]) for k in data.files)
    if ext == '.pdparams':
        if ema:
            if not os.path.isfile(_ema_path(path)):
                raise MissingEMAError(f'{path}: EMA weights were asked for, but {_ema_path(path)} (saved '
                                      f'beside it by TRAIN.MODEL_EMA) does not exist')
            path = _ema_path(path)
        return load_state_dict(path)   # restricted reader: a hostile file cannot run code
    if ema:
        return _torch_ema(path)
    return unwrap_state_dict(load_torch(path), source=path)


# ----------------------------------------------------------------------------- loading

def _is_classifier_key(model, key):
    prefixes = getattr(model, 'CLASSIFIER', ('head',))
    return any(key == p or key.startswith(p + '.') for p in prefixes)


def _head_error(mismatched, state, expected, source):
    shapes = '; '.join(f'{k}: {tuple(np.shape(state[k]))} in {source}, {expected[k]} in the model'
                       for k in mismatched)
    return KeyMismatchError(
        f'the classifier head of {source} does not fit the model ({shapes}): the weights were trained '
        f'for another number of classes than MODEL.NUM_CLASSES. To evaluate them, set -num_classes '
        f'to their class count (and use labels of that dataset); dropping the head is done only '
        f'when fine-tuning, never for evaluation, where a random head would give a meaningless accuracy.')


def load_weights(model, source, *, what='weights', name=None, ema=False, resize=False, drop_head=False,
                 log=print):
    """Fill `model` with the weights of `source` after checking every key; returns what was set.

    source: a weights file (see `load_checkpoint`; no extension means `.pdparams`), or
        `{key: array}` already read (`name` then says where it came from, for messages).
    what: the role of the weights in log lines ('pretrained', 'teacher', ...).
    ema / resize / drop_head: see the module docstring.
    log: callable for one-line messages (resizes, a dropped head, the count loaded), or None.
    """
    log = log or (lambda message: None)
    if isinstance(source, str):
        path = weights_path(source)
        state = dict(load_checkpoint(path, ema=ema))
        name = name or (_ema_path(path) if ema and path.endswith('.pdparams') else path)
    else:
        if ema:
            raise ValueError('ema picks the EMA weights of a file; a state dict in memory is one set of weights')
        state = dict(source)
        name = name or 'state dict'
    if resize and hasattr(model, 'adapt_state_dict'):
        for message in model.adapt_state_dict(state):   # a warning: the weights are not as trained
            log(f'WARNING: {what}: {message}')
    expected = model_shapes(model)
    mismatched = [k for k in expected if _is_classifier_key(model, k) and k in state
                  and tuple(np.shape(state[k])) != expected[k]]
    if mismatched and not drop_head:
        raise _head_error(mismatched, state, expected, name)
    for key in mismatched:
        log(f'{what}: dropped classifier {key} {tuple(np.shape(state[key]))} '
            f'(model has {expected[key]}): it starts from its initialisation')
        del state[key]
    check_finite_weights(state, name)
    check_state(expected, state, source=name, ignore=mismatched)
    full = dict(model.state_dict())   # keys of a dropped head keep the model's own values
    full.update({k: paddle.to_tensor(np.asarray(v), dtype=full[k].dtype) for k, v in state.items()})
    model.set_state_dict(full)
    log(f'{what}: loaded {len(state)} tensors from {name}')
    return state
