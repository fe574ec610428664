"""TRAIN.SHARDING (engine/sharding.py): what is refused, and the full-state checkpoint format.

Paddle's CPU wheel cannot shard (group_sharded_parallel asserts a GPU/XPU/custom device),
so no sharded step runs here.  What can run is covered against real Paddle optimizers:

- the key accepts off / os / os_g / p_g_os only; a sharded run in one process, on the CPU,
  or at stage 3 with EMA is refused with one message (also under paddle.distributed.launch);
- Paddle itself still refuses the CPU (when this test fails, Paddle changed: lift the refusal);
- stage 1/2: the union of per-rank optimizer states (each rank's inner optimizer over its own
  parameters, stepped as stage 2 steps it) is the unsharded optimizer's state, and a rank's
  optimizer given the full state takes exactly its own accumulators from it;
- stage 3: per-rank optimizers over `slice@` parameter slices (Paddle's names and padded
  layout) merge into the unsharded state, and the full state cut for a rank is that rank's state;
- checkpoints: a sharded run's full state saved by CheckpointManager resumes unsharded and
  continues exactly as the unsharded run; an unsharded checkpoint resumes into stage-3 slices;
- the launcher's sharded path on 2 CPU processes (slow), with stage 2's division of labour
  emulated in place of Paddle's refusing classes: DataParallel's losses, both ranks' state
  gathered over gloo into one checkpoint, resume across sharded and unsharded runs.
"""
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest
from paddle.base.framework import EagerParamBase

from conftest import python_traceback_free
from engine import sharding
from engine.checkpoint import CheckpointManager, _structured_optimizer_state, resume
from engine.config import ConfigError, base_config
from engine.launcher import execute
from engine.weights_io import load_paddle

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIT = os.path.join(REPO, 'image_classification', 'ViT')
DEMO_CFG = os.path.join(VIT, 'configs', 'vit_demo_digits_32.yaml')
ENV = {**os.environ, 'GLOG_minloglevel': '2', 'PYTHONWARNINGS': 'ignore'}


def _config(level, ema=False):
    c = base_config()
    c.defrost()
    c.TRAIN.SHARDING = level
    c.TRAIN.MODEL_EMA = ema
    return c


# ----- refusals -----

def test_unknown_level_is_refused_naming_the_allowed_ones(tmp_path):
    from test_engine_run import build_tiny, get_config, _argv, make_dataset
    data = make_dataset(tmp_path / 'data', n_train=4, n_val=4)
    with pytest.raises(ConfigError) as info:
        execute(get_config, build_tiny, argv=_argv(data, str(tmp_path / 'out'), 'TRAIN.SHARDING', 'zero2'))
    assert "TRAIN.SHARDING = 'zero2' is not allowed" in str(info.value)
    assert "'off', 'os', 'os_g', 'p_g_os'" in str(info.value)


@pytest.mark.parametrize('level', ['os', 'os_g', 'p_g_os'])
def test_sharding_in_one_process_is_refused(level, tmp_path):
    from test_engine_run import build_tiny, get_config, _argv, make_dataset
    data = make_dataset(tmp_path / 'data', n_train=4, n_val=4)
    with pytest.raises(sharding.ShardingError) as info:
        execute(get_config, build_tiny, argv=_argv(data, str(tmp_path / 'out'), 'TRAIN.SHARDING', level))
    assert f"TRAIN.SHARDING '{level}' needs several processes" in str(info.value)
    assert not os.path.exists(tmp_path / 'out' / 'log.txt')   # refused before the run starts its log


@pytest.mark.parametrize('level', ['os', 'os_g', 'p_g_os'])
def test_sharding_on_the_cpu_is_refused_with_paddles_reason(level):
    with pytest.raises(sharding.ShardingError) as info:
        sharding.check(_config(level), world=2, device='cpu')
    assert 'group_sharded_parallel only support gpu, xpu and custom_device now' in str(info.value)
    assert 'TRAIN.SHARDING off' in str(info.value)


def test_stage3_with_ema_is_refused_and_the_rest_allowed():
    with pytest.raises(sharding.ShardingError, match='TRAIN.MODEL_EMA'):
        sharding.check(_config('p_g_os', ema=True), world=2, device='gpu:0')
    for level in ('os', 'os_g', 'p_g_os'):
        sharding.check(_config(level, ema=level != 'p_g_os'), world=2, device='gpu:0')
    sharding.check(_config('off'), world=1, device='cpu')


def test_paddle_still_cannot_shard_on_the_cpu():
    """The reason of the CPU refusal, as Paddle raises it (a change here means: lift the refusal)."""
    from paddle.distributed.sharding import group_sharded_parallel
    paddle.set_device('cpu')
    model = paddle.nn.Linear(4, 2)
    optimizer = paddle.optimizer.AdamW(parameters=model.parameters())
    with pytest.raises(AssertionError, match='only support gpu, xpu and custom_device'):
        group_sharded_parallel(model, optimizer, 'os_g')


@pytest.mark.slow
def test_launched_sharded_run_on_the_cpu_ends_with_the_message(tmp_path):
    cmd = [sys.executable, '-m', 'paddle.distributed.launch', '--nproc_per_node', '2',
           '--log_dir', str(tmp_path / 'launch'), os.path.join(VIT, 'main_multi_gpu.py'), '-cfg', DEMO_CFG,
           '-output', str(tmp_path / 'out'), '-opts', 'TRAIN.SHARDING', 'os_g']
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=str(tmp_path), env=ENV)
    assert proc.returncode != 0
    # Each rank refuses before joining the group; the launcher stops the other rank as soon as one
    # exits (silently once paddle is imported: engine.distributed.die_quietly_when_stopped), possibly
    # before it prints.
    message = "TRAIN.SHARDING 'os_g' on cpu: Paddle implements sharding for GPU"
    refused = 0
    for rank in (0, 1):
        with open(tmp_path / 'launch' / f'workerlog.{rank}', encoding='utf-8', errors='replace') as f:
            log = f.read()
        lines = [line for line in log.splitlines() if line.strip()]
        assert python_traceback_free(log), lines[-5:]
        if any(message in line for line in lines):
            assert message in lines[-1], lines[-5:]
            refused += 1
    assert refused >= 1


# ----- state gathering with real optimizers standing in for the ranks -----

class Net(paddle.nn.Layer):
    """A large weight (sliced at stage 3 with the segment size used below) and small ones (whole)."""

    def __init__(self):
        super().__init__()
        self.big = paddle.nn.Linear(9, 7)      # 63 + 7 values
        self.head = paddle.nn.Linear(7, 3)     # 21 + 3

    def forward(self, x):
        return self.head(paddle.tanh(self.big(x)))


SEGMENT = 30   # parameters with more values than this are sliced (Paddle's segment_size)


def _net_and_grads(seed=0):
    paddle.seed(seed)
    net = Net()
    rng = np.random.default_rng(seed)
    grads = [{n: rng.standard_normal(p.shape).astype('float32') for n, p in net.named_parameters()}
             for _ in range(3)]
    return net, grads


def _adamw(params, lr):
    return paddle.optimizer.AdamW(learning_rate=lr, parameters=params, weight_decay=0.05)


def _step(optimizer, pairs):
    """One update of `optimizer` with given gradients: [(param, grad array), ...]."""
    for param, grad in pairs:
        param.grad = paddle.to_tensor(grad)
    optimizer.step()
    optimizer.clear_grad()


def _reference(steps=2):
    net, grads = _net_and_grads()
    opt = _adamw(net.parameters(), paddle.optimizer.lr.StepDecay(0.1, step_size=1, gamma=0.5))
    for g in grads[:steps]:
        _step(opt, [(p, g[n]) for n, p in net.named_parameters()])
        opt._learning_rate.step()
    return net, opt, grads


def _stage2_ranks(steps=2):
    """Two ranks as stage 2 runs them: parameters dealt out (Paddle's greedy `_segment_params`),
    each rank's inner optimizer over its own parameters, all parameters updated by their owner."""
    net, grads = _net_and_grads()
    sizes, owned = [0, 0], [[], []]
    for name, p in net.named_parameters():
        r = sizes.index(min(sizes))
        owned[r].append((name, p))
        sizes[r] += int(np.prod(p.shape))
    opts = [_adamw([p for _, p in own], paddle.optimizer.lr.StepDecay(0.1, step_size=1, gamma=0.5))
            for own in owned]
    for g in grads[:steps]:
        for opt, own in zip(opts, owned):
            _step(opt, [(p, g[n]) for n, p in own])
            opt._learning_rate.step()
    return net, opts, owned


def _assert_same_state(a, b):
    assert set(a) == set(b), (sorted(set(a) ^ set(b)))
    for key in a:
        if key == 'LR_Scheduler':
            assert a[key] == b[key]
        elif key == 'master_weights':
            assert set(a[key]) == set(b[key])
        else:
            np.testing.assert_allclose(np.asarray(sharding._numpy(a[key])), np.asarray(sharding._numpy(b[key])),
                                       rtol=1e-6, atol=1e-7, err_msg=key)


def test_stage2_union_of_rank_states_is_the_unsharded_state():
    ref_net, ref_opt, _ = _reference()
    net, opts, _ = _stage2_ranks()
    for (n, a), (_, b) in zip(ref_net.named_parameters(), net.named_parameters()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, err_msg=n)
    parts = [sharding.local_state(net, opt.state_dict()) for opt in opts]
    assert all(any(k.startswith('@') for k in part) for part in parts)   # both ranks hold accumulators
    merged = sharding.full_optimizer_state(net, opts[0], None, 'os_g', all_gather=lambda mine: parts)
    _assert_same_state(merged, _structured_optimizer_state(ref_net, ref_opt.state_dict()))


def test_stage2_rank_takes_its_own_accumulators_from_the_full_state():
    """Resume at os/os_g: the full state handed to a rank's optimizer before its first step."""
    ref_net, ref_opt, grads = _reference(steps=3)
    full_net, full_opt, _ = _reference(steps=2)
    full = _structured_optimizer_state(full_net, full_opt.state_dict())
    trained, _, owned = _stage2_ranks(steps=2)
    net = Net()   # a new process: fresh parameters (and accumulator names), the checkpoint's weights
    net.set_state_dict(trained.state_dict())
    params = dict(net.named_parameters())
    owned = [[(n, params[n]) for n, _ in own] for own in owned]
    fresh = [_adamw([p for _, p in own], paddle.optimizer.lr.StepDecay(0.1, step_size=1, gamma=0.5))
             for own in owned]
    from engine.checkpoint import _framework_optimizer_state
    for opt, own in zip(fresh, owned):
        opt.set_state_dict(_framework_optimizer_state(net, full))
        _step(opt, [(p, grads[2][n]) for n, p in own])
    for (n, a), (_, b) in zip(ref_net.named_parameters(), net.named_parameters()):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-7, err_msg=n)


class _Stage3:
    """What `slice_layout` reads of a GroupShardedStage3 over 2 ranks, computed as Paddle does:
    numel plus alignment to 256 bytes, rounded up to a multiple of the rank count, equal slices."""

    def __init__(self, net, nranks=2):
        self._param2buffer, self._param2buffer_size = {}, {}
        for p in net.parameters():
            numel = int(np.prod(p.shape))
            if numel <= SEGMENT:
                continue
            size = numel + (-(numel * 4) % 256) // 4
            size += -size % nranks
            per = size // nranks
            self._param2buffer_size[p.name] = size
            self._param2buffer[p.name] = [(r * per, (r + 1) * per) for r in range(nranks)]


def _stage3_ranks(steps=2):
    """Two ranks as stage 3 runs them, each with its own copy of the net (as each process builds
    one): its optimizer over `slice@<name>` flat slices of the sliced parameters (zero padded)
    and over the small parameters whole; all ranks see the same (already reduced) gradients.
    Returns [(net, fake wrapper, layout, optimizer)] per rank."""
    ranks = []
    for r in range(2):
        net, grads = _net_and_grads()
        fake = _Stage3(net)
        layout = sharding.slice_layout(fake, net)
        params = []
        for name, p in net.named_parameters():
            if name in layout:
                shape, size, ranges = layout[name]
                start, end = ranges[r]
                flat = np.zeros(size, 'float32')
                flat[:p.size] = p.numpy().ravel()
                piece = EagerParamBase(shape=[end - start], dtype='float32', name=sharding.SLICE_PREFIX + p.name)
                piece.set_value(flat[start:end])
                params.append((name, piece))
            else:
                params.append((name, p))
        opt = _adamw([q for _, q in params], paddle.optimizer.lr.StepDecay(0.1, step_size=1, gamma=0.5))
        for g in grads[:steps]:
            pairs = []
            for name, q in params:
                grad = g[name]
                if name in layout:
                    shape, size, ranges = layout[name]
                    flat = np.zeros(size, 'float32')
                    flat[:grad.size] = grad.ravel()
                    grad = flat[ranges[r][0]:ranges[r][1]]
                pairs.append((q, grad))
            _step(opt, pairs)
            opt._learning_rate.step()
        ranks.append((net, fake, layout, opt))
    return ranks


def _gathered(ranks):
    parts = [sharding.local_state(net, opt.state_dict()) for net, _, _, opt in ranks]
    net, fake, _, opt = ranks[0]
    return sharding.full_optimizer_state(net, opt, fake, 'p_g_os', all_gather=lambda mine: parts)


def test_stage3_slices_merge_into_the_unsharded_state_and_cut_back():
    ref_net, ref_opt, _ = _reference()
    ranks = _stage3_ranks()
    assert all(set(layout) == {'big.weight'} for _, _, layout, _ in ranks)
    assert any(k.startswith('slice@') for k in ranks[0][3].state_dict())   # Paddle's names
    reference = _structured_optimizer_state(ref_net, ref_opt.state_dict())
    _assert_same_state(_gathered(ranks), reference)
    for r, (net, _, layout, opt) in enumerate(ranks):   # the full state cut for rank r is what rank r holds
        _assert_same_state(sharding.shard_state(reference, layout, r), sharding.local_state(net, opt.state_dict()))
        framework = sharding.framework_state(net, sharding.shard_state(reference, layout, r), layout)
        assert set(framework) == set(opt.state_dict())   # names Paddle's stage-3 optimizer looks up


def test_sharded_checkpoint_resumes_unsharded_and_continues_identically(tmp_path):
    ref_net, ref_opt, grads = _reference(steps=2)
    ranks = _stage3_ranks(steps=2)
    full = _gathered(ranks)
    # the weights of a stage-3 run after gather_parameters are the reference's (same updates)
    manager = CheckpointManager(str(tmp_path), 'net', save_freq=0, keep=2)
    prefix = manager.save(2, ref_net, ranks[0][3], ranks[0][3]._learning_rate, optimizer_state=full)

    saved = load_paddle(prefix + '.pdopt', tensors=True)['optimizer']
    assert all(isinstance(v, paddle.Tensor) for k, v in saved.items() if k.startswith('@'))   # as unsharded
    net2, _ = _net_and_grads(seed=1)
    opt2 = _adamw(net2.parameters(), paddle.optimizer.lr.StepDecay(0.1, step_size=1, gamma=0.5))
    epoch, _ = resume(prefix, net2, opt2, opt2._learning_rate)
    assert epoch == 2
    for opt, model in ((ref_opt, ref_net), (opt2, net2)):
        _step(opt, [(p, grads[2][n]) for n, p in model.named_parameters()])
    for (n, a), (_, b) in zip(ref_net.named_parameters(), net2.named_parameters()):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-6, atol=1e-7, err_msg=n)


def test_unsharded_checkpoint_resumes_into_stage3_slices(tmp_path):
    ref_net, ref_opt, _ = _reference(steps=2)
    prefix = CheckpointManager(str(tmp_path), 'net', save_freq=0, keep=2).save(
        2, ref_net, ref_opt, ref_opt._learning_rate)
    for r, (net, _, layout, opt) in enumerate(_stage3_ranks(steps=2)):
        captured = []
        fresh_opt = _adamw(net.parameters(), paddle.optimizer.lr.StepDecay(0.1, step_size=1, gamma=0.5))
        resume(prefix, _net_and_grads(seed=1)[0], fresh_opt, fresh_opt._learning_rate,
               load_optimizer=captured.append)
        _assert_same_state(sharding.shard_state(captured[0], layout, r), sharding.local_state(net, opt.state_dict()))


# ----- the launcher's sharded path on 2 CPU processes, with stage 2 emulated -----

EMULATED_MAIN = '''
import sys
sys.path[:0] = {paths!r}
import numpy as np
import paddle
import paddle.distributed as dist
from engine import launcher, sharding
from test_engine_run import get_config, build_tiny


class EmulatedStage2:
    """Stage 2's division of labour, which Paddle's own classes refuse to run on the CPU: gradients
    are all-reduced (DataParallel), each rank's optimizer updates and holds state for only the
    parameters dealt to it (Paddle's greedy `_segment_params`; `_parameter_list` narrowed as
    GroupShardedOptimizerStage2._step does), then every parameter is broadcast from its owner."""

    def __init__(self, optimizer):
        self._optim = optimizer
        self._all = list(optimizer._parameter_list)
        sizes, self._owner = [0] * dist.get_world_size(), {{}}
        for p in self._all:
            rank = sizes.index(min(sizes))
            self._owner[p.name] = rank
            sizes[rank] += int(np.prod(p.shape))
        self._local = [p for p in self._all if self._owner[p.name] == dist.get_rank()]

    def step(self):
        self._optim._parameter_list = self._local
        self._optim.step()
        self._optim._parameter_list = self._all
        for p in self._all:
            dist.broadcast(p, src=self._owner[p.name])

    def clear_grad(self, set_to_zero=True):
        self._optim.clear_grad(set_to_zero)

    def get_lr(self):
        return self._optim.get_lr()

    def state_dict(self):
        return self._optim.state_dict()


sharding.check = lambda config, world, device: None
sharding.wrap = lambda model, optimizer, scaler, level: (paddle.DataParallel(model), EmulatedStage2(optimizer), scaler)

if __name__ == '__main__':
    launcher.main(get_config, build_tiny, distributed=True)
'''


def _launch(tmp_path, name, data, *opts, resume=None):
    from test_engine_run import _argv
    script = tmp_path / 'emulated_main.py'
    if not script.exists():
        tests = os.path.dirname(os.path.abspath(__file__))
        script.write_text(EMULATED_MAIN.format(paths=[tests, REPO, os.path.join(REPO, 'image_classification')]))
    out = tmp_path / name
    argv = _argv(data, str(out), *opts) + (['-resume', resume] if resume else [])
    cmd = [sys.executable, '-m', 'paddle.distributed.launch', '--nproc_per_node', '2',
           '--log_dir', str(tmp_path / f'launch_{name}'), str(script)] + argv
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=str(tmp_path), env=ENV)
    log = open(out / 'log.txt').read() if (out / 'log.txt').exists() else ''
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:] + log[-2000:]
    return out, log


def _losses(log):
    import re
    return {int(e): float(v) for e, v in re.findall(r'Epoch\[(\d+)/002\], Train Loss: ([0-9.]+)', log)}


@pytest.mark.slow
def test_emulated_stage2_trains_as_dataparallel_and_checkpoints_cross_levels(tmp_path):
    """2 CPU ranks over gloo: the launcher's sharded path (wrap, gather with all_gather_object, rank-0
    save, resume before wrapping) with stage 2 emulated gives DataParallel's losses; its checkpoint
    resumes unsharded and an unsharded one resumes sharded, each continuing as the uninterrupted run."""
    from test_engine_run import make_dataset
    data = make_dataset(tmp_path / 'data', n_train=32, n_val=8)
    plain, plain_log = _launch(tmp_path, 'plain', data)
    sharded, sharded_log = _launch(tmp_path, 'sharded', data, 'TRAIN.SHARDING', 'os_g')
    assert 'TRAIN.SHARDING os_g: ZeRO stage 2 over 2 processes' in sharded_log
    expected = _losses(plain_log)
    assert set(expected) == {1, 2}
    for epoch, loss in _losses(sharded_log).items():
        assert loss == pytest.approx(expected[epoch], rel=1e-5), (epoch, sharded_log[-1500:])
    saved = load_paddle(str(sharded / 'tiny-Epoch-1.pdopt'), tensors=True)['optimizer']
    moments = sorted(k for k in saved if k.startswith('@') and 'moment1' in k)
    assert moments == ['@conv.bias@_moment1_0', '@conv.weight@_moment1_0', '@head.bias@_moment1_0',
                       '@head.weight@_moment1_0'], moments   # both ranks' shares, gathered
    _, resumed_log = _launch(tmp_path, 'unsharded_from_sharded', data, resume=str(sharded / 'tiny-Epoch-1'))
    assert _losses(resumed_log)[2] == pytest.approx(expected[2], rel=1e-5)
    _, resumed_log = _launch(tmp_path, 'sharded_from_unsharded', data, 'TRAIN.SHARDING', 'os_g',
                             resume=str(plain / 'tiny-Epoch-1'))
    assert _losses(resumed_log)[2] == pytest.approx(expected[2], rel=1e-5)


def test_stage3_master_weights_are_gathered_and_cut_like_accumulators():
    """AMP O2 keeps fp32 master weights per `slice@` parameter at stage 3: same layout as the moments."""
    ranks = _stage3_ranks(steps=1)
    full_values = {n: p.numpy() for n, p in ranks[0][0].named_parameters()}
    parts = []
    for r, (net, _, layout, opt) in enumerate(ranks):
        masters = {}
        for name, p in net.named_parameters():
            value = full_values[name]
            if name in layout:
                shape, size, ranges = layout[name]
                flat = np.zeros(size, 'float32')
                flat[:value.size] = value.ravel()
                value = flat[ranges[r][0]:ranges[r][1]]
            masters[(sharding.SLICE_PREFIX if name in layout else '') + p.name] = value
        parts.append(sharding.local_state(net, {'master_weights': masters}))
    merged = sharding.merge_states(parts, ranks[0][2])['master_weights']
    assert set(merged) == set(full_values)
    for name, value in full_values.items():
        np.testing.assert_array_equal(merged[name], value)
    for r, (net, _, layout, _) in enumerate(ranks):
        back = sharding.framework_state(net, sharding.shard_state({'master_weights': merged}, layout, r), layout)
        np.testing.assert_array_equal(back['master_weights'][sharding.SLICE_PREFIX + net.big.weight.name].numpy(),
                                      parts[r]['master_weights']['big.weight'])
        assert isinstance(back['master_weights'][net.head.weight.name], paddle.Tensor)
