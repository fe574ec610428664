"""Train or evaluate VVT on all visible GPUs (or under paddle.distributed.launch, one or many nodes)."""
import os
import sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from engine.launcher import main  # noqa: E402  (first: sets the environment before paddle)
from config import get_config  # noqa: E402
from vvt import build_vvt  # noqa: E402

if __name__ == '__main__':
    main(get_config, build_vvt, distributed=True)
