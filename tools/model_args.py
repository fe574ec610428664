"""The model arguments every tool shares: `-model NAME` or `-cfg FILE.yaml`, and `-opts KEY VALUE ...`.

    python tools/flops.py -model pit_s_224                                # a name of paddlevit.list_models()
    python tools/flops.py -cfg image_classification/PiT/configs/pit_s_224.yaml   # or a YAML of any family

Both go to `paddlevit.create_model` / `paddlevit.model_config`, the one place that
resolves a model: a name is the `configs/<name>.yaml` of its family, a config file
(a user's own, `BASE:` chains included) is read with the family its MODEL.TYPE
names.  The same model by name or by its file gives the same config and weights.
An unknown name ends the tool with one message listing the closest names, exit 2.

Paddle is imported only when a model or config is made, not with this module:
`tools/benchmark.py` parses its arguments before it sets Paddle's thread count,
which must come before `import paddle`.
"""

__all__ = ['add_model_arguments', 'model_sources', 'overrides', 'create_model', 'model_config']


def add_model_arguments(parser, several=False, required=True, cfg_help='YAML config of the model (any family)'):
    """`-model` / `-cfg` (one of them; `several`: each takes one or more) and `-opts`."""
    many = '+' if several else None
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument('-model', nargs=many, default=None,
                       help='model name(s) as paddlevit.list_models() gives them, e.g. pit_s_224')
    group.add_argument('-cfg', nargs=many, default=None, help=cfg_help)
    parser.add_argument('-opts', nargs='+', default=None, help='config overrides: KEY VALUE ...')


def model_sources(args):
    """What `-model` or `-cfg` named: a list with `several`, else one name or path (or None)."""
    return args.model if args.model is not None else args.cfg


def overrides(opts, image_size=None, num_classes=None):
    """`-opts KEY VALUE ...` (as text, parsed as the config parses -opts) plus the tools'
    -image_size / -num_classes, as the keyword overrides of `paddlevit.create_model`.

    -num_classes is MODEL.NUM_CLASSES here, not `create_model`'s `num_classes=`, which would
    drop a checkpoint's head of another class count: a tool that exports, labels or predicts
    needs the checkpoint's own head, so a mismatch stays an error."""
    opts = list(opts or [])
    if len(opts) % 2:
        from engine.config import ConfigError
        raise ConfigError(f'-opts takes KEY VALUE pairs, got an odd count: {opts}')
    pairs = {}
    if image_size is not None:
        pairs['DATA.IMAGE_SIZE'] = image_size
    if num_classes is not None:
        pairs['MODEL.NUM_CLASSES'] = num_classes
    pairs.update(zip(opts[0::2], opts[1::2]))     # -opts last: they win, as in every entry point
    return pairs


def create_model(source, opts=None, pretrained=None, image_size=None, num_classes=None):
    """`paddlevit.create_model` of a `-model` name or a `-cfg` file with the tool's overrides;
    `pretrained` loads strictly, the checkpoint's head included (see `overrides`)."""
    import paddlevit
    return paddlevit.create_model(source, pretrained=pretrained,
                                  **overrides(opts, image_size=image_size, num_classes=num_classes))


def model_config(source, opts=None, image_size=None, num_classes=None):
    """The config `create_model(source, ...)` builds from, without building the model."""
    import paddlevit
    return paddlevit.model_config(source, **overrides(opts, image_size=image_size, num_classes=num_classes))
