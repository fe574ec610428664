"""What `tools/benchmark.py` measures, one job per module; the script itself only parses and dispatches.

    process       the measuring process: CPU threads set before Paddle is imported, resident memory
    measure       one model's eval or train-step img/s and peak memory, in this process
    inference     the eval step through Paddle Inference on the exported model (`--inference`)
    isolation     each measurement in a fresh interpreter, stopped at a time or memory limit
    report        the markdown table, how memory grows over a `--sweep`, the plot, `--json`
    compare       ours against the official PyTorch model (`--torch-src`), rounds, ratios, busy-machine refusal
    official      the official PyTorch model built from a user's checkout, timed the same way (torch side)
    loader_speed  the data pipeline's img/s against PaddleViT's PIL pipeline (`--loader`)
    baseline      that PIL pipeline, as PaddleViT builds it (also the reference of tests/test_data.py)

Nothing here is imported by the engine: training never pays for the benchmark.
"""
