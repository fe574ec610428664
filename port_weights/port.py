"""Convert an official checkpoint into a `.pdparams` for one of our configs, and prove it.

    python port_weights/port.py --src pit_s_809.pth \\
        --config image_classification/PiT/configs/pit_s_224.yaml --dst pit_s_224.pdparams \\
        [--ema] [--check-input IN.npy --check-logits REF.npy --atol 1e-4] [-opts KEY VALUE ...]

The config's MODEL.TYPE picks the family; `port_weights/<family>.py` holds its
key map (`convert(state, config)`).  The result must fill every parameter of
the model with the right shape, or nothing is written.  With `--check-input`
and `--check-logits` the ported model runs in eval mode and the line
`max_abs_diff=<value>` is printed; the exit status is 1 above `--atol`.

A training checkpoint can hold two sets of weights: the model's and their
exponential moving average.  Without `--ema` the model's are taken (`model`,
`state_dict`); with `--ema` the average's: `state_dict_ema` (timm's
CheckpointSaver, hence TLT's and SP-ViT's `model_best.pth.tar`, whose best
accuracy is often the EMA's) or `model_ema` (DeiT's and PerViT's main.py).
Asked for an EMA that the file does not hold, it stops and lists what it holds
(timm would silently fall back to the non-EMA weights).
"""
import argparse
import importlib
import os
import sys

import engine

if __name__ == '__main__':
    engine.prepare_process()   # run as a program: before paddle is imported

import numpy as np  # noqa: E402

from engine.config import ConfigError  # noqa: E402
from engine.families import family_for_config, load_family  # noqa: E402
from engine.weights import MissingEMAError, load_checkpoint, load_weights  # noqa: E402


def porter_for(family_name):
    """The `port_weights.<porter>` key map registered for a MODEL.TYPE in engine/families.py."""
    porter = load_family(family_name).porter
    if not porter:
        raise ConfigError(f'MODEL.TYPE {family_name!r} has no weight-port key map in engine/families.py')
    return importlib.import_module(f'port_weights.{porter}')


def port(src, cfg_file, opts=None, log=print, ema=False):
    """(config, model, state): the model built from `cfg_file` holding the weights of `src`
    (its EMA weights with `ema`), loaded by the engine's `load_weights` as every entry point loads."""
    family = family_for_config(cfg_file)
    config = family.get_config(cfg_file, opts=opts)
    model = family.build_model(config)
    model.eval()
    official = load_checkpoint(src, ema=ema)
    state = porter_for(family.name).convert(official, config)
    # resize: e.g. a 384 checkpoint for a 224 config; the head is ported, never dropped
    state = load_weights(model, state, what='port', name=src, resize=True, log=log)
    log(f'{src}{" (EMA weights)" if ema else ""}: {len(official)} official tensors -> {len(state)} {family.name} tensors '
        f'({sum(int(np.prod(v.shape)) for v in state.values()):,} values) for {config.MODEL.NAME}')
    return config, model, state


def max_abs_diff(model, inputs, reference):
    """Largest |model(inputs) - reference| with the model in eval mode."""
    import paddle
    model.eval()
    with paddle.no_grad():
        out = model(paddle.to_tensor(inputs.astype('float32')))
    out = out.numpy()
    if out.shape != reference.shape:
        raise ValueError(f'output shape {out.shape} differs from reference {reference.shape}')
    return float(np.abs(out - reference).max())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--src', required=True, help='official checkpoint: .pth/.pt/.bin, .safetensors or .npz')
    parser.add_argument('--config', required=True, help='our YAML config of the target variant')
    parser.add_argument('--dst', required=True, help='output .pdparams')
    parser.add_argument('--check-input', help='N x 3 x S x S float32 .npy to run the ported model on')
    parser.add_argument('--check-logits', help='the official model\'s logits on --check-input (.npy)')
    parser.add_argument('--atol', type=float, default=1e-4)
    parser.add_argument('--ema', action='store_true',
                        help='take the EMA weights of a checkpoint that holds both (state_dict_ema / model_ema)')
    parser.add_argument('-opts', nargs='+', default=None, help='config overrides: KEY VALUE ...')
    args = parser.parse_args(argv)
    if bool(args.check_input) != bool(args.check_logits):
        parser.error('--check-input and --check-logits go together')

    import paddle
    try:
        _config, model, _state = port(args.src, args.config, opts=args.opts, ema=args.ema)
    except MissingEMAError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    os.makedirs(os.path.dirname(os.path.abspath(args.dst)), exist_ok=True)
    paddle.save(model.state_dict(), args.dst)
    print(f'saved {args.dst}')
    if args.check_input:
        diff = max_abs_diff(model, np.load(args.check_input), np.load(args.check_logits))
        print(f'max_abs_diff={diff:.3e}')
        if diff > args.atol:
            print(f'FAILED: max_abs_diff {diff:.3e} > atol {args.atol:g}', file=sys.stderr)
            return 1
    return 0


if __name__ == '__main__':
    from engine.cpu.settings import configure as configure_cpu
    from engine.errors import cli
    configure_cpu()   # the comparison runs both models: threads, allocator, Paddle flags of a CPU run
    sys.exit(cli(main))
