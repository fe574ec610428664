"""Process settings that make Paddle fast on the CPU, applied by explicit calls, never on import.

Two moments, two functions:

`set_process_environment()`, the first statement of an entry point (main_*.py, tools/*.py, the
tests' conftest), before anything imports Paddle: the variables Paddle's libraries read once,
when they load.  Measured: GLOG_minloglevel=1 silences the `I... pir_interpreter` lines of every
static-graph run only when set before `import paddle` (glog reads it as it starts, and
`paddle.set_flags` refuses glog's flags); the MKL Paddle bundles picks a slow code path on AMD
CPUs unless MKL_DEBUG_CPU_TYPE=5 is in the environment when it loads.  A value the user exported
wins.  Child processes (DataLoader workers, distributed ranks) inherit them.

`configure()`, when a CPU run starts (the launcher's `run`, `paddlevit.create_model` on the
CPU, the tools), after Paddle is imported:

- threads: Paddle pins OpenMP to one thread at import unless OMP_NUM_THREADS is set; this
  process gets its share of the cores through `set_num_threads` (setting OMP_NUM_THREADS
  instead makes Paddle warn on every start).
- FLAGS_use_stride_kernel=0, through `paddle.set_flags` (it takes effect at once): Paddle 3
  makes transpose, slice and unbind return strided views; the op that next needs contiguous
  memory copies them with a slow generic kernel (a [B, N, 3, heads, d] -> [3, B, heads, N, d]
  transpose of ViT-S at batch 32: 98 ms, against 11 ms for the dense transpose kernel).  Off,
  Paddle 2's behaviour returns: views become copies.
- `keep_freed_memory`: on CPU, Paddle takes every tensor straight from malloc and gives it
  back when the tensor dies.  glibc serves blocks above its mmap threshold (at most 32 MB)
  with a fresh mmap and unmaps them on free, so each large activation was paid again in page
  faults, on every op: a multiply of a ViT-S MLP activation (batch 32) took 38 ms instead of 4,
  LayerNorm 22 ms instead of 0.7.

Nothing here is applied on a GPU run: there the CPU only feeds the device.
"""
import logging
import os
import sys

from ..errors import UserError

logger = logging.getLogger(__name__)

KERNEL_ISAS = ('native', 'avx2')   # PADDLEVIT_KERNEL_ISA: what the fused kernels are compiled for (build.MARCH)

threads = None   # CPU threads given to Paddle by `configure` (None: not configured, OpenMP's default)


def _local_world_size():
    for var in ('PADDLE_LOCAL_SIZE', 'PADDLE_TRAINERS_NUM', 'LOCAL_WORLD_SIZE'):
        if os.environ.get(var, '').isdigit():
            return max(1, int(os.environ[var]))
    return 1


def _is_amd_cpu():
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            return 'AuthenticAMD' in f.read(4096)
    except OSError:
        return False


def cpu_threads():
    """CPU cores available to this process, shared evenly among local ranks."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // _local_world_size())


class KernelIsaError(UserError):
    """PADDLEVIT_KERNEL_ISA names no instruction set of `KERNEL_ISAS`."""


def kernel_isa():
    """The instruction set the fused CPU kernels are built for: PADDLEVIT_KERNEL_ISA, `native`
    (the building CPU's, the default) or `avx2` (held to AVX2 + FMA as on older CPUs)."""
    value = os.environ.get('PADDLEVIT_KERNEL_ISA', '')
    isa = value.strip().lower() or 'native'
    if isa not in KERNEL_ISAS:
        raise KernelIsaError(f'PADDLEVIT_KERNEL_ISA={value!r} names no instruction set the fused CPU kernels '
                             f'can be built for; allowed: {", ".join(KERNEL_ISAS)} (unset: native)')
    return isa


def set_process_environment():
    """Set the variables Paddle's libraries read when they load (see the module docstring).

    Call it before `import paddle`; a variable the user exported is left as it is.
    """
    os.environ.setdefault('GLOG_minloglevel', '1')
    if _is_amd_cpu():
        os.environ.setdefault('MKL_DEBUG_CPU_TYPE', '5')


def keep_freed_memory():
    """Make glibc keep freed memory for reuse instead of returning it to the kernel.

    mallopt(M_MMAP_MAX, 0) serves large blocks from the heap, and a huge
    M_TRIM_THRESHOLD (2 GB, mallopt's largest) keeps the heap from shrinking,
    so memory a step frees is reused by the next without page faults.  The
    resident size then stays at the peak working set.  Skipped where the user set MALLOC_MMAP_MAX_ (glibc's
    own variable), or where the C library is not glibc.  Returns True if applied.
    """
    if 'MALLOC_MMAP_MAX_' in os.environ or not sys.platform.startswith('linux'):
        return False
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    applied = mallopt(m_mmap_max, 0) == 1 and mallopt(m_trim_threshold, 2 ** 31 - 1) == 1
    if not applied:
        logger.debug('mallopt refused; freed memory goes back to the kernel')
    return applied


def configure():
    """Apply the CPU run settings (see the module docstring) when Paddle runs on the CPU
    (`paddle.get_device()`); on any other device do nothing.  Idempotent; True if applied.

    Threads are left alone where the user exported OMP_NUM_THREADS (see `_user_threads`), the
    stride-kernel flag where the user exported FLAGS_use_stride_kernel.
    """
    global threads
    import paddle
    if paddle.get_device() != 'cpu':
        return False
    if 'FLAGS_use_stride_kernel' not in os.environ:
        paddle.set_flags({'FLAGS_use_stride_kernel': False})
    keep_freed_memory()
    if threads is None and _user_threads() is None:
        threads = cpu_threads()
        paddle.base.core.set_num_threads(threads)
    return True


# OMP_NUM_THREADS when this module was imported, and whether Paddle had been imported by then
_OMP_AT_IMPORT = os.environ.get('OMP_NUM_THREADS'), 'paddle' in sys.modules


def _user_threads():
    """OMP_NUM_THREADS as the user exported it, or None.  Paddle's import sets it to 1 where it is
    missing, so a 1 first seen after Paddle's import is taken for Paddle's default."""
    value, after_paddle = _OMP_AT_IMPORT
    return None if value is None or (after_paddle and value == '1') else value
