"""Checkpoints: atomic writes, bounded retention, exact resume.

Layout in the output folder (PaddleViT's names, so `-resume` and
`-pretrained` take the same paths as there):

    <NAME>-Epoch-<e>.pdparams      model weights
    <NAME>-Epoch-<e>-EMA.pdparams  EMA weights (when TRAIN.MODEL_EMA)
    <NAME>-Epoch-<e>.pdopt         optimizer + schedule + loss scaler + epoch + EMA update count
    (`<NAME>-Iter-<i>.*` instead for iteration-based runs: CheckpointManager(unit='Iter'))
    <NAME>-Best.pdparams           best validation top-1 so far (+ -Best-EMA)
    latest.txt                     prefix of the newest complete checkpoint

Writing.  All files of a checkpoint are first written to temporary names
(`<file>.tmp<pid>`) and synced; only when every one of them is on disk are
they renamed into place, the `.pdopt` last: a checkpoint whose `.pdopt` exists
is complete, and a kill or a full disk at any moment leaves the previous
checkpoints untouched.  A failed write removes its temporaries and raises
`CheckpointWriteError` naming the file and the free space of its filesystem.

Nothing non-finite is written.  Weights or EMA weights holding NaN/inf (or a
non-finite validation loss) raise `NonFiniteCheckpointError` before any file
is touched: a diverged epoch never becomes `latest` and never makes retention
delete an older, good checkpoint.  The message names the last good checkpoint
to `-resume` from.

Retention (bounded disk).  After each successful save, of this model's
complete checkpoints with an epoch up to the one just saved, the newest
SAVE_KEEP are kept, plus every epoch that is a multiple of SAVE_FREQ (0: none),
plus Best; every other one is retired by `remove_checkpoint`, which deletes
that checkpoint's own files by their exact names (never a prefix pattern:
retiring Epoch-1 must not touch Epoch-10).  Checkpoints of later epochs (left
by the run that a `-resume` from an older epoch went back on) are never
retired; they are replaced only when this run writes the same epoch.

Paddle names optimizer accumulators after framework parameter names
(`linear_3.w_0_moment1_0`), which depend on how many layers the process built
before.  They are stored under structured names instead, so a resume does not
depend on construction order.
"""
import errno
import os
import re
import shutil

import numpy as np
import paddle

from .errors import UserError
from .weights import KeyMismatchError, describe_keys, describe_non_finite, load_weights, non_finite_keys
from .weights_io import load_paddle


class NonFiniteCheckpointError(UserError, FloatingPointError):
    """An epoch ended with non-finite weights or validation results: nothing was saved, the run stops."""


class CheckpointWriteError(UserError, OSError):
    """A checkpoint file could not be written (disk full, permissions); nothing partial is left."""


class OutputFolderInUseError(UserError):
    """A new run was pointed at a folder holding another run's checkpoints."""


class CheckpointNotFoundError(UserError, FileNotFoundError):
    """`-resume` names no complete checkpoint, or one lacks a file the run needs."""


def _size(nbytes):
    for unit, scale in (('GB', 1e9), ('MB', 1e6), ('kB', 1e3)):
        if nbytes >= scale:
            return f'{nbytes / scale:.1f} {unit}'
    return f'{nbytes} bytes'


def _free_space(folder):
    """'<free> free of <total>' on the filesystem of `folder` (or of its nearest existing parent)."""
    path = os.path.abspath(folder)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return 'unknown free space'
    return f'{_size(usage.free)} free of {_size(usage.total)}'


def _write_error(path, error, note):
    reason = error.strerror or str(error)
    code = errno.errorcode.get(error.errno)
    return CheckpointWriteError(
        f'could not write {path}: {reason}{f" ({code})" if code else ""}; its filesystem has '
        f'{_free_space(os.path.dirname(path))}. {note}'.rstrip())


def _discard(paths):
    for path in paths:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def _write_files(pairs, note=''):
    """Write each `(object, path)` to `<path>.tmp<pid>` and sync it; returns the temporaries.

    An object is saved with `paddle.save`, a `str` as UTF-8 text.  Nothing is
    renamed into place here (see `_commit`), so a failure can leave no
    half-written checkpoint: on an OSError every temporary made so far is
    removed and `CheckpointWriteError` names the file, the reason and the free
    space of its filesystem (`note` adds what the caller knows is still safe).
    """
    temps = []
    for obj, path in pairs:
        tmp = f'{path}.tmp{os.getpid()}'
        temps.append(tmp)
        try:
            if isinstance(obj, str):
                with open(tmp, 'w', encoding='utf-8') as f:
                    f.write(obj)
            else:
                paddle.save(obj, tmp)
            with open(tmp, 'rb') as f:
                os.fsync(f.fileno())
        except OSError as e:
            _discard(temps)
            raise _write_error(path, e, note) from None
        except BaseException:   # Ctrl-C or a bug mid-write: no temporary left behind either
            _discard(temps)
            raise
    return temps


def _commit(temps, paths, remove_first=(), note=''):
    """Rename written temporaries onto `paths` in order (a completion marker goes last).

    `remove_first`: files to delete before anything is renamed: the old
    completion marker of a checkpoint being replaced (so that its old and new
    files can never pass for one complete checkpoint) and files of the old
    checkpoint the new one does not have (an EMA file when EMA is now off).
    """
    try:
        _discard(remove_first)
    except OSError as e:
        _discard(temps)
        raise _write_error(e.filename or paths[0], e, note) from None
    for done, (tmp, path) in enumerate(zip(temps, paths)):
        try:
            os.replace(tmp, path)
        except OSError as e:
            _discard(temps[done:])
            raise _write_error(path, e, note) from None


def checkpoint_files(prefix):
    """The files one checkpoint consists of, completion marker (`.pdopt`) first.

    Used to retire a checkpoint and to replace one: a checkpoint is exactly
    these names (its temporaries are these names + `.tmp<pid>`), so nothing
    else in the folder can be touched through it.
    """
    return [prefix + '.pdopt', prefix + '.pdparams', prefix + '-EMA.pdparams']


def remove_checkpoint(prefix):
    """Delete the files of the checkpoint `prefix` and leftover temporaries of them; nothing else.

    The `.pdopt` goes first, so an interruption leaves an incomplete
    checkpoint, never one that looks complete with its weights gone.  Returns
    the names removed.
    """
    folder = os.path.dirname(prefix) or '.'
    names = [os.path.basename(p) for p in checkpoint_files(prefix)]
    temporary = re.compile('(?:' + '|'.join(re.escape(n) for n in names) + r')\.tmp\d+')
    present = set(os.listdir(folder)) if os.path.isdir(folder) else set()
    doomed = [n for n in names if n in present] + sorted(n for n in present if temporary.fullmatch(n))
    _discard(os.path.join(folder, n) for n in doomed)
    return doomed


def retained_epochs(epochs, current, keep, save_freq):
    """The epochs of `epochs` (complete checkpoints) that retention keeps once `current` is saved.

    Of the epochs up to `current`: the newest `keep`, and every multiple of
    `save_freq` (0: none).  Epochs after `current` exist only when this run
    was resumed from an older epoch than the folder's newest; they belong to
    that earlier run and are kept (this run replaces them when it gets there).
    """
    upto = sorted(e for e in epochs if e <= current)
    newest = set(upto[-keep:]) if keep > 0 else set()
    return {e for e in epochs
            if e > current or e in newest or (save_freq > 0 and e % save_freq == 0)}


_COMPLETE = re.compile(r'(?P<name>.+)-(?P<unit>Epoch|Iter)-(?P<epoch>\d+)\.pdopt')


def check_output_folder(output_dir, resume_prefix=None, overwrite=False):
    """Refuse to start a run whose `-output` holds another run's checkpoints.

    Another run's checkpoints are a `latest.txt` or any `*-Epoch-<e>.pdopt`
    (of any model name).  Allowed: resuming from a checkpoint in that same
    folder (`-resume`), or `overwrite` (`-overwrite` / OVERWRITE True), which
    deletes nothing up front: this run's checkpoints replace the old ones epoch
    by epoch, its Best replaces the old Best at its first validation, and old
    checkpoints up to the current epoch are retired by the usual rule (newest
    SAVE_KEEP, multiples of SAVE_FREQ kept).  `-eval` writes only its log and
    is never checked.
    """
    if overwrite or not os.path.isdir(output_dir):
        return
    if resume_prefix and os.path.realpath(os.path.dirname(resume_prefix)) == os.path.realpath(output_dir):
        return
    found = sorted(n for n in os.listdir(output_dir) if n == 'latest.txt' or _COMPLETE.fullmatch(n))
    if found:
        started = (f'a run resumed from {resume_prefix}' if resume_prefix else 'a new run')
        raise OutputFolderInUseError(
            f'-output {output_dir} holds the checkpoints of another run ({describe_keys(found, 6)}); '
            f'{started} would write over them. To continue that run, pass -resume {output_dir}; '
            f'to keep it, choose another -output; to start over in this folder, pass -overwrite '
            f'(config OVERWRITE True): nothing is deleted up front, the new checkpoints replace '
            f'the old ones epoch by epoch and retention retires the rest.')


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
        raise KeyMismatchError(f'optimizer state names parameters the model lacks: {describe_keys(set(unknown))}')
    return out


class CheckpointManager:
    """Writes the checkpoints of one run in `output_dir` and applies the retention rule.

    `save_freq` (SAVE_FREQ, >= 0): epochs that are multiples of it are kept for
    good (0: none); `keep` (SAVE_KEEP, >= 1): the newest complete checkpoints
    kept besides them.  `last_good` is the newest checkpoint of this run known
    to be finite (set by `save`, or by the launcher to the checkpoint it
    resumed from); error messages point to it.
    """

    def __init__(self, output_dir, model_name, save_freq=10, keep=2, log=None, unit='Epoch'):
        from .config import ConfigError
        for key, value, least in (('SAVE_FREQ', save_freq, 0), ('SAVE_KEEP', keep, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f'config key {key!r} is {value!r}: expected an integer >= {least} '
                                  f'(see README, "Checkpoints")')
        self.output_dir = output_dir
        self.model_name = model_name
        self.save_freq = save_freq
        self.keep = keep
        self.log = log or (lambda message: None)
        self.last_good = None
        self.unit = unit   # what the counter counts: 'Epoch', or 'Iter' for iteration-based runs

    def prefix(self, tag):
        return os.path.join(self.output_dir, f'{self.model_name}-{tag}')

    # ----- refusing non-finite checkpoints -----

    def resume_hint(self):
        if self.last_good:
            return (f'The last good checkpoint is {self.last_good}: resume from it with -resume '
                    f'{self.last_good} after lowering TRAIN.BASE_LR or setting TRAIN.GRAD_CLIP.')
        return ('No checkpoint of this run was saved yet: start again with a lower TRAIN.BASE_LR '
                'or with TRAIN.GRAD_CLIP.')

    def diverged(self, epoch, what):
        """The error that stops a run whose epoch `epoch` ended non-finite (`what` says how)."""
        return NonFiniteCheckpointError(
            f'{"epoch " + str(epoch) if epoch is not None else "this epoch"}: {what}. The run diverged: this epoch was not saved and no earlier '
            f'checkpoint was deleted. {self.resume_hint()}')

    def check_finite(self, epoch, model, ema=None, val_loss=None):
        """Raise `diverged(...)` unless the weights, EMA weights and validation loss are all finite."""
        if val_loss is not None and not np.isfinite(val_loss):
            raise self.diverged(epoch, f'validation loss is {val_loss}')
        for label, module in (('weights', model), ('EMA weights', ema.module if ema is not None else None)):
            if module is not None:
                bad = non_finite_keys(module.state_dict())
                if bad:
                    raise self.diverged(epoch, f'the {label} hold NaN or infinite values in '
                                               f'{describe_non_finite(bad, limit=5)}')

    # ----- writing -----

    def _write_checkpoint(self, prefix, pairs):
        """Write `pairs` as the complete set of files of `prefix` (see `checkpoint_files`)."""
        note = (f'Nothing of {os.path.basename(prefix)} was kept (temporary files removed); '
                f'{("the last good checkpoint " + self.last_good) if self.last_good else "earlier files"} '
                f'untouched. Free disk space (SAVE_KEEP and SAVE_FREQ bound what a run keeps) or choose '
                f'another -output, then resume.')
        try:
            os.makedirs(self.output_dir, exist_ok=True)
        except OSError as e:
            raise _write_error(self.output_dir, e, note) from None
        paths = [path for _, path in pairs]
        temps = _write_files(pairs, note)
        owned = checkpoint_files(prefix)
        marker = owned[0]
        replaced = [p for p in owned if p not in paths or p == marker]   # the old marker goes first
        _commit(temps, paths, remove_first=[p for p in replaced if os.path.exists(p)], note=note)

    def save(self, epoch, model, optimizer, scheduler, scaler=None, ema=None, extra=None, val_loss=None,
             optimizer_state=None):
        """Write the checkpoint of `epoch` (1-based, completed), point latest.txt to it, apply retention.

        Refuses (NonFiniteCheckpointError, nothing written or deleted) when the
        weights, EMA weights or `val_loss` are not finite.  Returns its prefix.
        `optimizer_state`: the full optimizer state under structured names when
        the caller gathered it (a sharded run: engine.sharding.full_optimizer_state);
        by default `optimizer`'s own.
        """
        self.check_finite(epoch, model, ema, val_loss)
        prefix = self.prefix(f'{self.unit}-{epoch}')
        if optimizer_state is None:
            optimizer_state = _structured_optimizer_state(model, optimizer.state_dict())
        state = {
            'optimizer': optimizer_state,
            'lr_scheduler': scheduler.state_dict(),
            'epoch': epoch,
            'scaler': scaler.state_dict() if scaler is not None else None,
            'extra': dict(extra or {}),
            'ema_updates': ema.updates if ema is not None else None,   # MODEL_EMA_WARMUP's step
        }
        pairs = [(model.state_dict(), prefix + '.pdparams')]
        if ema is not None:
            pairs.append((ema.state_dict(), prefix + '-EMA.pdparams'))
        pairs.append((state, prefix + '.pdopt'))   # last: marks the checkpoint complete
        self._write_checkpoint(prefix, pairs)
        self.last_good = prefix
        pointer = os.path.join(self.output_dir, 'latest.txt')
        note = f'{prefix} itself is complete; latest.txt still names the previous checkpoint.'
        _commit(_write_files([(os.path.basename(prefix) + '\n', pointer)], note), [pointer], note=note)
        for retired in self.retire(epoch):
            self.log(f'retired {retired} (SAVE_KEEP {self.keep}, SAVE_FREQ {self.save_freq})')
        return prefix

    def save_best(self, model, ema=None, epoch=None):
        """Write `<NAME>-Best.pdparams` (+ `-Best-EMA`), refusing non-finite weights as `save` does."""
        self.check_finite(epoch, model, ema)
        prefix = self.prefix('Best')
        pairs = [(model.state_dict(), prefix + '.pdparams')]
        if ema is not None:
            pairs.append((ema.state_dict(), prefix + '-EMA.pdparams'))
        self._write_checkpoint(prefix, pairs)
        return prefix

    # ----- retention -----

    def complete_checkpoints(self):
        """`{epoch: prefix}` of this model's complete checkpoints (those with a `.pdopt`) in the folder."""
        if not os.path.isdir(self.output_dir):
            return {}
        found = {}
        for name in os.listdir(self.output_dir):
            match = _COMPLETE.fullmatch(name)
            if match and match['name'] == self.model_name and match['unit'] == self.unit:
                found[int(match['epoch'])] = os.path.join(self.output_dir, name[:-len('.pdopt')])
        return found

    def retire(self, current):
        """Delete, one by one with `remove_checkpoint`, the checkpoints the rule no longer keeps."""
        found = self.complete_checkpoints()
        keep = retained_epochs(found, current, self.keep, self.save_freq)
        retired = [found[e] for e in sorted(found) if e not in keep]
        for prefix in retired:
            remove_checkpoint(prefix)
        return retired

    def later_checkpoints(self, epoch):
        """Prefixes of this model's complete checkpoints after `epoch` (left by an earlier run)."""
        return [p for e, p in sorted(self.complete_checkpoints().items()) if e > epoch]

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
            raise CheckpointNotFoundError(f'-resume {path}: folder has no latest.txt (no completed checkpoint)')
        with open(pointer, encoding='utf-8') as f:
            path = os.path.join(path, f.read().strip())
    for ext in ('.pdparams', '.pdopt'):
        if path.endswith(ext):
            path = path[:-len(ext)]
    if not os.path.isfile(path + '.pdopt'):
        raise CheckpointNotFoundError(f'-resume {path}: {path}.pdopt not found (incomplete or missing checkpoint)')
    return path


def resume(prefix, model, optimizer, scheduler, scaler=None, ema=None, load_optimizer=None):
    """Restore everything `CheckpointManager.save` wrote; returns (epoch, extra).

    The model's and the EMA's weights load through `engine.weights.load_weights`, strictly
    (no resize, no head dropped); weights holding NaN/inf are refused (NonFiniteWeightsError).
    `load_optimizer(state)`: takes the full optimizer state (structured names) instead
    of `optimizer.set_state_dict` (a stage-3 sharded run sets its slices after wrapping).
    """
    load_weights(model, prefix + '.pdparams', what='resume', log=None)
    if ema is not None:
        ema_path = prefix + '-EMA.pdparams'
        if not os.path.isfile(ema_path):
            raise CheckpointNotFoundError(f'TRAIN.MODEL_EMA is on but {ema_path} is missing: '
                                    f'resuming would restart the EMA from scratch')
        load_weights(ema.module, ema_path, what='resume EMA', log=None)
    state = load_paddle(prefix + '.pdopt', tensors=True)   # restricted reader, paddle.load's result
    if load_optimizer is not None:
        load_optimizer(state['optimizer'])
    else:
        optimizer.set_state_dict(_framework_optimizer_state(model, state['optimizer']))
    scheduler.set_state_dict(state['lr_scheduler'])
    if ema is not None:
        # the EMA is updated once per optimizer step, as the schedule is stepped: a checkpoint
        # written before `ema_updates` was saved gets the schedule's step count
        updates = state.get('ema_updates')
        ema.updates = int(updates if updates is not None else scheduler.last_epoch)
    if scaler is not None and state.get('scaler'):
        scaler.load_state_dict(state['scaler'])
    return state['epoch'], state.get('extra') or {}
