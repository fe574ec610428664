"""Train or evaluate a segmentor on several GPUs (or CPU processes) under python -m paddle.distributed.launch, one process each (see train.py)."""
import engine
engine.prepare_process()   # first: the environment Paddle reads when it is imported
from semantic_segmentation.train import main  # noqa: E402

if __name__ == '__main__':
    main(distributed=True)
