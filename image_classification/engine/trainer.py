"""One training epoch and one evaluation pass, for any family.

The training step reads nothing back from the device except every
REPORT_FREQ steps (loss average, skipped-step count), so GPU kernels stay
queued.  A non-finite loss found then stops the run with a message; under fp16
loss scaling the scaler skips such steps by itself and the count is logged.
"""
import contextlib
import math
import time
from typing import NamedTuple

import paddle
import paddle.nn.functional as F

from . import distributed as dist
from .errors import UserError
from .seeding import seed_globals


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class NonFiniteOutputError(UserError, FloatingPointError):
    """Evaluation produced NaN/inf logits or loss: broken weights, for which no accuracy is reported."""


def _unwrap(model):
    """The plain layer inside DataParallel or a group-sharded wrapper (TRAIN.SHARDING keeps it in `_layer`)."""
    if isinstance(model, paddle.DataParallel):
        return model._layers
    return model._layer if type(model).__name__.startswith('GroupSharded') else model


class TrainState:
    """What the step loop needs besides the model: optimizer, schedule, AMP, EMA."""

    def __init__(self, optimizer, scheduler, criterion, scaler, amp, ema=None, batch_mix=None,
                 accum_iter=1, distill=False, seed_key=None, finetune_eval_mode=False):
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.criterion = criterion
        self.scaler = scaler
        self.amp = amp                   # dict(enable, level, dtype) for paddle.amp.auto_cast
        self.ema = ema
        self.batch_mix = batch_mix
        self.accum_iter = max(1, accum_iter)
        self.distill = distill           # criterion takes (images, outputs, targets)
        # (SEED, rank): each step reseeds the global generators from (SEED, rank, epoch, step)
        # (engine.seeding), so that a resumed run draws what the uninterrupted one did
        self.seed_key = seed_key
        self.finetune_eval_mode = finetune_eval_mode   # TRAIN.FINETUNE_EVAL_MODE: see set_training_mode
        # for the whole-run ETA (run_eta): VALIDATE_FREQ, and the last validation's wall time
        # (the launcher sets both; 0 s until a validation has been timed)
        self.validate_freq = 1
        self.validation_seconds = 0.0


def set_training_mode(model, finetune_eval_mode=False):
    """Put `model` in training mode; with `finetune_eval_mode`, every layer inside it in eval mode.

    DeiT fine-tunes at 384 with `model.train(False)` (main.py, `--finetune`:
    "keep in eval mode during finetuning"; VVT's main.py does the same), so that
    no layer is stochastic while the weights adapt to the new resolution: no
    dropout, no attention dropout, no drop path (stochastic depth), and any
    BatchNorm normalises with its running statistics and leaves them unchanged.
    Gradients flow as in training: eval mode changes no `stop_gradient`.

    Here every sub-layer gets eval mode and the model's own top-level layer keeps
    training mode.  Our models read their own `training` flag for what the
    forward returns, not for randomness: a distilled PiT returns both heads
    (DeiT's would return their average, which is why DeiT refuses to fine-tune
    with distillation), SP-ViT returns its per-token logits for Token Labeling,
    PerViT recomputes (not caches) its position attention so that it gets
    gradients.  Dropout and drop path live in sub-layers (including the
    attention layers' functional dropout), so they are all off.
    """
    model.train()
    if finetune_eval_mode:
        for layer in _unwrap(model).sublayers():
            layer.eval()


def _loss(state, images, outputs, targets):
    if state.distill:
        return state.criterion(images, outputs, targets)
    if isinstance(outputs, (tuple, list)):   # distilled model trained without a teacher
        outputs = outputs[0]
    return state.criterion(outputs, targets)


def _fmt_time(seconds):
    seconds = int(seconds)
    return f'{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


def validations_left(epoch, num_epochs, validate_freq):
    """Validations from `epoch` (included) to the end: every `validate_freq`-th epoch and the last
    (the launcher's rule)."""
    return sum(1 for e in range(epoch, num_epochs + 1) if e % validate_freq == 0 or e == num_epochs)


def run_eta(epoch_elapsed, step, steps, epoch, num_epochs, validations=0, validation_seconds=0.0):
    """Seconds until the whole run ends, seen from training step `step` (1-based) of `epoch`.

    The pace is this epoch's mean time per step so far (`epoch_elapsed / step`):
    it holds the data loading and excludes the validations, which are added as
    `validations` (still to come, this epoch's included) times the last
    measured `validation_seconds`.  Remaining steps: the rest of this epoch and
    `steps` for each later epoch up to `num_epochs`.
    """
    remaining_steps = (steps - step) + (num_epochs - epoch) * steps
    return epoch_elapsed / max(step, 1) * remaining_steps + validations * validation_seconds


def train_one_epoch(model, loader, state, epoch, num_epochs, logger, report_freq, writer=None):
    """Train for one pass over `loader`; returns the mean training loss."""
    set_training_mode(model, state.finetune_eval_mode)
    steps = len(loader)
    loss_sum = paddle.zeros([1], dtype='float32')
    skipped = paddle.zeros([1], dtype='float32')
    window_loss = paddle.zeros([1], dtype='float32')
    seen, window_steps, window_start, epoch_start = 0, 0, time.time(), time.time()
    for step, (images, targets) in enumerate(loader):
        if state.seed_key is not None:
            seed_globals(*state.seed_key, epoch, step)
        if state.batch_mix is not None:
            images, targets = state.batch_mix(images, targets)
        with paddle.amp.auto_cast(**state.amp):
            outputs = model(images)
            loss = _loss(state, images, outputs, targets)
        update = (step + 1) % state.accum_iter == 0 or step + 1 == steps
        sync = contextlib.nullcontext()
        if not update and isinstance(model, paddle.DataParallel):
            sync = model.no_sync()   # accumulate locally, all-reduce once per update
        with sync:
            state.scaler.scale(loss / state.accum_iter).backward()
        if update:
            state.scaler.step(state.optimizer)
            state.scaler.update()
            found_inf = getattr(state.scaler, '_found_inf', None)
            if state.scaler.is_enable() and found_inf is not None:
                skipped += found_inf.astype('float32')
            state.optimizer.clear_grad()
            state.scheduler.step()
            if state.ema is not None:
                state.ema.update(_unwrap(model))
        detached = loss.detach().astype('float32').reshape([1])
        # Drop this step's outputs now rather than when the next forward rebinds them: on CPU,
        # tensors of one step kept alive through the next fragment the heap (the benchmark's
        # PiT-S train step ran at 4.3 instead of 5.1 img/s with one loss held over).
        del outputs, loss
        loss_sum += detached
        window_loss += detached
        seen += images.shape[0]
        window_steps += 1
        if (step + 1) % report_freq == 0 or step + 1 == steps:
            avg = window_loss.item() / window_steps
            if not math.isfinite(avg):
                raise NonFiniteLossError(
                    f'loss is {avg} at epoch {epoch}, step {step + 1}: stopping instead of training on. '
                    f'Lower TRAIN.BASE_LR, set TRAIN.GRAD_CLIP, or check the data; '
                    f'resume from the last checkpoint with -resume.')
            elapsed = time.time() - window_start
            rate = seen * dist.world_size() / max(elapsed, 1e-9)
            epoch_elapsed = time.time() - epoch_start
            eta = run_eta(epoch_elapsed, step + 1, steps, epoch, num_epochs,
                          validations_left(epoch, num_epochs, state.validate_freq), state.validation_seconds)
            lr = state.optimizer.get_lr()
            message = (f'Epoch[{epoch:03d}/{num_epochs:03d}], Step[{step + 1:04d}/{steps:04d}], '
                       f'Loss: {avg:.4f}, LR: {lr:.6e}, {rate:.1f} img/s, ETA run: {_fmt_time(eta)} '
                       f'(epoch: {_fmt_time(epoch_elapsed / (step + 1) * (steps - step - 1))})')
            if state.scaler.is_enable():
                message += f', skipped steps (inf/nan under loss scaling): {int(skipped.item())}'
            logger.info(message)
            if writer is not None:
                global_step = (epoch - 1) * steps + step + 1
                writer.add_scalar('train/loss', avg, global_step)
                writer.add_scalar('train/lr', lr, global_step)
            window_loss.zero_()
            seen, window_steps, window_start = 0, 0, time.time()
    return loss_sum.item() / max(steps, 1)


class EvalResult(NamedTuple):
    """What `evaluate` measured: mean loss, top-1 and top-5 in %, over `count` images scored.

    `skipped`: listed images that were not scored because they could not be read
    (DATA.SKIP_BAD_IMAGES), missing ones included; count + skipped is the length of
    the list.
    """
    loss: float
    top1: float
    top5: float
    count: int
    skipped: int = 0


def describe_count(result):
    """'359 images scored', or '7 images scored, 1 skipped: see the log', for an evaluation summary."""
    text = f'{result.count} images scored'
    if result.skipped:
        text += f', {result.skipped} skipped: see the log'   # each skip is logged with its list line
    return text


@paddle.no_grad()
def evaluate(model, loader, amp=None):
    """EvalResult(loss, top-1 %, top-5 %, count, skipped) over the whole validation set, summed over ranks.

    Each rank evaluates a disjoint share (see the val sampler); sums of
    correct predictions, losses and sample counts are all-reduced once at the
    end, so no sample is counted twice or dropped.  An image skipped by the
    dataset (DATA.SKIP_BAD_IMAGES) is left out of its batch by the loader, so
    every metric is over the `count` images actually scored; the skips are
    counted by the dataset (`take_skipped()`) and all-reduced with the rest.
    NaN/inf logits or loss raise NonFiniteOutputError instead of returning an
    accuracy.
    """
    model = _unwrap(model)
    model.eval()
    dataset = getattr(loader, 'dataset', None)
    take_skipped = getattr(dataset, 'take_skipped', None)
    if take_skipped is not None:
        take_skipped()   # forget skips counted before this pass
    totals = paddle.zeros([4], dtype='float64')   # loss sum, top-1, top-5, count
    non_finite = paddle.zeros([1], dtype='float64')   # images whose logits hold NaN/inf
    for images, labels in loader:
        with paddle.amp.auto_cast(**(amp or {'enable': False})):
            logits = model(images)
        logits = logits.astype('float32')
        non_finite += paddle.logical_not(paddle.isfinite(logits).all(axis=-1)).astype('float64').sum()
        labels = labels.reshape([-1]).astype('int64')
        loss = F.cross_entropy(logits, labels, reduction='sum')
        k = min(5, logits.shape[-1])
        top = paddle.topk(logits, k=k, axis=-1)[1]
        hits = (top == labels.unsqueeze(-1)).astype('float64')
        totals += paddle.stack([loss.astype('float64').reshape([]), hits[:, 0].sum(), hits.sum(),
                                paddle.to_tensor(float(labels.shape[0]), dtype='float64')])
    skipped_here = take_skipped() if take_skipped is not None else 0
    totals = paddle.concat([totals, paddle.to_tensor([float(skipped_here)], dtype='float64')])
    dist.all_reduce_sum(totals)
    dist.all_reduce_sum(non_finite)
    loss_sum, top1, top5, count, skipped = totals.numpy().tolist()
    # A NaN logit still ranks somewhere in topk, so broken weights would print an "accuracy".
    if non_finite.item() or not math.isfinite(loss_sum):
        raise NonFiniteOutputError(
            f'{int(non_finite.item())} of {int(count)} validation images gave NaN or infinite logits '
            f'(loss sum {loss_sum}): the weights are broken (diverged or damaged), so no accuracy is reported')
    skipped += getattr(dataset, 'num_missing', 0)   # dropped when the list was read, alike on every rank
    scored = max(count, 1.0)
    return EvalResult(loss_sum / scored, 100.0 * top1 / scored, 100.0 * top5 / scored, int(count), int(skipped))
