"""Train or evaluate PerViT in one process (GPU when present, else CPU)."""
from engine.families import load_family  # first: importing `engine` sets the environment before paddle

FAMILY = load_family('PerViT')   # at import: a spawned process re-imports this file to unpickle the builder

if __name__ == '__main__':
    FAMILY.run(distributed=False)
