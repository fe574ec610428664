"""Which attention kernel runs, decided in one place from facts about the case.

Why this module exists.  Outside CPU dygraph the families used to call
`F.scaled_dot_product_attention` and leave the choice to Paddle.  With no mask,
Paddle 3.0.0 - 3.2.2 hand that call straight to `flash_attention()`, whose GPU
choice (`paddle/nn/functional/flash_attention.py`, `_select_sdp` ->
`_select_sdp_cuda`) looks at the head size alone: <= 256 -> `flash_attn`, else
`memory_efficient_attention`.  Paddle's flash_attn GPU kernel (flash-attn 2)
serves float16 / bfloat16 on compute capability 8.0 and newer only, so an fp32
evaluation on any GPU, or anything on a V100 (7.0) or T4 (7.5), fails there.
Paddle 3.3 chooses by dtype and device (`paddle/nn/functional/sdpa.py`,
`select_sdp_for_sdpa`), but our requirements allow 3.0.  So we do not ask Paddle
to choose: `choose()` picks a backend from the case, by the rules below, and
`attention()` calls that backend's kernel directly, on every Paddle version.

Backends:
  CPU_KERNELS   our fused CPU kernels (engine/cpu/): float32 on the CPU in
                dygraph, or in a graph traced for the CPU inside
                `engine.cpu.dispatch.kernels_in_graph()`; `engine.cpu.dispatch.wanted` checks
                the same, so they are never reached for a GPU tensor.
  FLASH         `paddle.nn.functional.flash_attention.flash_attention` (kernel `flash_attn`).
  MEM_EFFICIENT `paddle.incubate.nn.memory_efficient_attention` (kernel
                `memory_efficient_attention`, CUTLASS, from xformers).
  MATH          matmul - softmax - matmul with plain ops, which exist for every
                dtype on every device; the softmax runs in float32.

Rules (each one names where it comes from):
  * Inside `explicit_attention()` -> MATH on every device: the caller (an explanation
    method, `engine/explain/`) needs the probability matrix A formed as a tensor in the
    graph, passed through the attention's dropout layer where a hook can read it.
  * CPU, float32, dygraph (or a graph traced inside `kernels_in_graph()`), fused kernels
    built -> CPU_KERNELS.  Any other CPU case,
    and any device that is neither CPU nor CUDA GPU (XPU, custom devices) -> MATH.
  * A Paddle version outside 3.0 - 3.3 (the sources these rules were read from) ->
    MATH on GPU: a kernel's contract we have not read is not called.  A develop
    build (`0.0.0`) counts as the newest version read (3.3).
  * FLASH needs all of: dtype float16 or bfloat16 (3.3 `sdpa.py` `_config`
    `flash_attn.support_dtypes`); compute capability 8.0 - 12.1 (`MINIMUM_SM_VERSION`
    / `MAXIMUM_SM_VERSION`, and flash-attn 2 itself); head size <= 256 and a
    multiple of 8 (`check_head_dim_size_flash`); on SM 8.6 - 8.9 with gradients,
    not head size 193 - 224, nor > 224 with dropout (3.0 - 3.2
    `check_flash_head_dim_constraints`, no backward kernel there); and the
    `flash_attn` kernel registered for the dtype on GPU in this wheel.
  * MEM_EFFICIENT needs: dtype float32, float16, or bfloat16 with SM >= 8.0
    (`mem_efficient_attn.support_dtypes`, bfloat16 only where `is_bf16_supported`);
    SM 5.0 - 12.1; head size aligned to the CUTLASS GEMM minimum (3.3
    `minimum_gemm_alignment`: 8 for half types from SM 7.0 (tensor cores), 4 for
    float32 from SM 8.0, 4 on SM 9+, else 1); and the kernel registered for the
    dtype on GPU (wheels built without CUTLASS lack it).
  * Otherwise MATH.

"Registered" is read from Paddle's own kernel table
(`paddle.base.core._get_all_register_op_kernels('phi')`), so a wheel that lacks a
kernel is never asked to run it.  Every decision is logged once per distinct case.
The probes (`_device_type`, `_capability`, `_paddle_version`, `_kernel_registered`)
are module functions so the tests can drive every case on a CPU machine.
"""
import collections
import contextlib
import functools
import logging
import re

import paddle
import paddle.nn.functional as F

from .cpu import dispatch as cpu

logger = logging.getLogger(__name__)

CPU_KERNELS, FLASH, MEM_EFFICIENT, MATH = 'cpu_kernels', 'flash', 'mem_efficient', 'math'

HALF = ('float16', 'bfloat16')
SUPPORTED_VERSIONS = ((3, 0), (3, 3))            # the Paddle sources the rules were read from
FLASH_SM = ((8, 0), (12, 1))
MEM_EFFICIENT_SM = ((5, 0), (12, 1))

# device: 'cpu' | 'gpu' | 'other'; dtype: 'float32' | 'float16' | 'bfloat16' | ...;
# capability: (major, minor) on GPU else None; paddle_version: (major, minor);
# needs_grad: autograd will differentiate q; dropout: the attention dropout applied;
# cpu_kernels: our fused CPU kernels are usable now (float32, CPU, dygraph, built);
# explicit: inside `explicit_attention()`.
Case = collections.namedtuple('Case', 'device dtype capability head_dim paddle_version needs_grad dropout cpu_kernels '
                              'explicit', defaults=(False,))

_explicit_depth = 0


@contextlib.contextmanager
def explicit_attention():
    """Within this block every attention dispatched here runs the plain path (MATH), which
    forms softmax(q k^T / sqrt(d)) as a tensor and passes it through the attention's dropout
    layer, so a forward hook on that layer sees the probabilities and gradients reach them.
    The fused kernels never hold A; explanation methods need it.  Nests; not thread-local
    (dygraph models run in one thread)."""
    global _explicit_depth
    _explicit_depth += 1
    try:
        yield
    finally:
        _explicit_depth -= 1


def _device_type(x):
    """'cpu', 'gpu' (CUDA / ROCm) or 'other' for the place of tensor `x` (in a traced
    graph, where values carry no place, for the device Paddle runs on)."""
    if not paddle.in_dynamic_mode():
        device = paddle.get_device()
        return 'cpu' if device == 'cpu' else 'gpu' if device.startswith('gpu') else 'other'
    place = x.place
    if place.is_cpu_place():
        return 'cpu'
    if place.is_gpu_place():
        return 'gpu'
    return 'other'


def _capability():
    """(major, minor) compute capability of the current GPU."""
    return tuple(paddle.device.cuda.get_device_capability())


def _paddle_version():
    """(major, minor) of the installed Paddle; a develop build (0.0.0) as the newest version read."""
    numbers = [int(n) for n in re.findall(r'\d+', paddle.__version__)[:2]]
    return SUPPORTED_VERSIONS[1] if numbers == [0, 0] else tuple(numbers)


_KERNEL_DTYPES = {'float32': 'float', 'float16': '::phi::dtype::float16', 'bfloat16': '::phi::dtype::bfloat16'}


@functools.lru_cache(maxsize=None)
def _kernel_registered(op, dtype):
    """Whether this Paddle wheel registers a GPU kernel of `op` for `dtype`."""
    try:
        entries = paddle.base.core._get_all_register_op_kernels('phi').get(op, [])
    except Exception:       # noqa: BLE001 - an unreadable table means: do not rely on the kernel
        return False
    wanted = f'data_type[{_KERNEL_DTYPES.get(dtype, dtype)}]'
    return any(wanted in entry and 'gpu' in entry.lower() for entry in entries)


@paddle.jit.not_to_static
def describe(q, dropout):
    """The Case of attention over `q` ([B, N, heads, d]), or over the packed `qkv` ([B, N, 3,
    heads, d]: same dtype, device, head size and gradient), with attention dropout `dropout`."""
    device = _device_type(q)
    return Case(device=device, dtype=str(q.dtype).replace('paddle.', ''),
                capability=_capability() if device == 'gpu' else None, head_dim=int(q.shape[-1]),
                paddle_version=_paddle_version(), needs_grad=bool(paddle.is_grad_enabled() and not q.stop_gradient),
                dropout=float(dropout), cpu_kernels=device == 'cpu' and cpu.wanted(q),
                explicit=_explicit_depth > 0)


def _flash_ok(case):
    sm, d = case.capability, case.head_dim
    if case.dtype not in HALF:
        return False, f'flash_attn has no {case.dtype} kernel (float16 / bfloat16 only)'
    if not FLASH_SM[0] <= sm <= FLASH_SM[1]:
        return False, f'flash_attn needs compute capability 8.0 - 12.1, this GPU is {sm[0]}.{sm[1]}'
    if d > 256 or d % 8:
        return False, f'flash_attn needs a head size <= 256 and a multiple of 8, not {d}'
    if (8, 6) <= sm <= (8, 9) and case.needs_grad and (192 < d <= 224 or (d > 224 and case.dropout > 0)):
        return False, f'flash_attn has no backward for head size {d} on SM 8.6 - 8.9'
    if not _kernel_registered('flash_attn', case.dtype):
        return False, f'this Paddle wheel registers no GPU flash_attn kernel for {case.dtype}'
    return True, 'flash_attn serves this dtype, GPU and head size'


def _mem_alignment(dtype, sm):
    """CUTLASS GEMM alignment of the head size (Paddle 3.3 `minimum_gemm_alignment`)."""
    half = dtype in HALF
    tensor_cores = sm[0] >= 8 or (sm[0] == 7 and half)
    alignment = 4 if sm[0] > 8 else 1
    return max(alignment, 128 // (16 if half else 32)) if tensor_cores else alignment


def _mem_efficient_ok(case):
    sm, d = case.capability, case.head_dim
    if case.dtype not in ('float32',) + HALF or (case.dtype == 'bfloat16' and sm < (8, 0)):
        return False, f'memory_efficient_attention has no {case.dtype} kernel on SM {sm[0]}.{sm[1]}'
    if not MEM_EFFICIENT_SM[0] <= sm <= MEM_EFFICIENT_SM[1]:
        return False, f'memory_efficient_attention needs compute capability 5.0 - 12.1, not {sm[0]}.{sm[1]}'
    alignment = _mem_alignment(case.dtype, sm)
    if d % alignment:
        return False, f'memory_efficient_attention needs a head size aligned to {alignment}, not {d}'
    if not _kernel_registered('memory_efficient_attention', case.dtype):
        return False, f'this Paddle wheel registers no GPU memory_efficient_attention kernel for {case.dtype}'
    return True, 'memory_efficient_attention serves this dtype and GPU'


@paddle.jit.not_to_static
def choose(case):
    """(backend, reason) for `case`: the kernel to run and why, by the rules of the module docstring."""
    if case.explicit:
        return MATH, 'explicit attention requested: plain ops, the probabilities formed as a tensor'
    if case.device == 'cpu':
        if case.cpu_kernels:
            return CPU_KERNELS, ('float32 on CPU in dygraph: the fused CPU kernels' if paddle.in_dynamic_mode()
                                 else 'float32 in a CPU export with --cpu_kernels: the fused CPU kernels')
        return MATH, f'CPU ({case.dtype}, or a traced graph): plain ops'
    if case.device != 'gpu':
        return MATH, 'not a CUDA GPU: plain ops, which every device has'
    if not SUPPORTED_VERSIONS[0] <= case.paddle_version[:2] <= SUPPORTED_VERSIONS[1]:
        return MATH, (f'Paddle {case.paddle_version[0]}.{case.paddle_version[1]} is outside the versions '
                      f'whose GPU kernels were read (3.0 - 3.3): plain ops')
    flash, why_not_flash = _flash_ok(case)
    if flash:
        return FLASH, why_not_flash
    efficient, why_not_efficient = _mem_efficient_ok(case)
    if efficient:
        return MEM_EFFICIENT, f'{why_not_flash}; {why_not_efficient}'
    return MATH, f'{why_not_flash}; {why_not_efficient}: plain ops'


_logged = set()


@paddle.jit.not_to_static
def _log_once(case, backend, reason):
    if case not in _logged:
        _logged.add(case)
        logger.info('attention on %s %s head size %d%s: %s (%s)', case.device, case.dtype, case.head_dim,
                    f' SM {case.capability[0]}.{case.capability[1]}' if case.capability else '', backend, reason)


def _rate(dropout):
    """The attention dropout rate of `dropout`: a rate, or the dropout layer applying it."""
    return dropout.p if isinstance(dropout, paddle.nn.Dropout) else dropout


def math_attention(q, k, v, dropout=0., training=False):
    """softmax(q k^T / sqrt(d)) v with plain ops, q, k, v [B, N, heads, d] -> [B, N, heads, d].
    The softmax runs in float32 whatever the input dtype (as flash attention does
    internally), so float16 scores cannot overflow to inf in its exponent sums.
    `dropout` is a rate, or the attention's `nn.Dropout` layer: then the probabilities
    [B, heads, N, N] always pass through it (identity in eval), where a hook can read them."""
    q, k, v = (t.transpose([0, 2, 1, 3]) for t in (q, k, v))          # [B, heads, N, d]
    scores = paddle.matmul(q, k, transpose_y=True) * (q.shape[-1] ** -0.5)
    attn = F.softmax(scores.astype('float32'), axis=-1).astype(q.dtype)
    if isinstance(dropout, paddle.nn.Dropout):
        attn = dropout(attn)
    elif dropout > 0. and training:
        attn = F.dropout(attn, dropout, training=True)
    return paddle.matmul(attn, v).transpose([0, 2, 1, 3])


def cpu_kernels_attention(qkv, dropout=0.):
    """The fused CPU path (float32, CPU, dygraph): one kernel without dropout, else the
    fused in-place scaled softmax over the q k^T product."""
    kernels = cpu.kernels()
    if dropout == 0. and cpu.gemm_kernels_available():
        return kernels.attention(qkv)
    q, k, v = (t.transpose([0, 2, 1, 3]) for t in qkv.unbind(axis=2))       # each [B, heads, N, d]
    attn = kernels.scaled_softmax_(paddle.matmul(q, k, transpose_y=True), q.shape[-1] ** -0.5)
    if dropout > 0.:
        attn = F.dropout(attn, dropout, training=True)
    return paddle.matmul(attn, v).transpose([0, 2, 1, 3])


def attention(qkv, attn_drop=0., training=False):
    """Attention of a packed qkv [B, N, 3, heads, d] -> [B, N, heads, d], on the backend
    `choose` picks for it (logged once per distinct case).  `attn_drop`: the dropout rate,
    or the attention's `nn.Dropout` layer, which the plain path applies to the probabilities."""
    dropout = _rate(attn_drop) if training else 0.
    case = describe(qkv, dropout)
    backend, reason = choose(case)
    _log_once(case, backend, reason)
    if backend == CPU_KERNELS:
        return cpu_kernels_attention(qkv, dropout)
    # split only where a backend takes q, k, v apart: on the CPU (strided views off) the split copies
    # all three, for nothing when the fused kernel reads qkv packed (ViT-S: 2.25 ms of an 83 ms
    # forward at batch 1, 93 ms of a training step at batch 32)
    q, k, v = qkv.unbind(axis=2)
    if backend == FLASH:
        from paddle.nn.functional.flash_attention import flash_attention
        return flash_attention(q, k, v, dropout=dropout, causal=False, training=training)[0]
    if backend == MEM_EFFICIENT:
        from paddle.incubate.nn.memory_efficient_attention import memory_efficient_attention
        return memory_efficient_attention(q, k, v, p=dropout, training=training)
    return math_attention(q, k, v, attn_drop if isinstance(attn_drop, paddle.nn.Dropout) else dropout, training)
