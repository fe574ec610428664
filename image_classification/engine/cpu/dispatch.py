"""Whether a fused CPU kernel serves an op now: the checks the engine's layers run on every forward.

The answer is no, without importing the kernels or their build, for anything but a float32
tensor on the CPU in dygraph, or a float32 value of a graph traced inside `kernels_in_graph()`;
only then is `kernels` imported (and, on its first use, built and loaded).  So a GPU run, a
traced graph or a portable export never imports the CPU kernels, and models never call them:
they call the engine's layers and functions, which ask here.  PADDLEVIT_FUSED_CPU_OPS=0
switches the kernels off; they are off where there is no POSIX file locking for their build
(Windows), and Paddle's ops run.
"""
import contextlib
import os

import paddle

POSIX = os.name == 'posix'   # Windows has no fcntl for the build's lock (nor the build's -march=native)


def enabled():
    """False where the user exported PADDLEVIT_FUSED_CPU_OPS=0, or on a non-POSIX system."""
    return POSIX and os.environ.get('PADDLEVIT_FUSED_CPU_OPS', '1') != '0'


_graph_depth = 0   # how many `kernels_in_graph()` blocks are open


@contextlib.contextmanager
def kernels_in_graph():
    """Within this block a graph being traced (`paddle.jit.save`, `to_static`) records the fused
    kernels as its own ops wherever dygraph on the CPU would run them, instead of Paddle's ops.

    For `tools/export_model.py --cpu_kernels`: Paddle Inference then runs the same kernels as
    dygraph does, but the graph runs only on the CPU, and only in a process that has registered
    this library (`engine.cpu.exported`).  Nests; not thread-local (tracing runs in one thread)."""
    global _graph_depth
    _graph_depth += 1
    try:
        yield
    finally:
        _graph_depth -= 1


@paddle.jit.not_to_static
def kernels():
    """The module of kernel entry points (`engine.cpu.kernels`), imported on the first call."""
    from . import kernels as module
    return module


@paddle.jit.not_to_static
def wanted(x, *params):
    """Whether an op on `x` (and `params`) should run a fused kernel now: float32 on the CPU
    in dygraph, or float32 in a graph traced inside `kernels_in_graph()`, and the kernels
    loaded (built on the first such call)."""
    tensors = (x,) + params
    if not (enabled() and all(t is not None and t.dtype == paddle.float32 for t in tensors)):
        return False
    if paddle.in_dynamic_mode():
        return x.place.is_cpu_place() and kernels().available()
    return _graph_depth > 0 and kernels().available()


def gemm_kernels_available():
    """Whether the kernels that call a GEMM (attention, dense convolution) were built:
    they need the BLAS of Paddle's wheel."""
    return kernels().gemm_kernels_available()
