"""Train or evaluate a segmentor on several GPUs (or CPU processes) under python -m paddle.distributed.launch, one process each (see train.py)."""
from semantic_segmentation.train import main

if __name__ == '__main__':
    main(distributed=True)
