"""The seed README's name for distillation training: the same program as main_multi_gpu.py.

Distillation is part of the config (TRAIN.DISTILLATION_TYPE / TEACHER_CONFIG / TEACHER_MODEL in the
`_distilled` configs, `-teacher_model_path` on the command line), so main_multi_gpu.py trains a
distilled config with its teacher too; this file exists so the seed's commands keep working.
"""
import os
import sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from engine.launcher import main  # noqa: E402  (first: sets the environment before paddle)
from config import get_config  # noqa: E402
from pit import build_pit  # noqa: E402

if __name__ == '__main__':
    main(get_config, build_pit, distributed=True)
