"""Train or evaluate SP-ViT on several GPUs (or CPU processes), one process each."""
import os
import sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from engine.launcher import main  # noqa: E402  (first: sets the environment before paddle)
from config import get_config  # noqa: E402
from hooks import SPViTHooks  # noqa: E402
from spvit import build_spvit  # noqa: E402

if __name__ == '__main__':
    main(get_config, build_spvit, distributed=True, hooks=SPViTHooks())
