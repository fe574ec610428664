"""Console + file logging, and VisualDL scalars when `visualdl` is installed.

Every rank logs to its own console; rank 0 alone writes `<SAVE>/log.txt` and
prefixes its lines with `MASTER_LOG`, the tag PaddleViT users grep for.  The
engine modules' own warnings (an image skipped under DATA.SKIP_BAD_IMAGES, the
loader's shared-memory fallback, ...) are written to log.txt too.
"""
import logging
import os
import sys


def get_logger(output_dir, rank):
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
    handlers = [logging.StreamHandler(sys.stdout)] if console else []
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
