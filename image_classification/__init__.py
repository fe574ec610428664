"""paddlevit: create a model by name, with the eval preprocessing it was made for.

    import paddlevit
    paddlevit.list_models('pit_*')                   # names of the configs/*.yaml of every family
    model = paddlevit.create_model('pit_s_224', pretrained='pit_s_224.pdparams')
    transform = paddlevit.create_transform(model)    # HWC uint8 RGB array -> normalised CHW float32
    model = paddlevit.create_model('my_pit.yaml')    # or a YAML config file of any family

This package is `image_classification/` itself (pyproject.toml maps it), so the
family folders (`PiT/`, `ViT/`, ...) with their configs, `main_*.py` and
`run_*.sh` stay where PaddleViT users expect them; the shared engine is also
installed as the top-level package `engine`, which the family code imports.
Families, their variants and builders come from the one registry,
`engine/families.py`.

Importing it changes nothing in the process.  `create_model` applies the settings of a CPU
run (threads, allocator, Paddle flags: `engine.cpu.settings.configure`) when Paddle runs on
the CPU, so a model is fast there by default.  Programs that want Paddle's static-graph log
lines silenced call `engine.prepare_process()` before they import Paddle.
"""
import difflib

from engine.families import all_variants, load_family

__all__ = ['list_models', 'create_model', 'create_transform', 'model_config', 'data_config']


def list_models(pattern='*'):
    """Sorted model names matching `pattern` (fnmatch, case-insensitive): one per
    `configs/<name>.yaml` of every registered family, e.g. 'pit_s_224', 'vit_base_patch16_384'."""
    return list(all_variants(pattern))


def _opts_list(opts):
    """`create_model`'s **opts as the `KEY VALUE` list `get_config` takes: keys are config keys
    ('MODEL.DEPTH') or the same with '__' for '.' (`model__depth=2`).  Values go in as they are:
    the config converts a Python value to its key's type, and parses a string for a non-string
    key as `-opts` text is parsed, so `'[32, 64]'` and `[32, 64]` give the same list."""
    out = []
    for key, value in opts.items():
        out += [key.replace('__', '.').upper(), value]
    return out


def _config_source(name):
    """(MODEL.TYPE, config file) of `name`: a name of `list_models()`, or the path of a YAML
    config file of any family (a user's own, `BASE:` chains included), whose MODEL.TYPE picks
    the family.  An unknown name is a ConfigError listing the closest names."""
    if name.endswith(('.yaml', '.yml')):
        from engine.families import family_for_config
        return family_for_config(name).name, name
    variants = all_variants()
    if name not in variants:
        from engine.config import ConfigError
        score = {n: difflib.SequenceMatcher(None, name, n).ratio() for n in variants}
        close = sorted((n for n in variants if score[n] >= 0.6), key=lambda n: (-score[n], n))[:5]
        raise ConfigError(f'unknown model {name!r}; list_models() gives the {len(variants)} names'
                          + (f' (similar: {", ".join(close)})' if close else '')
                          + ', or give the path of a .yaml config file')
    return variants[name]


def model_config(name, num_classes=None, image_size=None, **opts):
    """The frozen config `create_model(name, ...)` builds from (its YAML, then the overrides)."""
    model_type, cfg_file = _config_source(name)
    overrides = dict(opts)
    if num_classes is not None:
        overrides['MODEL.NUM_CLASSES'] = num_classes
    if image_size is not None:
        overrides['DATA.IMAGE_SIZE'] = image_size
    return load_family(model_type).get_config(cfg_file, opts=_opts_list(overrides) or None)


def data_config(config):
    """The eval preprocessing of a config as a plain dict (what `model.data_config` holds)."""
    data = config.DATA
    return {'input_size': (3, data.IMAGE_SIZE, data.IMAGE_SIZE), 'crop_pct': data.CROP_PCT,
            'resize': data.EVAL_RESIZE, 'interpolation': data.INTERPOLATION,
            'mean': tuple(data.MEAN), 'std': tuple(data.STD)}


def create_model(name, pretrained=None, num_classes=None, image_size=None, **opts):
    """The model `name`, in eval mode, with `model.data_config` and `model.config`.

    name: a name of `list_models()` ('pit_s_224'), or the path of a YAML config file of any
    family ('my_pit.yaml', `BASE:` allowed): its MODEL.TYPE picks the family, as `-cfg` does.

    pretrained: a weights file (`.pdparams`, or `.pth` / `.safetensors` / `.npz` holding our keys),
    loaded strictly as `-pretrained` loads it (`engine.weights.load_weights`): position
    embeddings are resized to `image_size`
    (logged), and every missing, unexpected or mis-shaped key is an error, except the
    classifier head when `num_classes` is given, which then starts from its initialisation
    (fine-tuning on another label set).  Without `num_classes`, a head of another class count
    is an error: a random head would silently give meaningless predictions.
    num_classes / image_size: MODEL.NUM_CLASSES / DATA.IMAGE_SIZE.
    **opts: any other config key, e.g. `**{'MODEL.DEPTH': 2}` or `model__depth=2`.
    """
    from engine.cpu.settings import configure as configure_cpu
    config = model_config(name, num_classes=num_classes, image_size=image_size, **opts)
    configure_cpu()   # on the CPU only: threads, allocator, Paddle flags
    model = load_family(config.MODEL.TYPE).build_model(config)
    if pretrained:
        from engine.weights import load_weights
        load_weights(model, pretrained, what='pretrained', resize=True, drop_head=num_classes is not None,
                     log=None)
    model.eval()
    model.config = config
    model.data_config = data_config(config)
    return model


def create_transform(model_or_data_config):
    """The eval transform of a model from `create_model` (or of its `data_config` dict): the engine's
    `EvalTransform`, HWC uint8 RGB array -> normalised CHW float32, as `-eval` preprocesses."""
    from engine.data.transforms import EvalTransform
    cfg = getattr(model_or_data_config, 'data_config', model_or_data_config)
    return EvalTransform(cfg['input_size'][-1], cfg['crop_pct'], list(cfg['mean']), list(cfg['std']),
                         interpolation=cfg['interpolation'], resize=cfg['resize'])
