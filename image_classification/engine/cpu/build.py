"""Compile the fused CPU kernels (csrc/fused_cpu_ops.cc) once, cache them, and load them.

The library is built with Paddle's C++ extension tool (`paddle.utils.cpp_extension.load`,
about 20 s) into a cache directory whose name is a hash of everything the binary depends
on: the source, the compiler and linker flags, the Paddle build, the Python ABI, and the CPU
it was compiled for (`-march=native` targets the instruction set of the building CPU, so a
binary built on an AVX-512 node would crash on an AVX2 node sharing the same home folder).
Beside the library, a manifest (`manifest.json`) records those same parts and the library's
SHA-256; before loading, the manifest must match this process and the file, otherwise the
binary is stale or foreign (copied from elsewhere, half written, built by an older version
of this module) and is rebuilt, never loaded.

Processes that start together (distributed ranks) serialise on a file lock: one builds, the
others wait and load its result.  The lock uses `fcntl`, imported by `load_library` only,
so this module imports on every platform; on Windows, which has no `fcntl`,
`engine.cpu.dispatch` never asks for the kernels and Paddle's ops run.

PADDLEVIT_KERNEL_DIR moves the cache (default ~/.cache/paddlevit_kernels).  PADDLEVIT_KERNEL_ISA
picks the instruction set the kernels are compiled for (`settings.kernel_isa`): `native` (the default, the
building CPU's), or `avx2` (AVX2 + FMA, no AVX-512, as on CPUs before Skylake-SP and Zen 4): the
switch that holds the kernels to what older CPUs have, as `ONEDNN_MAX_CPU_ISA=AVX2` and
`MKL_ENABLE_INSTRUCTIONS=AVX2` hold oneDNN and MKL (tools/benchmark.py --isa avx2 sets all three).
Each choice is a build of its own in the cache (the flags are part of the key).
"""
import contextlib
import functools
import hashlib
import io
import json
import logging
import os
import platform
import shutil
import sys
import sysconfig

import paddle

from . import settings

logger = logging.getLogger(__name__)

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'csrc', 'fused_cpu_ops.cc')
CXX_FLAGS = ['-O3', '-fopenmp', '-fno-trapping-math']
# settings.kernel_isa() -> the compiler's target; haswell = AVX2, FMA, F16C, BMI2 and nothing newer
MARCH = {'native': '-march=native', 'avx2': '-march=haswell'}
LIBRARY = 'paddlevit_fused_cpu_ops'
MANIFEST = 'manifest.json'


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


def _compile_flags():
    return CXX_FLAGS + [MARCH[settings.kernel_isa()]] + blas_flags()[0]


def _link_flags():
    return openmp_link_flags() + blas_flags()[1]


# /proc/cpuinfo lines naming the CPU and its instruction set: x86 ('model name', 'flags'),
# ARM ('Features', 'CPU implementer', 'CPU architecture', 'CPU part')
_CPU_KEYS = ('model name', 'flags', 'Features', 'CPU implementer', 'CPU architecture', 'CPU part')


def cpu_identity(cpuinfo='/proc/cpuinfo'):
    """The CPU model and the instruction-set extensions it reports (what -march=native compiles
    for), from `cpuinfo`; lines that vary at run time (clock, BogoMIPS) are left out."""
    try:
        with open(cpuinfo, encoding='utf-8') as f:
            lines = f.read(16384).splitlines()
    except OSError:
        return platform.processor()
    return '\n'.join(line for line in lines if line.startswith(_CPU_KEYS))[:4096]


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


def build_key():
    """Everything the binary depends on, by name: what the manifest records and the cache
    directory's name hashes."""
    with open(SOURCE, 'rb') as f:
        source = hashlib.sha256(f.read()).hexdigest()
    return {'source_sha256': source, 'flags': ' '.join(_compile_flags() + _link_flags()),
            'paddle': _paddle_identity(), 'python': _python_identity(), 'machine': platform.machine(),
            'cpu': cpu_identity()}


def build_directory(key=None):
    """Cache directory of the library built for `key` (default: this process's `build_key`)."""
    digest = hashlib.sha1(json.dumps(key or build_key(), sort_keys=True).encode()).hexdigest()[:16]
    root = os.environ.get('PADDLEVIT_KERNEL_DIR') or os.path.join(
        os.path.expanduser('~'), '.cache', 'paddlevit_kernels')
    return os.path.join(root, digest)


def library_path(directory):
    return os.path.join(directory, LIBRARY, LIBRARY + '.so')


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def built_for(directory, key):
    """Whether `directory` holds a complete library built for `key`: its manifest records
    `key` and the SHA-256 of the library file that is there now."""
    library = library_path(directory)
    try:
        with open(os.path.join(directory, MANIFEST), encoding='utf-8') as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    return (manifest.get('key') == key and os.path.exists(library)
            and manifest.get('library_sha256') == _sha256(library))


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


def _compile(directory, key):
    """Build the library into `directory` from scratch and write its manifest last."""
    from paddle.utils.cpp_extension import load
    # a stale build's objects would be reused by Paddle's tool where its own signature (sources
    # and flags, not the CPU) still matches: start clean
    shutil.rmtree(os.path.join(directory, LIBRARY), ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(directory, MANIFEST))
    logger.info('compiling the fused CPU kernels (once, about 20 s) into %s', directory)
    # Paddle's load() prints "Compiling user custom op, it will cost a few seconds....." to
    # stdout (the line above already says so, in the log too), and the Python it runs setup.py
    # with warns "No ccache found" (engine.logger filters that warning in this process only).
    # A failed build raises.
    with contextlib.redirect_stdout(io.StringIO()), _child_warnings_ignored('No ccache found'):
        load(name=LIBRARY, sources=[SOURCE], extra_cxx_cflags=_compile_flags(),
             extra_ldflags=_link_flags(), build_directory=directory)
    manifest = {'key': key, 'library_sha256': _sha256(library_path(directory))}
    with open(os.path.join(directory, MANIFEST + '.tmp'), 'w', encoding='utf-8') as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    os.replace(os.path.join(directory, MANIFEST + '.tmp'), os.path.join(directory, MANIFEST))


def register(library):
    """Register the custom ops of the shared library `library` with Paddle.

    Private Paddle API, on purpose: `paddle.utils.cpp_extension.load_op_meta_info_and_register_op`
    (outside the module's `__all__`), the same in Paddle 3.0.0, 3.2.2 and 3.3.1 (checked).
    The public `load()` registers the same way but first runs its setup.py in a child Python
    to check the build, about 5 s on every process start even when nothing changed, and writes
    into the cache, so the cached library is registered directly.  If a release removes the
    entry point, `kernels.available()` falls back to Paddle's ops with one warning, and
    tests/test_fused_ops.py `test_paddles_private_entry_points_still_serve` fails.
    """
    from paddle.utils.cpp_extension import load_op_meta_info_and_register_op
    load_op_meta_info_and_register_op(library)


def load_library():
    """Register the kernels from the cached library, building it first where the cache holds
    no library built for this process's `build_key` (none, stale or foreign)."""
    import fcntl   # POSIX only: ImportError on Windows, where the kernels are not available
    key = build_key()
    directory = build_directory(key)
    os.makedirs(directory, exist_ok=True)
    with open(directory + '.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not built_for(directory, key):
            _compile(directory, key)
        register(library_path(directory))
