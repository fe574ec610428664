"""Process-level settings that must be in place before `import paddle`.

Paddle pins OpenMP to one thread at import unless OMP_NUM_THREADS is already
set, logs every static-graph pass at INFO, and the MKL it bundles picks a slow
code path on AMD CPUs unless told otherwise.  Each setting here is a default:
a value the user exported wins.

On CPU, Paddle takes every tensor straight from malloc and gives it back when
the tensor dies.  glibc serves blocks above its mmap threshold (at most 32 MB)
with a fresh mmap and unmaps them on free, so each large activation was paid
again in page faults, on every op: a multiply of a ViT-S MLP activation
(batch 32) took 38 ms instead of 4, LayerNorm 22 ms instead of 0.7.
`keep_freed_memory` tells glibc to recycle those blocks inside the process.

Paddle 3 makes transpose, slice and unbind return strided views; the op that
next needs contiguous memory copies them with a slow generic kernel (a
[B, N, 3, heads, d] -> [3, B, heads, N, d] transpose of ViT-S at batch 32:
98 ms, against 11 ms for the dense transpose kernel).  FLAGS_use_stride_kernel=0
restores the dense kernels (Paddle 2's behaviour: views become copies).
"""
import ctypes
import ctypes.util
import logging
import os
import sys

logger = logging.getLogger(__name__)

threads = None   # CPU threads given to Paddle by configure_environment (None: left to OMP_NUM_THREADS)


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


def configure_environment():
    """Set Paddle's import-time variables, import it, and give it this process's cores.

    Threads are set after the import through `set_num_threads` rather than
    OMP_NUM_THREADS, which Paddle answers with a warning on every start.
    """
    os.environ.setdefault('GLOG_minloglevel', '1')
    os.environ.setdefault('FLAGS_use_stride_kernel', '0')
    if _is_amd_cpu():
        os.environ.setdefault('MKL_DEBUG_CPU_TYPE', '5')
    keep_freed_memory()
    global threads
    user_set = 'OMP_NUM_THREADS' in os.environ   # Paddle's import sets it to 1 otherwise
    import paddle
    if not user_set:
        threads = cpu_threads()
        paddle.base.core.set_num_threads(threads)
