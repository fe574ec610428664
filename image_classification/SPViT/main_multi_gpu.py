"""Train or evaluate SP-ViT on several GPUs (or CPU processes), one process each."""
import engine
engine.prepare_process()   # first: the environment Paddle reads when it is imported
from engine.families import load_family  # noqa: E402

FAMILY = load_family('SPViT')   # at import: a spawned process re-imports this file to unpickle the builder

if __name__ == '__main__':
    FAMILY.run(distributed=True)
