"""Process-level settings that must be in place before `import paddle`.

Paddle pins OpenMP to one thread at import unless OMP_NUM_THREADS is already
set, logs every static-graph pass at INFO, and the MKL it bundles picks a slow
code path on AMD CPUs unless told otherwise.  Each setting here is a default:
a value the user exported wins.
"""
import os

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


def configure_environment():
    """Set Paddle's import-time variables, import it, and give it this process's cores.

    Threads are set after the import through `set_num_threads` rather than
    OMP_NUM_THREADS, which Paddle answers with a warning on every start.
    """
    os.environ.setdefault('GLOG_minloglevel', '1')
    if _is_amd_cpu():
        os.environ.setdefault('MKL_DEBUG_CPU_TYPE', '5')
    global threads
    user_set = 'OMP_NUM_THREADS' in os.environ   # Paddle's import sets it to 1 otherwise
    import paddle
    if not user_set:
        threads = cpu_threads()
        paddle.base.core.set_num_threads(threads)
