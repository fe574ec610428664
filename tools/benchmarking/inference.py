"""The eval step of `--inference`: the model exported and run through Paddle Inference (or, with
`--backend onnxruntime`, ONNX Runtime), the deployment path of `tools/export_model.py` +
`tools/predict.py`."""
import shutil
import sys
import tempfile

from engine.errors import UserError

try:
    from .. import export_model, predict        # imported as tools.benchmarking
    from ..onnx_model import INSTALL_HINT
except ImportError:
    import export_model                          # under tools/benchmark.py, whose folder is sys.path[0]
    import predict
    from onnx_model import INSTALL_HINT

__all__ = ['inference_step']


def inference_step(model, size, images, device, threads, backend='paddle', cpu_kernels=False):
    """One run of `model` exported to a temporary folder as `tools/export_model.py` does
    (`--onnx` too for onnxruntime, `--cpu_kernels` with `cpu_kernels`) and loaded as
    `tools/predict.py --backend` does:
    Paddle Inference on the CPU with oneDNN or plain kernels by `predict.onednn_by_default`
    (and without oneDNN where `predict.InferenceModel` finds that it cannot build or run
    this graph, with its message on stderr), or ONNX Runtime.  Returns (step, whether oneDNN runs it; None on GPU or ONNX Runtime)."""
    folder = tempfile.mkdtemp(prefix='benchmark_export_')
    try:
        prefix = export_model.export(model, size, folder, cpu_kernels=cpu_kernels)
        if backend == 'onnxruntime' and export_model.export_onnx(prefix, log=lambda _: None) is None:
            raise UserError(f'--backend onnxruntime: paddle2onnx is not installed: {INSTALL_HINT}')
        runner = predict.open_model(folder, backend, device, threads,
                                    onednn=device == 'cpu' and predict.onednn_by_default(getattr(model, 'config', None),
                                                                                         cpu_kernels),
                                    log=lambda message: print(message, file=sys.stderr, flush=True))
        runner.logits(images)                      # the first batch settles oneDNN or not
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if backend == 'onnxruntime':
        return (lambda: runner.logits(images)), None
    predictor = runner.predictor
    return (lambda: predict.run(predictor, images)), (runner.onednn if device == 'cpu' else None)
