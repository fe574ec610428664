"""The measuring process: Paddle's CPU threads, and its resident memory as /proc and getrusage see it."""
import os


def setup_paddle(threads):
    """`import paddle` with `threads` CPU threads and quiet logs, which must be set before the import."""
    os.environ['OMP_NUM_THREADS'] = str(threads)
    os.environ.setdefault('GLOG_minloglevel', '1')
    import engine
    engine.prepare_process()   # the remaining process defaults, e.g. MKL on AMD
    import paddle
    paddle.base.core.set_num_threads(threads)
    return paddle


def rss_bytes(pid='self'):
    """Resident set size of process `pid` now (0 once it has gone)."""
    try:
        with open(f'/proc/{pid}/status', encoding='ascii') as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def peak_rss_bytes():
    """The highest resident set size this process has had."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # KiB on Linux
