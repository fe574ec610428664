"""Convert an official checkpoint into a `.pdparams` for one of our configs, and prove it.

    python port_weights/port.py --src pit_s_809.pth \\
        --config image_classification/PiT/configs/pit_s_224.yaml --dst pit_s_224.pdparams \\
        [--check-input IN.npy --check-logits REF.npy --atol 1e-4] [-opts KEY VALUE ...]

The config's MODEL.TYPE picks the family; `port_weights/<family>.py` holds its
key map (`convert(state, config)`).  The result must fill every parameter of
the model with the right shape, or nothing is written.  With `--check-input`
and `--check-logits` the ported model runs in eval mode and the line
`max_abs_diff=<value>` is printed; the exit status is 1 above `--atol`.
"""
import argparse
import importlib
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (REPO, os.path.join(REPO, 'image_classification')):
    if path not in sys.path:
        sys.path.insert(0, path)

import numpy as np  # noqa: E402

from engine.families import family_for_config  # noqa: E402
from port_weights.checkpoint_io import load_checkpoint  # noqa: E402
from port_weights.keymap import check_state  # noqa: E402

PORTERS = {'ViT': 'vit', 'PiT': 'pit', 'PerViT': 'pervit', 'SPViT': 'spvit', 'VVT': 'vvt',
           'RegNet': 'regnet'}


def porter_for(family_name):
    """The `port_weights.<family>` module for a MODEL.TYPE."""
    return importlib.import_module(f'port_weights.{PORTERS[family_name]}')


def port(src, cfg_file, opts=None, log=print):
    """(config, model, state): the model built from `cfg_file` holding the weights of `src`."""
    import paddle
    family = family_for_config(cfg_file)
    config = family.get_config(cfg_file, opts=opts)
    model = family.build_model(config)
    model.eval()
    official = load_checkpoint(src)
    state = porter_for(family.name).convert(official, config)
    if hasattr(model, 'adapt_state_dict'):   # e.g. a 384 checkpoint for a 224 config
        for message in model.adapt_state_dict(state):
            log(f'WARNING: {message}')
    expected = {k: v.shape for k, v in model.state_dict().items()}
    check_state(expected, state, source=src)
    model.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
    log(f'{src}: {len(official)} official tensors -> {len(state)} {family.name} tensors '
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
    parser.add_argument('-opts', nargs='+', default=None, help='config overrides: KEY VALUE ...')
    args = parser.parse_args(argv)
    if bool(args.check_input) != bool(args.check_logits):
        parser.error('--check-input and --check-logits go together')

    import paddle
    _config, model, _state = port(args.src, args.config, opts=args.opts)
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
    from engine.errors import cli
    sys.exit(cli(main))
