"""Console + file logging, and VisualDL scalars when `visualdl` is installed.

Every rank logs to its own console; rank 0 alone writes `<SAVE>/log.txt` and
prefixes its lines with `MASTER_LOG`, the tag PaddleViT users grep for.
"""
import logging
import os
import sys


def get_logger(output_dir, rank):
    logger = logging.getLogger(f'vit_engine.rank{rank}')
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    tag = 'MASTER_LOG ' if rank == 0 else f'RANK{rank} '
    fmt = logging.Formatter(f'%(asctime)s {tag}%(message)s', datefmt='%m-%d %H:%M:%S')
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(fmt)
    logger.addHandler(console)
    if rank == 0:
        os.makedirs(output_dir, exist_ok=True)
        to_file = logging.FileHandler(os.path.join(output_dir, 'log.txt'), encoding='utf-8')
        to_file.setFormatter(fmt)
        logger.addHandler(to_file)
    return logger


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
