"""Checkpoints: atomic writes, exact resume, strict loading of weights.

Layout in the output folder (PaddleViT's names, so `-resume` and
`-pretrained` take the same paths as there):

    <NAME>-Epoch-<e>.pdparams      model weights
    <NAME>-Epoch-<e>-EMA.pdparams  EMA weights (when TRAIN.MODEL_EMA)
    <NAME>-Epoch-<e>.pdopt         optimizer + schedule + loss scaler + epoch
    <NAME>-Best.pdparams           best validation top-1 so far (+ -Best-EMA)
    latest.txt                     prefix of the newest complete checkpoint

Every file is written to a temporary name and renamed into place, the
`.pdopt` last: a checkpoint whose `.pdopt` exists is complete, and a kill at
any moment leaves the previous one untouched.  Epochs that are not a multiple
of SAVE_FREQ are kept only while they are the latest.

Paddle names optimizer accumulators after framework parameter names
(`linear_3.w_0_moment1_0`), which depend on how many layers the process built
before.  They are stored under structured names instead, so a resume does not
depend on construction order.
"""
import glob
import os

import numpy as np
import paddle

from .errors import UserError
from .weights_io import load_paddle, load_state_dict


class KeyMismatchError(UserError, ValueError):
    """Keys or shapes of a state dict do not line up with the model; the message lists them."""


def _limited(keys, limit=40):
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
        problems.append(f'{len(missing)} missing key(s): {_limited(missing)}')
    if unexpected:
        problems.append(f'{len(unexpected)} unexpected key(s): {_limited(unexpected)}')
    if wrong:
        problems.append(f'{len(wrong)} shape mismatch(es): {_limited(wrong, 20)}')
    if problems:
        raise KeyMismatchError(
            f'{source} does not fit the model: ' + '; '.join(problems) +
            '. Is it a checkpoint of this architecture and variant (MODEL.NAME, image size, classes)?')


def model_shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _load_params(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f'weights file not found: {path}')
    return dict(load_state_dict(path))   # restricted reader: a hostile file cannot run code


def _set_state_strict(model, state, source, ignore=()):
    check_state(model_shapes(model), state, source=source, ignore=ignore)
    full = dict(model.state_dict())   # keys in `ignore` keep the model's own values
    full.update({k: paddle.to_tensor(v) for k, v in state.items()})
    model.set_state_dict(full)


def _is_classifier_key(model, key):
    prefixes = getattr(model, 'CLASSIFIER', ('head',))
    return any(key == p or key.startswith(p + '.') for p in prefixes)


def load_pretrained(model, path, log=print):
    """Load `.pdparams` weights for fine-tuning, refusing anything that does not fit.

    Image-size-dependent tensors are resized by the model's `adapt_state_dict`
    (logged); classifier-head parameters whose shape differs (another
    NUM_CLASSES) are dropped on purpose and left freshly initialised (logged);
    any other missing, unexpected or mis-shaped key is an error.
    """
    if not path.endswith('.pdparams'):
        path += '.pdparams'
    state = _load_params(path)
    if hasattr(model, 'adapt_state_dict'):
        for message in model.adapt_state_dict(state):
            log(f'pretrained: {message}')
    expected = model_shapes(model)
    dropped = [k for k in expected if _is_classifier_key(model, k) and k in state
               and tuple(state[k].shape) != expected[k]]
    for key in dropped:
        log(f'pretrained: dropped classifier {key} {tuple(state[key].shape)} '
            f'(model has {expected[key]}): it starts from its initialisation')
        del state[key]
    _set_state_strict(model, state, path, ignore=dropped)
    log(f'pretrained: loaded {len(state)} tensors from {path}')


def _atomic_save(obj, path):
    tmp = f'{path}.tmp{os.getpid()}'
    paddle.save(obj, tmp)
    with open(tmp, 'rb') as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_text_atomic(path, text):
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w', encoding='utf-8') as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _structured_optimizer_state(model, opt_state):
    """Rename accumulator keys from framework to structured parameter names."""
    by_framework = {p.name: n for n, p in model.named_parameters()}
    ordered = sorted(by_framework, key=len, reverse=True)
    out = {}
    for key, value in opt_state.items():
        if key == 'master_weights':
            out[key] = {by_framework[k]: v for k, v in value.items() if k in by_framework}
            continue
        owner = next((f for f in ordered if key.startswith(f + '_')), None)
        out[f'@{by_framework[owner]}@{key[len(owner):]}' if owner else key] = value
    return out


def _framework_optimizer_state(model, saved):
    by_structured = {n: p.name for n, p in model.named_parameters()}
    out, unknown = {}, []
    for key, value in saved.items():
        if key == 'master_weights':
            out[key] = {by_structured[k]: v for k, v in value.items() if k in by_structured}
        elif key.startswith('@'):
            name, suffix = key[1:].split('@', 1)
            if name not in by_structured:
                unknown.append(name)
                continue
            out[by_structured[name] + suffix] = value
        else:
            out[key] = value
    if unknown:
        raise KeyMismatchError(f'optimizer state names parameters the model lacks: {_limited(set(unknown))}')
    return out


class CheckpointManager:
    """Writes and restores the checkpoints of one run in `output_dir`."""

    def __init__(self, output_dir, model_name, save_freq):
        self.output_dir = output_dir
        self.model_name = model_name
        self.save_freq = max(1, save_freq)

    def prefix(self, tag):
        return os.path.join(self.output_dir, f'{self.model_name}-{tag}')

    def save(self, epoch, model, optimizer, scheduler, scaler=None, ema=None, extra=None):
        """Write the checkpoint of `epoch` (1-based, completed), then retire the previous latest."""
        os.makedirs(self.output_dir, exist_ok=True)
        previous = self.latest()
        prefix = self.prefix(f'Epoch-{epoch}')
        _atomic_save(model.state_dict(), prefix + '.pdparams')
        if ema is not None:
            _atomic_save(ema.state_dict(), prefix + '-EMA.pdparams')
        state = {
            'optimizer': _structured_optimizer_state(model, optimizer.state_dict()),
            'lr_scheduler': scheduler.state_dict(),
            'epoch': epoch,
            'scaler': scaler.state_dict() if scaler is not None else None,
            'extra': dict(extra or {}),
        }
        _atomic_save(state, prefix + '.pdopt')   # last: marks the checkpoint complete
        _write_text_atomic(os.path.join(self.output_dir, 'latest.txt'), os.path.basename(prefix) + '\n')
        if previous and previous != prefix and not self._kept(previous):
            for path in glob.glob(glob.escape(previous) + '*.pd*'):
                os.remove(path)
        return prefix

    def _kept(self, prefix):
        epoch = prefix.rsplit('-Epoch-', 1)[-1]
        return not epoch.isdigit() or int(epoch) % self.save_freq == 0

    def save_best(self, model, ema=None):
        _atomic_save(model.state_dict(), self.prefix('Best') + '.pdparams')
        if ema is not None:
            _atomic_save(ema.state_dict(), self.prefix('Best') + '-EMA.pdparams')

    def latest(self):
        """Prefix of the newest complete checkpoint in the output folder, or None."""
        pointer = os.path.join(self.output_dir, 'latest.txt')
        if not os.path.isfile(pointer):
            return None
        with open(pointer, encoding='utf-8') as f:
            prefix = os.path.join(self.output_dir, f.read().strip())
        return prefix if os.path.isfile(prefix + '.pdopt') else None


def resolve_resume(path):
    """A checkpoint prefix from `-resume`: a prefix, a file of it, or an output folder."""
    if os.path.isdir(path):
        pointer = os.path.join(path, 'latest.txt')
        if not os.path.isfile(pointer):
            raise FileNotFoundError(f'-resume {path}: folder has no latest.txt (no completed checkpoint)')
        with open(pointer, encoding='utf-8') as f:
            path = os.path.join(path, f.read().strip())
    for ext in ('.pdparams', '.pdopt'):
        if path.endswith(ext):
            path = path[:-len(ext)]
    if not os.path.isfile(path + '.pdopt'):
        raise FileNotFoundError(f'-resume {path}: {path}.pdopt not found (incomplete or missing checkpoint)')
    return path


def resume(prefix, model, optimizer, scheduler, scaler=None, ema=None):
    """Restore everything `CheckpointManager.save` wrote; returns (epoch, extra)."""
    _set_state_strict(model, _load_params(prefix + '.pdparams'), prefix + '.pdparams')
    if ema is not None:
        ema_path = prefix + '-EMA.pdparams'
        if not os.path.isfile(ema_path):
            raise FileNotFoundError(f'TRAIN.MODEL_EMA is on but {ema_path} is missing: '
                                    f'resuming would restart the EMA from scratch')
        ema_state = _load_params(ema_path)
        check_state(model_shapes(ema.module), ema_state, source=ema_path)
        ema.set_state_dict({k: paddle.to_tensor(v) for k, v in ema_state.items()})
    state = load_paddle(prefix + '.pdopt', tensors=True)   # restricted reader, paddle.load's result
    optimizer.set_state_dict(_framework_optimizer_state(model, state['optimizer']))
    scheduler.set_state_dict(state['lr_scheduler'])
    if scaler is not None and state.get('scaler'):
        scaler.load_state_dict(state['scaler'])
    return state['epoch'], state.get('extra') or {}
