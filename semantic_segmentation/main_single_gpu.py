"""Train or evaluate a segmentor in one process (the GPU when Paddle has CUDA, else the CPU) (see train.py)."""
import engine
engine.prepare_process()   # first: the environment Paddle reads when it is imported
from semantic_segmentation.train import main  # noqa: E402

if __name__ == '__main__':
    main(distributed=False)
