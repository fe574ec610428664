"""Train or evaluate PerViT on several GPUs (or CPU processes), one process per device."""
from engine.families import load_family  # first: importing `engine` sets the environment before paddle

FAMILY = load_family('PerViT')   # at import: a spawned process re-imports this file to unpickle the builder

if __name__ == '__main__':
    FAMILY.run(distributed=True)
