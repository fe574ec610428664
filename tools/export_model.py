"""Export a trained model of any family as a static inference model.

    python tools/export_model.py -model pit_s_224 -pretrained pit_s_224.pdparams \\
        -output ./inference/pit_s_224 [-image_size 384] [-num_classes 100] [-opts KEY VALUE ...] \\
        [--onnx [--opset 13] | --cpu_kernels]
    python tools/export_model.py -cfg image_classification/PiT/configs/pit_s_224.yaml ...   # or a YAML

Writes into `-output`:

    inference.json        the static graph (Paddle 3 / PIR; older Paddle wrote .pdmodel)
    inference.pdiparams   the weights
    config.yaml           the full config used, so `tools/predict.py` preprocesses
                          images exactly as this model expects
    inference.onnx        with --onnx (needs paddle2onnx, see below)
    cpu_kernels.json      with --cpu_kernels: the kernel source the graph calls

The model is built by `paddlevit.create_model` from its name (`-model`, as
`paddlevit.list_models()` gives) or a config file (`-cfg`, any family), put in
eval mode and saved by `paddle.jit.save` for an input of shape
[batch, 3, IMAGE_SIZE, IMAGE_SIZE], any batch.  Run it with `tools/predict.py`
or any Paddle Inference deployment.

`--cpu_kernels` writes a CPU-only graph instead: where dygraph on the CPU runs
the fused kernels of `engine/cpu` (Linear, LayerNorm, GELU, attention, convs,
the families' own), the graph calls them as ops (`engine.cpu.dispatch.kernels_in_graph`),
and Paddle Inference runs them once `tools/predict.py` has checked
`cpu_kernels.json` and registered them (`engine.cpu.exported`): the same logits,
2-3x the img/s of the default export for VVT and PerViT on the machine of the
README's Speed section.  It runs on the CPU only, with this repository's kernels
of the same source; not with ONNX.

The weights go through the engine's one loader, `engine.weights.load_weights`,
and must fit the model exactly: every parameter present, with the shape the
model has, and nothing else, or nothing is written and the keys at fault are
named (`set_state_dict` alone would skip a mis-shaped tensor with a warning and
export random weights); a classifier head of another class count is an error
(set -num_classes to the checkpoint's).  Unlike `-pretrained` for training,
nothing is resized unless asked: with `--adapt`, image-size-dependent tensors
(position embeddings, ...) of a checkpoint trained at another resolution are
first resized by the model's `adapt_state_dict`, each change printed; export at
the resolution the model was fine-tuned at whenever you can.

ONNX (optional): `pip install "paddlevit[onnx]"` (paddle2onnx, onnxoptimizer,
onnxruntime: requirements-onnx.txt); `tools/predict.py --backend onnxruntime`
runs the result.  Without paddle2onnx, `--onnx` prints how to install it and
the Paddle export stands; a graph paddle2onnx cannot convert is an error naming
its complaint, after the Paddle export was written.  Under Paddle 3.3.1 with
paddle2onnx 2.1.0 every family converts and matches Paddle Inference (VVT since
its `1. / t` became `paddle.reciprocal`) except the graphs with a GroupNorm:
paddle2onnx writes a garbage epsilon for `group_norm` (ViT-R50's stem: every
image gets the same logits) and converts a channels-last one as channels first
(PerViT: onnxruntime refuses the model); run those with Paddle Inference.
"""
import argparse
import importlib
import os
import subprocess
import sys

import engine
engine.prepare_process()   # before paddle is imported
import paddle  # noqa: E402
from paddle.static import InputSpec  # noqa: E402

from engine.cpu import exported  # noqa: E402
from engine.cpu.dispatch import kernels_in_graph  # noqa: E402
from engine.errors import UserError  # noqa: E402
from engine.weights import load_weights  # noqa: E402

try:
    from .model_args import add_model_arguments, create_model, model_sources  # imported as tools.export_model
    from .onnx_model import INSTALL_HINT
except ImportError:
    from model_args import add_model_arguments, create_model, model_sources   # run as a script
    from onnx_model import INSTALL_HINT

__all__ = ['MODEL_NAME', 'export', 'export_onnx']

MODEL_NAME = 'inference'    # file stem of the exported files


def export(model, image_size, output_dir, name=MODEL_NAME, cpu_kernels=False):
    """Save `model` (in eval mode) for [batch, 3, S, S] float32 input; returns the path prefix.

    `cpu_kernels`: record the fused CPU kernels in the graph where dygraph on the CPU runs
    them (`engine.cpu.dispatch.kernels_in_graph`), with `cpu_kernels.json` beside it
    (`engine.cpu.exported`); the model must be on the CPU (`paddle.set_device('cpu')`)."""
    model.eval()
    if cpu_kernels:
        if paddle.get_device() != 'cpu':
            raise UserError(f'--cpu_kernels exports for the CPU: run on the CPU, not {paddle.get_device()}')
        exported.ensure_available('--cpu_kernels')
    os.makedirs(output_dir, exist_ok=True)
    prefix = os.path.join(output_dir, name)
    spec = InputSpec([None, 3, image_size, image_size], 'float32', name='x')
    if cpu_kernels:
        with kernels_in_graph():
            paddle.jit.save(model, prefix, input_spec=[spec])
        exported.write_record(output_dir)
    else:
        paddle.jit.save(model, prefix, input_spec=[spec])
        exported.remove_record(output_dir)
    return prefix


def _model_file(prefix):
    for ext in ('.json', '.pdmodel'):
        if os.path.isfile(prefix + ext):
            return prefix + ext
    raise FileNotFoundError(f'no {prefix}.json or {prefix}.pdmodel')


# paddle2onnx runs in a child process: an operator it cannot convert aborts the process it runs in
# (SIGABRT from its C++ code, no Python exception), which must not take the Paddle export with it
_CONVERT = ('import sys, paddle2onnx; paddle2onnx.export(sys.argv[1], sys.argv[2], save_file=sys.argv[3], '
            'opset_version=int(sys.argv[4]), enable_onnx_checker=True, optimize_tool="onnxoptimizer")')


def export_onnx(prefix, opset=13, log=print):
    """Convert the exported `prefix` to `prefix.onnx`; returns its path, or None without paddle2onnx.

    paddle2onnx's optimiser is onnxoptimizer: its default one pip-installs packages
    while it runs.  Its log is shown only when the conversion fails (an exit
    status, or no file: it logs some errors instead of raising them)."""
    try:
        importlib.import_module('paddle2onnx')   # converted in a child process: only its presence is checked here
    except ImportError:
        log(f'ONNX export skipped: paddle2onnx is not installed. Install it with {INSTALL_HINT} '
            'and run again with --onnx.')
        return None
    save_file = prefix + '.onnx'
    if os.path.exists(save_file):
        os.remove(save_file)
    done = subprocess.run([sys.executable, '-c', _CONVERT, _model_file(prefix), prefix + '.pdiparams', save_file,
                           str(opset)], capture_output=True, text=True)
    if done.returncode != 0 or not os.path.isfile(save_file) or os.path.getsize(save_file) == 0:
        errors = [ln.strip() for ln in (done.stdout + done.stderr).splitlines() if 'ERROR' in ln or 'Error' in ln]
        raise RuntimeError(f'paddle2onnx could not convert {prefix} (exit status {done.returncode}): '
                           + ('; '.join(errors[:3]) or 'no error named'))
    return save_file


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument('-pretrained', required=True, help='trained weights (.pdparams)')
    parser.add_argument('-output', required=True, help='folder for the inference model')
    parser.add_argument('-image_size', type=int, default=None, help='override DATA.IMAGE_SIZE')
    parser.add_argument('-num_classes', type=int, default=None, help='override MODEL.NUM_CLASSES')
    parser.add_argument('--adapt', action='store_true',
                        help='resize image-size-dependent tensors of -pretrained to this model')
    parser.add_argument('--onnx', action='store_true', help='also write inference.onnx (paddle2onnx)')
    parser.add_argument('--opset', type=int, default=13, help='ONNX opset version (default 13)')
    parser.add_argument('--cpu_kernels', action='store_true',
                        help='a CPU-only graph that runs the fused CPU kernels of engine/cpu (faster on '
                             'the CPU; tools/predict.py of this repository only)')
    args = parser.parse_args(argv)
    if args.cpu_kernels and args.onnx:
        parser.error('--onnx converts the portable graph: paddle2onnx knows nothing of the fused CPU '
                     'kernels of --cpu_kernels')
    if args.cpu_kernels:
        paddle.set_device('cpu')

    model = create_model(model_sources(args), args.opts, image_size=args.image_size, num_classes=args.num_classes)
    load_weights(model, args.pretrained, what='pretrained', resize=args.adapt)
    config = model.config
    prefix = export(model, config.DATA.IMAGE_SIZE, args.output, cpu_kernels=args.cpu_kernels)
    with open(os.path.join(args.output, 'config.yaml'), 'w', encoding='utf-8') as f:
        f.write(config.dump())
    print(f'exported {config.MODEL.NAME} ({config.MODEL.NUM_CLASSES} classes, input '
          f'[N, 3, {config.DATA.IMAGE_SIZE}, {config.DATA.IMAGE_SIZE}]) from {args.pretrained} to '
          f'{_model_file(prefix)} + {prefix}.pdiparams')
    if args.onnx:
        onnx_file = export_onnx(prefix, args.opset)
        if onnx_file:
            print(f'exported ONNX (opset {args.opset}) to {onnx_file}')


if __name__ == '__main__':
    from engine.errors import cli
    sys.exit(cli(main))
