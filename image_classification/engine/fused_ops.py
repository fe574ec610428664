"""Fused CPU kernels, compiled on first use, for the ops Paddle's CPU build runs slowly.

Training on CPU, Paddle's LayerNorm took 40 ms forward + backward where PyTorch
takes 10 (ViT-S activation, batch 32, 2 threads), its depthwise convolution
1.8 s on VVT-tiny's token grid, and PerViT's attention normalisation 0.2 s a
block.  `csrc/fused_cpu_ops.cc` holds one-pass kernels for LayerNorm, exact
GELU, a Linear's bias, depthwise convs (the 'same' one on channels-last
tokens, and any stride and channel multiplier on NCHW images), attention
(as a whole, or its scaled softmax where attention dropout needs the scores) and
PerViT's peripheral attention weights (figures in its header).  They are
built with Paddle's C++ extension tool the first time a CPU step needs them
(about 20 s, once per machine) into a cache directory keyed by the source,
the compiler and linker flags, Paddle, Python and the CPU, and loaded
straight from there afterwards.

They serve dygraph float32 on the CPU, with gradients or without.  Everything
else (traced graphs and exports, GPU, AMP dtypes) keeps Paddle's ops, so an
exported model never needs the library.  Where the build fails (no C++
compiler, read-only cache) a warning says why once and Paddle's ops are used.
PADDLEVIT_FUSED_CPU_OPS=0 switches the kernels off; PADDLEVIT_KERNEL_DIR moves
the cache (default ~/.cache/paddlevit_kernels).
"""
import contextlib
import fcntl
import functools
import hashlib
import io
import logging
import os
import platform
import sys
import sysconfig

import numpy as np
import paddle
import paddle.nn.functional as F

from . import runtime

logger = logging.getLogger(__name__)

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'csrc', 'fused_cpu_ops.cc')
CXX_FLAGS = ['-O3', '-march=native', '-fopenmp', '-fno-trapping-math']
LIBRARY = 'paddlevit_fused_cpu_ops'


@functools.lru_cache(maxsize=None)
def _paddle_library(name):
    """Path of a shared library Paddle's wheel ships in its `libs` directory, or None
    (looked up once: layers ask on every forward whether the GEMM kernels exist)."""
    path = os.path.join(os.path.dirname(os.path.abspath(paddle.__file__)), 'libs', name)
    return path if os.path.exists(path) else None


def _link_to(library):
    """Linker flags for a shared library found at `library`, found again at run time."""
    libs = os.path.dirname(library)
    name = os.path.basename(library)[len('lib'):-len('.so')]
    return ['-L' + libs, '-Wl,-rpath,' + libs, '-l' + name]


def openmp_link_flags():
    """Link against the OpenMP runtime Paddle itself runs on, where it ships one.

    Paddle's x86 wheels run their kernels and MKL on Intel's libiomp5, whose idle
    threads spin for 200 ms (KMP_BLOCKTIME) after each parallel region.  Kernels
    linked to GCC's libgomp get a second pool of threads that then competes with
    those spinning ones for the same cores: a LayerNorm backward of PiT-S's
    stage 2 took 10.4 ms after a Paddle op, 3.0 ms with the spinning switched off
    (PyTorch: 4.2).  Linked to libiomp5 (GCC's GOMP_* calls are part of its ABI),
    the kernels share Paddle's pool.  Elsewhere: GCC's own runtime.
    """
    library = _paddle_library('libiomp5.so')
    return _link_to(library) if library else ['-fopenmp']


def blas_flags():
    """(compiler, linker) flags for the kernels that call a GEMM: MKL's, where Paddle's
    wheel ships it (x86); elsewhere those kernels are left out and Paddle's ops serve."""
    library = _paddle_library('libmklml_intel.so')
    return (['-DPADDLEVIT_WITH_CBLAS'], _link_to(library)) if library else ([], [])


_state = {'loaded': None}   # None: not tried yet; then True / False


def enabled():
    """False where the user exported PADDLEVIT_FUSED_CPU_OPS=0."""
    return os.environ.get('PADDLEVIT_FUSED_CPU_OPS', '1') != '0'


# /proc/cpuinfo lines naming the CPU and its instruction set: x86 ('model name', 'flags'),
# ARM ('Features', 'CPU implementer', 'CPU part'); the kernels are built with -march=native
_CPU_KEYS = ('model name', 'flags', 'Features', 'CPU implementer', 'CPU architecture', 'CPU part')


def _cpu_identity(cpuinfo='/proc/cpuinfo'):
    try:
        with open(cpuinfo, encoding='utf-8') as f:
            lines = f.read(16384).splitlines()
    except OSError:
        return platform.processor()
    return '\n'.join(line for line in lines if line.startswith(_CPU_KEYS))[:4096]


def _compile_flags():
    return CXX_FLAGS + blas_flags()[0]


def _link_flags():
    return openmp_link_flags() + blas_flags()[1]


def _paddle_identity():
    """The Paddle build the library is compiled against: version, commit and CUDA.

    A library built for one Paddle cannot be loaded by another: one built under 3.3.1
    and loaded under 3.0.0 ends the process with "symbol lookup error: undefined symbol
    paddle::experimental::empty(...)" (the dynamic loader exits; nothing can be caught
    and no fallback runs).  The version alone is not enough: the CPU and the GPU wheel
    of one release, or nightly builds (all 0.0.0), share it; the commit tells them apart.
    """
    version = getattr(paddle, 'version', None)
    commit = getattr(version, 'commit', '')
    cuda = version.cuda() if callable(getattr(version, 'cuda', None)) else ''
    return f'paddle {paddle.__version__} commit {commit} cuda {cuda}'


def _python_identity():
    """The Python ABI the library links against: the extension suffix names the
    implementation, version, ABI flags (debug, free-threaded) and platform; sys.version
    adds the exact build."""
    return f'{sysconfig.get_config_var("EXT_SUFFIX")} {sys.version}'


@contextlib.contextmanager
def _child_warnings_ignored(message):
    """Child Python processes started in the block ignore warnings starting with `message`."""
    before = os.environ.get('PYTHONWARNINGS')
    os.environ['PYTHONWARNINGS'] = f'ignore:{message}' + (f',{before}' if before else '')
    try:
        yield
    finally:
        if before is None:
            os.environ.pop('PYTHONWARNINGS', None)
        else:
            os.environ['PYTHONWARNINGS'] = before


def build_directory():
    """Cache directory of this source built with these flags for this Paddle build, Python
    ABI and CPU (model and instruction-set flags: the code is built with -march=native)."""
    key = hashlib.sha1()
    with open(SOURCE, 'rb') as f:
        key.update(f.read())
    for part in (' '.join(_compile_flags() + _link_flags()), _paddle_identity(), _python_identity(),
                 platform.machine(), _cpu_identity()):
        key.update(part.encode())
    root = os.environ.get('PADDLEVIT_KERNEL_DIR') or os.path.join(
        os.path.expanduser('~'), '.cache', 'paddlevit_kernels')
    return os.path.join(root, key.hexdigest()[:16])


def _build_and_register():
    """Register the kernels from the cached library, building it first if it is not there.

    A file lock serialises the build between processes (distributed ranks start
    together); the `complete` marker is written only after a build succeeded.
    """
    from paddle.utils.cpp_extension import load, load_op_meta_info_and_register_op
    directory = build_directory()
    os.makedirs(directory, exist_ok=True)
    library = os.path.join(directory, LIBRARY, LIBRARY + '.so')
    marker = os.path.join(directory, 'complete')
    with open(directory + '.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(marker) and os.path.exists(library):
            load_op_meta_info_and_register_op(library)
            return
        logger.info('compiling the fused CPU kernels (once, about 20 s) into %s', directory)
        # Paddle's load() prints "Compiling user custom op, it will cost a few seconds....." to
        # stdout (the line above already says so, in the log too), and the Python it runs setup.py
        # with warns "No ccache found" (engine.logger filters that warning in this process only).
        # A failed build raises.
        with contextlib.redirect_stdout(io.StringIO()), _child_warnings_ignored('No ccache found'):
            load(name=LIBRARY, sources=[SOURCE], extra_cxx_cflags=_compile_flags(),
                 extra_ldflags=_link_flags(), build_directory=directory)
        with open(marker, 'w') as f:
            f.write(SOURCE + '\n')


def _smoke_test():
    """Run one kernel through the call path the ops use.  That path
    (`paddle._C_ops._run_custom_op`, what Paddle's own generated custom-op
    wrappers call) is not public API: if a Paddle release moves or changes it,
    this fails here, once, and the fallback takes over instead of every step failing."""
    x = paddle.to_tensor([-1.0, 0.0, 2.0])
    expected = F.gelu(x).numpy()
    if not np.allclose(gelu(x).numpy(), expected, rtol=1e-5, atol=1e-6):
        raise RuntimeError('the fused GELU kernel gave wrong values on its smoke test')


@paddle.jit.not_to_static
def available():
    """Whether the kernels are registered in this process (building them on the first call).

    Never converted by dy2static: Paddle 3.0 converts it when a converted forward runs
    in dygraph, and its conversion reads the module's `_state` as an undefined variable."""
    if _state['loaded'] is None:
        try:
            _build_and_register()
            _smoke_test()
            _state['loaded'] = True
        except Exception as err:   # noqa: BLE001 - any build problem means: use Paddle's ops
            _state['loaded'] = False
            logger.warning('fused CPU kernels unavailable, using Paddle\'s LayerNorm and GELU '
                           '(slower training on CPU): %s: %s', type(err).__name__,
                           str(err).strip().splitlines()[-1] if str(err).strip() else '')
    return _state['loaded']


def wanted(x, *params):
    """Whether an op on `x` (and `params`) should run a fused kernel now: float32 on
    the CPU in dygraph."""
    tensors = (x,) + params
    return (enabled() and paddle.in_dynamic_mode()
            and all(t is not None and t.dtype == paddle.float32 for t in tensors)
            and x.place.is_cpu_place() and available())


def needs_gradient(*tensors):
    """Whether autograd will differentiate through an op on `tensors` now: the kernels
    without a backward pass (dense convolution) serve only where it will not."""
    return paddle.is_grad_enabled() and any(t is not None and not t.stop_gradient for t in tensors)


def _threads():
    return int(runtime.threads or 0)      # 0: OpenMP's own default


def layer_norm(x, weight, bias, epsilon):
    """LayerNorm over the last axis of `x` (contiguous float32 on CPU), differentiable."""
    out, _mean, _rstd = paddle._C_ops._run_custom_op(
        'fused_layer_norm', x.contiguous(), weight, bias, float(epsilon), _threads())
    return out


def gelu(x):
    """Exact GELU, x * Phi(x), of a float32 CPU tensor, differentiable."""
    return paddle._C_ops._run_custom_op('fused_gelu', x.contiguous(), _threads())[0]


def depthwise_conv_tokens(x, weight, bias, grid):
    """Depthwise k x k conv (stride 1, zero padding k // 2) of tokens [B, H*W, C] over
    `grid` (H, W), weight [C, 1, k, k]; the result is in the same token layout."""
    return paddle._C_ops._run_custom_op('fused_depthwise_conv_tokens', x.contiguous(), weight, bias,
                                        int(grid[0]), int(grid[1]), _threads())[0]


def peripheral_attention(dots, position, scale):
    """PerViT's attention weights: rows of exp(scale * (dots - row max)) * position,
    L1-normalised (sum clipped at 1e-12).  dots [B, h, N, N], position [1, h, N, N]."""
    return paddle._C_ops._run_custom_op('fused_peripheral_attention', dots.contiguous(),
                                        position.contiguous(), float(scale), _threads())[0]


def scaled_softmax_(x, scale):
    """softmax(scale * x) over the last axis, differentiable, computed in the memory of
    `x` (contiguous float32 on CPU), which it returns: for a fresh product that
    nothing else reads, such as attention's q k^T."""
    return paddle._C_ops._run_custom_op('fused_scaled_softmax_', x, float(scale), _threads())[0]


def linear(x, weight, bias):
    """x @ weight [K, N] + bias [N] over the last axis of `x`, differentiable."""
    return paddle._C_ops._run_custom_op('fused_linear', x.contiguous(), weight, bias, _threads())[0]


def depthwise_conv_image(x, weight, bias, stride, padding):
    """Depthwise conv of an NCHW image, weight [C * multiplier, 1, kh, kw] (output channel
    o reads input channel o // multiplier), `stride` and zero `padding` as (h, w) pairs."""
    return paddle._C_ops._run_custom_op('fused_depthwise_conv_image', x.contiguous(), weight, bias,
                                        int(stride[0]), int(stride[1]), int(padding[0]), int(padding[1]),
                                        _threads())[0]


def gemm_kernels_available():
    """Whether the kernels that call a GEMM (attention, and convolution without
    gradients) were built: they need the BLAS of Paddle's wheel."""
    return bool(blas_flags()[0]) and available()


def attention(qkv):
    """softmax(q k^T / sqrt(d)) v of a packed qkv projection [B, N, 3, heads, d] (float32
    on CPU), differentiable; the result is [B, N, heads, d]."""
    out, _lse = paddle._C_ops._run_custom_op('fused_attention', qkv.contiguous(), _threads())
    return out


def conv_inference(x, weight, bias, stride, padding):
    """Convolution (groups 1, dilation 1) of an NCHW float32 CPU image without gradients,
    weight [O, C, kh, kw], `stride` and zero `padding` as (h, w) pairs."""
    return paddle._C_ops._run_custom_op('fused_conv_inference', x.contiguous(), weight, bias,
                                        int(stride[0]), int(stride[1]), int(padding[0]), int(padding[1]),
                                        _threads())[0]
