"""Optimizer, weight-decay exclusion and the per-step learning-rate schedule.

Weight decay: Paddle calls `apply_decay_param_fun` with each parameter's
*framework* name (`linear_3.w_0`), not the structured name a model author
knows (`blocks.0.attn.qkv.weight`).  PaddleViT compared structured names there,
so its exclusion never fired.  Here the decision is made on structured names
and translated to framework names once.

Layer-wise LR decay (TRAIN.LAYER_DECAY, BEiT / timm `param_groups_layer_decay`):
every parameter gets a layer id, 0 for the embeddings, i + 1 for block i in
forward order, num_layers + 1 for what follows the last block (final norm,
heads), and its learning rate is the schedule's times
LAYER_DECAY ** (num_layers + 1 - layer id): the head trains at the full rate,
each block below it at LAYER_DECAY times the one above.  A model takes part by
defining `num_layers()` and `layer_id(structured name)` (each family's order
is documented there).  The scale goes into Paddle's parameter groups as their
`learning_rate`, a multiplier Paddle applies to the scheduler's value at every
step (`Optimizer._create_param_lr`), so warmup and cosine act on every group
alike, and AdamW's decoupled weight decay (lr x coefficient) follows the group's
rate as in timm; weight-decay exclusion is unchanged (AdamW's
`apply_decay_param_fun`, SGD's groups).
"""
import math

import paddle
from paddle.optimizer.lr import LRScheduler

from .config import ConfigError


def layer_id_of_blocks(name, num_blocks, embeddings, blocks='blocks'):
    """The layer id of parameter `name` in a model made of embeddings (top-level names in
    `embeddings`: 0), one list of blocks (`blocks.<i>.`: i + 1) and what follows (num_blocks + 1)."""
    parts = name.split('.')
    if parts[0] in embeddings:
        return 0
    if parts[0] == blocks:
        return int(parts[1]) + 1
    return num_blocks + 1


def layer_scales(model, decay):
    """{structured name: LR multiplier} of `model`'s trainable parameters for TRAIN.LAYER_DECAY `decay`."""
    num_layers = model.num_layers()
    scales = {}
    for name, param in model.named_parameters():
        if param.stop_gradient:
            continue
        layer = model.layer_id(name)
        if not 0 <= layer <= num_layers + 1:
            raise ValueError(f'{type(model).__name__}.layer_id({name!r}) = {layer}, outside [0, {num_layers + 1}]')
        scales[name] = decay ** (num_layers + 1 - layer)
    return scales



def no_decay_names(model):
    """Structured names of parameters that must not be decayed.

    All 1-D parameters (biases, norm scales and shifts) plus what the model
    lists in `no_weight_decay()` (position embeddings, class tokens, ...).
    """
    listed = set(model.no_weight_decay()) if hasattr(model, 'no_weight_decay') else set()
    names = set()
    for name, param in model.named_parameters():
        if param.stop_gradient:
            continue
        if param.ndim <= 1 or name in listed or name.split('.')[-1] in listed:
            names.add(name)
    return names


def decay_filter(model):
    """`apply_decay_param_fun` for Paddle: True for framework names to decay."""
    skip = no_decay_names(model)
    decay = {p.name for n, p in model.named_parameters() if n not in skip}
    return lambda framework_name: framework_name in decay


def scaled_lrs(config, world_size):
    """(base, warmup_start, end) learning rates for this run's global batch.

    With TRAIN.LINEAR_SCALED_LR set, the factor is global batch (per-process
    batch x processes x ACCUM_ITER) / LINEAR_SCALED_LR.  TRAIN.LR_SCALING says
    which of the three it multiplies:

    - 'base': BASE_LR only; WARMUP_START_LR and END_LR are absolute.  This is
      what every official script here does (DeiT, PerViT and VVT main.py scale
      `args.lr` alone before timm's scheduler reads `--warmup-lr` / `--min-lr`).
    - 'all': all three, as PaddleViT does.
    """
    train = config.TRAIN
    base, start, end = train.BASE_LR, train.WARMUP_START_LR, train.END_LR
    if train.LINEAR_SCALED_LR:
        factor = config.DATA.BATCH_SIZE * world_size * train.ACCUM_ITER / train.LINEAR_SCALED_LR
        base *= factor
        if train.LR_SCALING == 'all':
            start, end = start * factor, end * factor
    return base, start, end


def total_epochs(config):
    """Epochs a run trains: NUM_EPOCHS of schedule, then COOLDOWN_EPOCHS at END_LR.

    timm's `create_scheduler` returns `cycle length + cooldown_epochs` and the
    training scripts that use that number (TLT, SP-ViT) loop over it, their
    cosine scheduler holding `lr_min` once past `t_initial`; DeiT, PerViT and
    VVT ignore it (their recipes have no cooldown).
    """
    return config.TRAIN.NUM_EPOCHS + config.TRAIN.COOLDOWN_EPOCHS


class WarmupCosine(LRScheduler):
    """Linear warmup from `warmup_start_lr` to `base_lr` over `warmup_steps`, then
    half-cosine down to `end_lr` at `total_steps`; stepped once per optimizer step.

    lr(0) = warmup_start_lr, lr(warmup_steps) = base_lr, lr(total_steps) = end_lr,
    and every step past `total_steps` stays at `end_lr`: that is the cooldown
    (TRAIN.COOLDOWN_EPOCHS), as timm's cosine scheduler returns `lr_min` once a
    run goes past its single cycle.
    """

    def __init__(self, base_lr, warmup_start_lr, end_lr, warmup_steps, total_steps, last_epoch=-1):
        if total_steps <= 0:
            raise ValueError(f'total_steps must be positive, got {total_steps}')
        self.warmup_start_lr = warmup_start_lr
        self.end_lr = end_lr
        self.warmup_steps = min(warmup_steps, total_steps)
        self.total_steps = total_steps
        super().__init__(learning_rate=base_lr, last_epoch=last_epoch)

    def get_lr(self):
        step = self.last_epoch
        if step < self.warmup_steps:
            return self.warmup_start_lr + (self.base_lr - self.warmup_start_lr) * step / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.end_lr + (self.base_lr - self.end_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(config, steps_per_epoch, world_size):
    """The schedule named by TRAIN.LR_SCHEDULER.NAME, in optimizer steps.

    It spans NUM_EPOCHS; the run's COOLDOWN_EPOCHS after them hold END_LR.
    """
    name = config.TRAIN.LR_SCHEDULER.NAME.lower()
    base, start, end = scaled_lrs(config, world_size)
    total = config.TRAIN.NUM_EPOCHS * steps_per_epoch
    warmup = int(round(config.TRAIN.WARMUP_EPOCHS * steps_per_epoch))
    if name == 'warmupcosine':
        return WarmupCosine(base, start, end, warmup, total)
    if name == 'constant':
        return WarmupCosine(base, base, base, 0, total)
    raise ValueError(f'TRAIN.LR_SCHEDULER.NAME {config.TRAIN.LR_SCHEDULER.NAME!r}: '
                     f'expected warmupcosine or constant')


def build_optimizer(config, model, scheduler):
    """AdamW or SGD (momentum) over `model`'s trainable parameters, with TRAIN.LAYER_DECAY's
    per-layer LR multipliers when it is set (see the module docstring)."""
    opt = config.TRAIN.OPTIMIZER
    clip = paddle.nn.ClipGradByGlobalNorm(config.TRAIN.GRAD_CLIP) if config.TRAIN.GRAD_CLIP else None
    trainable = [(n, p) for n, p in model.named_parameters() if not p.stop_gradient]
    scales = {}
    decay = config.TRAIN.LAYER_DECAY
    if decay is not None and decay != 1.0:
        if not hasattr(model, 'layer_id'):
            raise ConfigError(f'TRAIN.LAYER_DECAY = {decay}: {config.MODEL.TYPE} models define no layer order '
                              f'for layer-wise LR decay (ViT, PiT, PerViT, SPViT and VVT do); leave it None')
        scales = layer_scales(model, decay)
    skip = no_decay_names(model)

    def groups(key):
        """Parameter groups, one per distinct (key(name), LR scale), in parameter order."""
        found = {}
        for n, p in trainable:
            group = found.setdefault((key(n), scales.get(n, 1.0)), [])
            group.append(p)
        return [(k, {'params': ps, 'learning_rate': k[1]}) for k, ps in found.items()]

    name = opt.NAME.lower()
    if name == 'adamw':
        params = [g for _, g in groups(lambda n: None)] if scales else [p for _, p in trainable]
        return paddle.optimizer.AdamW(
            learning_rate=scheduler, parameters=params, beta1=opt.BETAS[0], beta2=opt.BETAS[1],
            epsilon=opt.EPS, weight_decay=config.TRAIN.WEIGHT_DECAY,
            apply_decay_param_fun=decay_filter(model), grad_clip=clip)
    if name == 'sgd':
        params = []
        for (kept, _), group in groups(lambda n: n in skip):
            group['weight_decay'] = 0.0 if kept else config.TRAIN.WEIGHT_DECAY
            params.append(group)
        return paddle.optimizer.Momentum(
            learning_rate=scheduler, momentum=opt.MOMENTUM, parameters=params,
            grad_clip=clip, use_nesterov=False)
    raise ValueError(f'TRAIN.OPTIMIZER.NAME {opt.NAME!r}: expected AdamW or SGD')
