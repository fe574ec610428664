"""Thin wrappers over `paddle.distributed` that also hold in a single process.

Process groups are created by `paddle.distributed.launch` / `spawn` and
`init_parallel_env`; nothing here talks to other processes on its own.
"""
import os
import signal

import paddle
import paddle.distributed as dist

from .logger import without_flags_banner


def launched_by_paddle():
    """True inside a process started by `paddle.distributed.launch` or `spawn`."""
    return 'PADDLE_TRAINER_ID' in os.environ and int(os.environ.get('PADDLE_TRAINERS_NUM', '1')) > 1


def die_quietly_when_stopped():
    """Let SIGTERM end this process at once and silently.

    When one rank stops (a user error, a crash), spawn and the launcher SIGTERM
    the others; the handler `import paddle` installs then prints a "C++ Traceback"
    block for the rank that did nothing wrong, right where the user looks for the
    real cause.  It must be replaced after paddle is imported (it is installed by
    the import).  Crash signals (SIGSEGV, ...) keep Paddle's handler.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def launched_world_size(distributed):
    """The group size this process will join, read from the launcher's environment, before
    `init`: a run refused for its config is then refused without connecting to its peers."""
    return int(os.environ['PADDLE_TRAINERS_NUM']) if distributed and launched_by_paddle() else 1


def init(distributed):
    """Join the process group when there is one; returns (rank, world_size)."""
    if distributed and launched_by_paddle():
        with without_flags_banner():   # a banner on every rank, of flags set on purpose
            dist.init_parallel_env()
    return dist.get_rank(), dist.get_world_size()


def is_main():
    return dist.get_rank() == 0


def world_size():
    return dist.get_world_size()


def all_reduce_sum(tensor):
    """In-place sum over ranks (a no-op in one process); returns the tensor."""
    if dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier():
    if dist.get_world_size() > 1:
        dist.barrier()


def device():
    """'gpu:<local rank>' when Paddle was built with CUDA and sees a GPU, else 'cpu'."""
    if paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0:
        return f'gpu:{int(os.environ.get("FLAGS_selected_gpus", "0").split(",")[0])}'
    return 'cpu'
