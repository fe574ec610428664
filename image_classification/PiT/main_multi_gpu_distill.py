"""The seed README's name for distillation training: the same program as main_multi_gpu.py.

Distillation is part of the config (TRAIN.DISTILLATION_TYPE / TEACHER_CONFIG / TEACHER_MODEL in the
`_distilled` configs, `-teacher_model_path` on the command line), so main_multi_gpu.py trains a
distilled config with its teacher too; this file exists so the seed's commands keep working.
"""
import engine
engine.prepare_process()   # first: the environment Paddle reads when it is imported
from engine.families import load_family  # noqa: E402

FAMILY = load_family('PiT')   # at import: a spawned process re-imports this file to unpickle the builder

if __name__ == '__main__':
    FAMILY.run(distributed=True)
