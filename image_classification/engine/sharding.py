"""Sharded data parallel (TRAIN.SHARDING) through Paddle's `group_sharded_parallel`, and the
checkpoint state of a sharded run in the same full format as an unsharded one.

Levels (ZeRO stages), as Paddle names them:

    off      plain DataParallel: every rank holds all parameters, gradients, optimizer state
    os       stage 1: optimizer state split over the ranks
    os_g     stage 2: optimizer state and gradients split (Paddle runs `os` as `os_g`)
    p_g_os   stage 3: parameters too; each rank keeps only its slice outside forward/backward

Where it runs.  Paddle 3.x implements sharding for GPU, XPU and custom devices only:
`paddle.distributed.sharding.group_sharded_parallel` begins with
`assert device in ["gpu", "xpu"] or <custom device>` ("group_sharded_parallel only support
gpu, xpu and custom_device now"), and behind it `GroupShardedOptimizerStage2.__init__` and
`GroupShardedStage3.__init__` assert `core.is_compiled_with_cuda()` (or XPU / custom) and
read the device id as `int(paddle.get_device().split(":")[1])`, which a CPU place
('cpu') does not have.  The CPU wheel therefore cannot shard; `check` refuses it up front
with that reason instead of letting the assertion end the run (tests/test_sharding.py
asserts Paddle still raises it, so the refusal can be lifted when Paddle changes).

Checkpoints.  Whatever the level, a checkpoint holds the FULL state, in the format of
`engine/checkpoint.py` (accumulators under structured parameter names), so a sharded
checkpoint resumes without sharding, at another level, or on another number of ranks, and
an unsharded one resumes sharded.  Saving gathers on every rank (a collective: all ranks
call it) and rank 0 writes:

  * os / os_g: rank r's inner optimizer holds the accumulators of the parameters assigned
    to r (whole tensors, disjoint between ranks); the full state is their union.
  * p_g_os: every parameter above Paddle's `segment_size` is flattened, padded to a
    multiple of the rank count and split into equal slices (`_param2buffer[name][r]`
    = (start, end)); its accumulators are named `slice@<param>_...` and hold rank r's
    slice.  Smaller parameters stay whole on every rank.  The full accumulator is the
    concatenation of the slices, cut to the parameter's size and shaped like it.
    Parameters are gathered with the wrapper's own `get_all_parameters()` (as
    `save_group_sharded_model` does) after training and again after validation
    (the stage-3 forward hooks sit on the inner layers, so evaluating the plain
    model gathers and releases slices as training does), before weights are
    checked or saved.  `get_all_parameters` points the optimizer back at the full
    parameters; the wrapper's redefined `step` re-slices them (`_update_params_slice`)
    before the next update.

Resuming: the weights are set before wrapping (stage 2/3 then broadcast or slice them);
for os / os_g the full optimizer state is given to the optimizer before wrapping too:
Paddle keeps it in `_accumulators_holder` and each rank's accumulators take their values
from it by name when they are created (entries of other ranks' parameters are not used);
for p_g_os the full state is cut into this rank's slices after wrapping (`shard_state`).
"""
import numpy as np
import paddle

from .config import ConfigError

LEVELS = {'off': 0, 'os': 1, 'os_g': 2, 'p_g_os': 3}
SLICE_PREFIX = 'slice@'   # Paddle's name for a stage-3 parameter slice (GroupShardedStage3._param_storage)

CPU_REASON = ('Paddle implements sharding for GPU, XPU and custom devices only: '
              'paddle.distributed.sharding.group_sharded_parallel asserts "group_sharded_parallel only '
              'support gpu, xpu and custom_device now", and its stage-2/3 classes assert a CUDA/XPU build '
              'and read a device id from paddle.get_device()')


class ShardingError(ConfigError):
    """TRAIN.SHARDING asked for something this run cannot do; the message says why and what to set."""


def check(config, world, device):
    """Refuse, before anything is built, a TRAIN.SHARDING this run cannot honour.

    `world`: processes in the group; `device`: 'cpu' or 'gpu:<i>' (engine.distributed.device).
    """
    level = config.TRAIN.SHARDING
    if level == 'off':
        return
    where = f'TRAIN.SHARDING {level!r}'
    if world < 2:
        raise ShardingError(
            f'{where} needs several processes (it splits state between ranks; Paddle\'s stage-2/3 '
            f'classes assert nranks > 1), but this run has {world}. Launch with main_multi_gpu.py under '
            f'python -m paddle.distributed.launch, or set TRAIN.SHARDING off.')
    if not device.startswith('gpu'):
        raise ShardingError(
            f'{where} on {device}: {CPU_REASON}. Set TRAIN.SHARDING off (plain DataParallel) on the CPU.')
    if level == 'p_g_os' and config.TRAIN.MODEL_EMA:
        raise ShardingError(
            f'{where} with TRAIN.MODEL_EMA True: at stage 3 each rank keeps only a slice of every large '
            f'parameter between steps, so the EMA would average released tensors. Use TRAIN.SHARDING '
            f'os or os_g with EMA, or set TRAIN.MODEL_EMA False.')


def wrap(model, optimizer, scaler, level):
    """`group_sharded_parallel` at `level`: returns (train_model, optimizer, scaler) to train with.

    `model` itself stays the plain layer (its parameters are the ones the wrapper updates);
    evaluate and save through it, after `gather_parameters` at stage 3.
    """
    from paddle.distributed.sharding import group_sharded_parallel
    return group_sharded_parallel(model, optimizer, level, scaler=scaler)


def gather_parameters(train_model, level):
    """Stage 3: make every parameter whole again on every rank (collective: all ranks call it);
    other levels keep whole parameters on every rank: nothing to do."""
    if level == 'p_g_os':
        train_model.get_all_parameters()


def slice_layout(train_model, model):
    """`{structured name: (shape, buffer size, [(start, end) per rank])}` of stage-3 sliced parameters.

    Read from the wrapper's bookkeeping: `_param2buffer` (per framework name, one (start,
    end) per rank) and `_param2buffer_size`; parameters absent from it are whole on every rank.
    """
    ranges = getattr(train_model, '_param2buffer', {})
    sizes = getattr(train_model, '_param2buffer_size', {})
    layout = {}
    for name, param in model.named_parameters():
        if param.name in ranges:
            layout[name] = (tuple(param.shape), int(sizes[param.name]), [tuple(r) for r in ranges[param.name]])
    return layout


def local_state(model, optimizer_state):
    """This rank's optimizer state under structured names (stage-3 `slice@` names included)."""
    from .checkpoint import _structured_optimizer_state
    plain = {}
    for key, value in optimizer_state.items():
        if key == 'master_weights':
            value = {k[len(SLICE_PREFIX):] if k.startswith(SLICE_PREFIX) else k: v for k, v in value.items()}
        elif key.startswith(SLICE_PREFIX):
            key = key[len(SLICE_PREFIX):]
        plain[key] = value
    return _structured_optimizer_state(model, plain)


def _numpy(value):
    return value.numpy() if isinstance(value, paddle.Tensor) else value


def _tensors(state):
    """Arrays back to Paddle tensors, as an optimizer's own `state_dict` holds them: `set_state_dict`
    keeps `master_weights` values as given, and Paddle's update reads them as tensors."""
    def convert(v):
        return paddle.to_tensor(v) if isinstance(v, np.ndarray) else v
    return {k: ({n: convert(t) for n, t in v.items()} if k == 'master_weights' else convert(v))
            for k, v in state.items()}


def _owner(key):
    """Structured parameter name of an accumulator key `@<name>@<suffix>`, else None."""
    return key[1:].split('@', 1)[0] if key.startswith('@') else None


def merge_states(parts, layout=None):
    """The full structured optimizer state from every rank's `local_state` (rank order).

    Without `layout` (os / os_g) each parameter's accumulators live on exactly one rank: the
    union.  With `layout` (p_g_os) an accumulator of a sliced parameter whose size is one
    rank's slice is rebuilt from all ranks' slices; per-parameter scalars (Adam's beta
    powers) and unsliced parameters are identical on every rank and taken from rank 0.
    Entries that are not accumulators (LR_Scheduler) come from rank 0.
    """
    layout = layout or {}
    full = {}
    for rank, part in enumerate(parts):
        for key, value in part.items():
            if key == 'master_weights':
                masters = full.setdefault(key, {})
                for name, tensor in value.items():
                    masters.setdefault(name, []).append(_numpy(tensor))
            elif _owner(key) in layout:
                full.setdefault(key, []).append(_numpy(value))
            elif key not in full:
                full[key] = _numpy(value)
            elif _owner(key) is not None and not layout:
                raise ValueError(f'accumulator {key} found on two ranks: the state is not split by parameter')

    def rebuild(name, pieces):
        if name not in layout:
            return pieces[0]
        shape, size, ranges = layout[name]
        numel = int(np.prod(shape))
        if len(pieces) != len(ranges) or any(np.size(p) != end - start for p, (start, end) in zip(pieces, ranges)):
            return pieces[0]   # a per-parameter scalar, the same on every rank
        return np.concatenate([np.ravel(p) for p in pieces])[:numel].reshape(shape)

    out = {}
    for key, value in full.items():
        if key == 'master_weights':
            out[key] = {name: rebuild(name, pieces) if name in layout else pieces[0]
                        for name, pieces in value.items()}
        elif _owner(key) in layout:
            out[key] = rebuild(_owner(key), value)
        else:
            out[key] = value
    return out


def shard_state(full, layout, rank):
    """This rank's framework-free share of a full structured state at stage 3 (inverse of `merge_states`).

    Accumulators of sliced parameters (full size) become the rank's flat slice of the
    zero-padded flattened tensor; everything else is passed through.  Returns structured
    names whose sliced entries are marked for `framework_state` to rename to `slice@...`.
    """
    def cut(name, value):
        shape, size, ranges = layout[name]
        value = np.asarray(_numpy(value))
        if value.size != int(np.prod(shape)):
            return value   # a per-parameter scalar
        start, end = ranges[rank]
        flat = np.zeros(size, dtype=value.dtype)
        flat[:value.size] = value.ravel()
        return flat[start:end].copy()

    out = {}
    for key, value in full.items():
        if key == 'master_weights':
            out[key] = {n: cut(n, v) if n in layout else v for n, v in value.items()}
        elif _owner(key) in layout:
            out[key] = cut(_owner(key), value)
        else:
            out[key] = value
    return out


def framework_state(model, structured, layout=None):
    """Structured names back to Paddle's accumulator names; stage-3 sliced ones as `slice@<name>_...`."""
    from .checkpoint import _framework_optimizer_state
    state = _framework_optimizer_state(model, structured)
    sliced = {p.name for n, p in model.named_parameters() if n in (layout or {})}
    out = {}
    for key, value in state.items():
        if key == 'master_weights':
            out[key] = {SLICE_PREFIX + k if k in sliced else k: v for k, v in value.items()}
            continue
        owner = next((f for f in sliced if key.startswith(f + '_')), None)
        out[SLICE_PREFIX + key if owner else key] = value
    return _tensors(out)


def full_optimizer_state(model, optimizer, train_model, level, all_gather=None):
    """The full structured optimizer state on every rank (collective when sharded: all ranks call it).

    `all_gather(obj) -> [obj of rank 0, rank 1, ...]`; by default Paddle's
    `all_gather_object`.  Tests pass a fake one.
    """
    mine = {k: (_numpy(v) if k != 'master_weights' else {n: _numpy(t) for n, t in v.items()})
            for k, v in local_state(model, optimizer.state_dict()).items()}
    if level == 'off':
        return _tensors(mine)
    if all_gather is None:
        def all_gather(obj):
            gathered = []
            paddle.distributed.all_gather_object(gathered, obj)
            return gathered
    layout = slice_layout(train_model, model) if level == 'p_g_os' else None
    return _tensors(merge_states(all_gather(mine), layout))
