"""Console + file logging, and VisualDL scalars when `visualdl` is installed.

Every rank logs to its own console; rank 0 alone writes `<SAVE>/log.txt` and
prefixes its lines with `MASTER_LOG`, the tag PaddleViT users grep for.  The
engine modules' own warnings (an image skipped under DATA.SKIP_BAD_IMAGES, the
loader's shared-memory fallback, ...) are written to log.txt too.

The console is for a person: a record logged with `extra=FILE_ONLY` (the full
config, the command line) goes to log.txt only.  `silence_known_noise` drops
the messages Paddle prints on every CPU run that say nothing about this run.
"""
import contextlib
import io
import logging
import os
import re
import sys
import warnings

# logger.info(message, extra=FILE_ONLY): to log.txt, not to the console
FILE_ONLY = {'file_only': True}

# Warnings Paddle raises on every CPU run, none of them about the user's run:
# - "No ccache found": every `import paddle` and every custom-op build (ccache only speeds up rebuilds);
# - "amp_guard can only be enabled on CUDAPlace ...": every auto_cast on the CPU, i.e. every -amp
#   batch there; the header says once that AMP does nothing on the CPU instead.
_NOISY_WARNINGS = ('No ccache found', 'amp_guard can only be enabled on CUDAPlace')
# Paddle's cpp_extension logs this at INFO when it registers our fused kernels (engine.cpu.build)
_NOISY_LOGGERS = ('utils.cpp_extension',)
# Paddle's DataLoader thread logs this (root logger) when it finds its workers gone: during a run a
# real fault, but after a run ended well it is the interpreter's shutdown killing idle workers.
_WORKERS_GONE = 'workers exit unexpectedly'
_run_finished = False


def silence_known_noise():
    """Filter Paddle's known noise (see above).  Called by `engine.prepare_process`, before Paddle
    is imported, so that its import-time warning is caught too; the PIR interpreter's glog lines
    are silenced there as well, by GLOG_minloglevel (engine.cpu.settings)."""
    for text in _NOISY_WARNINGS:
        warnings.filterwarnings('ignore', message=text + '.*', category=UserWarning)
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).addFilter(_drop_info)
    root = logging.getLogger()
    if not any(isinstance(f, _WorkersGoneAfterRun) for f in root.filters):
        root.addFilter(_WorkersGoneAfterRun())


@contextlib.contextmanager
def without_flags_banner():
    """Run the block with Paddle's "Modified FLAGS detected" banner removed from stderr.

    `paddle.distributed.init_parallel_env` writes that banner on every rank of every run, listing
    the flags this engine sets on purpose (engine.cpu.settings) and ones Paddle sets itself; anything
    else the block writes to stderr is passed on unchanged, after the block.
    """
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            yield
    finally:
        text = re.sub(r'=+ Modified FLAGS detected =+\n(?:FLAGS\(.*\)\n)*=+\n', '', captured.getvalue())
        if text:
            sys.stderr.write(text)


def _drop_info(record):
    return record.levelno > logging.INFO


class _WorkersGoneAfterRun(logging.Filter):
    def filter(self, record):
        return not (_run_finished and _WORKERS_GONE in record.getMessage())


def run_finished():
    """Mark the run as ended well: from now on a DataLoader "workers exit unexpectedly" is shutdown noise."""
    global _run_finished
    _run_finished = True


def _console_only_for_people(record):
    return not getattr(record, 'file_only', False)


def get_logger(output_dir, rank):
    """The run's logger (called once at the start of each run, which also re-arms the DataLoader
    shutdown filter: a worker lost during this run is reported)."""
    global _run_finished
    _run_finished = False
    logger = logging.getLogger(f'vit_engine.rank{rank}')
    logger.setLevel(logging.INFO)
    logger.propagate = False
    tag = 'MASTER_LOG ' if rank == 0 else f'RANK{rank} '
    _set_handlers(logger, output_dir, rank, tag, console=True)
    # The engine's modules log to logging.getLogger(__name__) (engine.data.dataset, ...); their
    # warnings reach the console through the root logger (a handler Paddle installs, or Python's
    # last resort), and log.txt through this handler.
    library = logging.getLogger(__name__.rpartition('.')[0] or __name__)
    _set_handlers(library, output_dir, rank, tag, console=False, level=logging.WARNING)
    return logger


def _set_handlers(logger, output_dir, rank, tag, console, level=logging.NOTSET):
    """Replace `logger`'s handlers by the console (if `console`) and (rank 0) `<output_dir>/log.txt`."""
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter(f'%(asctime)s {tag}%(message)s', datefmt='%m-%d %H:%M:%S')
    handlers = []
    if console:
        handlers.append(logging.StreamHandler(sys.stdout))
        handlers[-1].addFilter(_console_only_for_people)
    if rank == 0:
        os.makedirs(output_dir, exist_ok=True)
        handlers.append(logging.FileHandler(os.path.join(output_dir, 'log.txt'), encoding='utf-8'))
    for handler in handlers:
        handler.setFormatter(fmt)
        handler.setLevel(level)
        logger.addHandler(handler)


class ScalarWriter:
    """VisualDL `add_scalar` on rank 0 when visualdl imports; otherwise nothing."""

    def __init__(self, output_dir, rank):
        self._writer = None
        if rank == 0:
            try:
                from visualdl import LogWriter
            except ImportError:
                return
            self._writer = LogWriter(logdir=os.path.join(output_dir, 'vdl'))

    def add_scalar(self, tag, value, step):
        if self._writer is not None:
            self._writer.add_scalar(tag=tag, value=value, step=step)

    def close(self):
        if self._writer is not None:
            self._writer.close()
