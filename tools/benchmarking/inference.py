"""The eval step of `--inference`: the model exported and run through Paddle Inference, the
deployment path of `tools/export_model.py` + `tools/predict.py`."""
import shutil
import sys
import tempfile

try:
    from .. import export_model, predict        # imported as tools.benchmarking
except ImportError:
    import export_model                          # under tools/benchmark.py, whose folder is sys.path[0]
    import predict

__all__ = ['inference_step']


def inference_step(model, size, images, device, threads):
    """One Paddle Inference run of `model`, exported to a temporary folder as
    `tools/export_model.py` does and loaded as `tools/predict.py` does: oneDNN on
    CPU unless `predict.InferenceModel` finds that it cannot build or run this
    graph (then without it, with its message on stderr).  Returns (step, whether
    oneDNN runs it; None on GPU)."""
    folder = tempfile.mkdtemp(prefix='benchmark_export_')
    try:
        export_model.export(model, size, folder)
        runner = predict.InferenceModel(folder, device, threads, onednn=device == 'cpu',
                                        log=lambda message: print(message, file=sys.stderr, flush=True))
        runner.logits(images)                      # the first batch settles oneDNN or not
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    predictor = runner.predictor
    return (lambda: predict.run(predictor, images)), (runner.onednn if device == 'cpu' else None)
