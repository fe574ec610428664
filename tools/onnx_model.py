"""ONNX Runtime, the optional second backend of `tools/predict.py` (`--backend onnxruntime`).

It runs `inference.onnx`, the ONNX model `tools/export_model.py --onnx` writes
next to the Paddle one (paddle2onnx converts the same exported graph), on the
CPU with the given number of threads.  Neither paddle2onnx nor onnxruntime is a
dependency of the package: `pip install "paddlevit[onnx]"` (or
`pip install -r requirements-onnx.txt`) adds them; without them, or without the
.onnx file, the backend stops with one message saying what to install or run.

Its logits agree with Paddle Inference's within 1e-5 for a small model of every
family but PerViT and ViT-R50, whose GroupNorms paddle2onnx 2.1.0 converts wrongly (see
`export_model.py`; tests/test_export_families.py).
"""
import os

import numpy as np

from engine.errors import UserError

__all__ = ['BACKENDS', 'ONNX_FILE', 'OnnxModel', 'INSTALL_HINT']

# the runtimes of `predict.py --backend` and `benchmark.py --backend`: Paddle Inference, this one
# (here, not in predict.py, which imports Paddle: benchmark.py parses its flags before that)
BACKENDS = ('paddle', 'onnxruntime')
ONNX_FILE = 'inference.onnx'
INSTALL_HINT = 'pip install "paddlevit[onnx]" (or: pip install -r requirements-onnx.txt)'


class OnnxModel:
    """An onnxruntime session of `model_dir/inference.onnx` on `threads` CPU threads,
    with the `logits` of `predict.InferenceModel`."""

    def __init__(self, model_dir, threads):
        try:
            import onnxruntime
        except ImportError:
            raise UserError(f'--backend onnxruntime needs the onnxruntime package: {INSTALL_HINT}') from None
        path = os.path.join(model_dir, ONNX_FILE)
        if not os.path.isfile(path):
            raise UserError(f'{path} not found: --backend onnxruntime runs the ONNX model that '
                            f'`tools/export_model.py ... -output {model_dir} --onnx` writes '
                            f'(paddle2onnx needed: {INSTALL_HINT})')
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads      # the threads of one op; ops run one after another
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3              # errors only: not a warning per unused initializer
        self.session = onnxruntime.InferenceSession(path, options, providers=['CPUExecutionProvider'])
        self.input_name = self.session.get_inputs()[0].name

    def logits(self, images):
        """Logits [N, classes] for a float32 [N, 3, S, S] batch of preprocessed images."""
        return self.session.run(None, {self.input_name: np.ascontiguousarray(images, dtype=np.float32)})[0]
