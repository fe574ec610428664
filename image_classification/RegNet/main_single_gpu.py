"""Evaluate (or train) RegNet in one process (GPU when present, else CPU)."""
import engine
engine.prepare_process()   # first: the environment Paddle reads when it is imported
from engine.families import load_family  # noqa: E402

FAMILY = load_family('RegNet')   # at import: a spawned process re-imports this file to unpickle the builder

if __name__ == '__main__':
    FAMILY.run(distributed=False)
