"""Whether a fused CPU kernel serves an op now: the checks the engine's layers run on every forward.

The answer is no, without importing the kernels or their build, for anything but a float32
tensor on the CPU in dygraph; only then is `kernels` imported (and, on its first use, built
and loaded).  So a GPU run, a traced graph or an export never imports the CPU kernels, and
models never call them: they call the engine's layers and functions, which ask here.
PADDLEVIT_FUSED_CPU_OPS=0 switches the kernels off; they are off where there is no POSIX
file locking for their build (Windows), and Paddle's ops run.
"""
import os

import paddle

POSIX = os.name == 'posix'   # Windows has no fcntl for the build's lock (nor the build's -march=native)


def enabled():
    """False where the user exported PADDLEVIT_FUSED_CPU_OPS=0, or on a non-POSIX system."""
    return POSIX and os.environ.get('PADDLEVIT_FUSED_CPU_OPS', '1') != '0'


@paddle.jit.not_to_static
def kernels():
    """The module of kernel entry points (`engine.cpu.kernels`), imported on the first call."""
    from . import kernels as module
    return module


def wanted(x, *params):
    """Whether an op on `x` (and `params`) should run a fused kernel now: float32 on
    the CPU in dygraph, and the kernels loaded (built on the first such call)."""
    tensors = (x,) + params
    return (enabled() and paddle.in_dynamic_mode()
            and all(t is not None and t.dtype == paddle.float32 for t in tensors)
            and x.place.is_cpu_place() and kernels().available())


def gemm_kernels_available():
    """Whether the kernels that call a GEMM (attention, dense convolution) were built:
    they need the BLAS of Paddle's wheel."""
    return kernels().gemm_kernels_available()
