"""Train or evaluate VVT on all visible GPUs (or under paddle.distributed.launch, one or many nodes)."""
from engine.families import load_family  # first: importing `engine` sets the environment before paddle

FAMILY = load_family('VVT')   # at import: a spawned process re-imports this file to unpickle the builder

if __name__ == '__main__':
    FAMILY.run(distributed=True)
