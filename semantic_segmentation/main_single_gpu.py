"""Train or evaluate a segmentor in one process (the GPU when Paddle has CUDA, else the CPU) (see train.py)."""
from semantic_segmentation.train import main

if __name__ == '__main__':
    main(distributed=False)
