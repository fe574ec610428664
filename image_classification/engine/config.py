"""The configuration every family shares, and how a run's config is assembled.

Order of precedence (lowest first), as in PaddleViT: these defaults, the
family's own defaults (its `config.py`), the YAML file (following its `BASE:`
chain), the command-line flags, then `-opts KEY VALUE ...`.  A key that does
not exist is an error that names the key and the file it came from: a typo in
a YAML must never be silently ignored.
"""
import os
from ast import literal_eval

import yaml
from yacs.config import CfgNode as CN

from .errors import UserError

__all__ = ['CN', 'base_config', 'make_get_config', 'ConfigError']


class ConfigError(UserError, ValueError):
    """A config file or override that cannot be applied."""


# DATA.DATASET (-dataset): how engine.data.build_dataset reads DATA.DATA_PATH
DATASETS = {
    'imagenet2012': "PaddleViT's name, the default: the list files when DATA_PATH has them, "
                    "else train/<class>/ and val/<class>/ folders",
    'imagelist': 'the list files DATA.TRAIN_LIST and DATA.VAL_LIST only',
    'imagefolder': 'the class folders train/<class>/ and val/<class>/ only',
}


def _check_dataset(value, source):
    """An unknown DATA.DATASET is refused: PaddleViT accepted any name and ran the same."""
    if value not in DATASETS:
        known = '; '.join(f'{name} ({meaning})' for name, meaning in DATASETS.items())
        hint = (' (PaddleViT downloads CIFAR at run time; here write its images as class folders '
                'and pass -dataset imagefolder -num_classes N)' if str(value).lower().startswith('cifar') else '')
        raise ConfigError(f'{source}: DATA.DATASET {value!r} is not known{hint}; allowed: {known}')


def base_config():
    """A fresh copy of the defaults shared by every family."""
    c = CN()
    c.BASE = ['']

    c.DATA = CN()
    c.DATA.BATCH_SIZE = 256             # per process
    c.DATA.BATCH_SIZE_EVAL = None       # per process; None -> DATA.BATCH_SIZE
    c.DATA.DATA_PATH = ''
    c.DATA.DATASET = 'imagenet2012'     # how DATA_PATH is read: one of DATASETS (above)
    c.DATA.TRAIN_LIST = 'train_list.txt'
    c.DATA.VAL_LIST = 'val_list.txt'
    c.DATA.IMAGE_SIZE = 224
    c.DATA.IMAGE_CHANNELS = 3
    # eval preprocessing: resize the short side to IMAGE_SIZE / CROP_PCT with
    # INTERPOLATION, center-crop IMAGE_SIZE, normalise with MEAN / STD.
    c.DATA.CROP_PCT = 0.875
    c.DATA.INTERPOLATION = 'bicubic'
    c.DATA.MEAN = [0.485, 0.456, 0.406]
    c.DATA.STD = [0.229, 0.224, 0.225]
    c.DATA.NUM_WORKERS = 2
    c.DATA.SKIP_BAD_IMAGES = False      # log and skip undecodable images instead of failing

    c.MODEL = CN()
    c.MODEL.TYPE = ''
    c.MODEL.NAME = ''
    c.MODEL.NUM_CLASSES = 1000
    c.MODEL.DROPOUT = 0.0
    c.MODEL.ATTENTION_DROPOUT = 0.0
    c.MODEL.DROPPATH = 0.1
    c.MODEL.PRETRAINED = None           # .pdparams to fine-tune from
    c.MODEL.RESUME = None               # checkpoint prefix to resume from

    c.TRAIN = CN()
    c.TRAIN.LAST_EPOCH = 0
    c.TRAIN.NUM_EPOCHS = 300
    c.TRAIN.WARMUP_EPOCHS = 5.0         # may be fractional (ViT fine-tuning warms up 500 steps)
    c.TRAIN.WEIGHT_DECAY = 0.05
    c.TRAIN.BASE_LR = 5e-4
    c.TRAIN.WARMUP_START_LR = 1e-6
    c.TRAIN.END_LR = 1e-5
    c.TRAIN.GRAD_CLIP = None            # global-norm clip value
    c.TRAIN.ACCUM_ITER = 1
    c.TRAIN.LINEAR_SCALED_LR = 512      # lr *= global_batch / this; None disables
    c.TRAIN.MODEL_EMA = False
    c.TRAIN.MODEL_EMA_DECAY = 0.99996

    c.TRAIN.OPTIMIZER = CN()
    c.TRAIN.OPTIMIZER.NAME = 'AdamW'
    c.TRAIN.OPTIMIZER.EPS = 1e-8
    c.TRAIN.OPTIMIZER.BETAS = (0.9, 0.999)
    c.TRAIN.OPTIMIZER.MOMENTUM = 0.9

    c.TRAIN.LR_SCHEDULER = CN()
    c.TRAIN.LR_SCHEDULER.NAME = 'warmupcosine'

    c.TRAIN.SMOOTHING = 0.1
    c.TRAIN.COLOR_JITTER = 0.4
    c.TRAIN.AUTO_AUGMENT = False
    c.TRAIN.RAND_AUGMENT = True
    c.TRAIN.RAND_AUGMENT_LAYERS = 2
    c.TRAIN.RAND_AUGMENT_MAGNITUDE = 9
    c.TRAIN.TRAIN_INTERPOLATION = 'bicubic'
    c.TRAIN.CROP_SCALE = (0.08, 1.0)      # RandomResizedCrop area range
    c.TRAIN.HFLIP_PROB = 0.5              # 0 for data where mirroring changes the class (digits, text)
    c.TRAIN.MIXUP_ALPHA = 0.8
    c.TRAIN.MIXUP_PROB = 1.0
    c.TRAIN.MIXUP_SWITCH_PROB = 0.5
    c.TRAIN.MIXUP_MODE = 'batch'
    c.TRAIN.CUTMIX_ALPHA = 1.0
    c.TRAIN.CUTMIX_MINMAX = None
    c.TRAIN.RANDOM_ERASE_PROB = 0.25
    c.TRAIN.RANDOM_ERASE_MODE = 'pixel'
    c.TRAIN.RANDOM_ERASE_COUNT = 1
    c.TRAIN.RANDOM_ERASE_SPLIT = False

    c.TRAIN.DISTILLATION_TYPE = 'none'  # none | soft | hard
    c.TRAIN.DISTILLATION_ALPHA = 0.5
    c.TRAIN.DISTILLATION_TAU = 1.0
    c.TRAIN.DISTILLATION_SOFT_REDUCTION = 'numel'   # DeiT: KL sum / (batch x classes); or 'batchmean'
    c.TRAIN.TEACHER_MODEL = None        # teacher .pdparams
    c.TRAIN.TEACHER_CONFIG = None       # teacher yaml (family found from its MODEL.TYPE)

    c.SAVE = './output'
    c.SAVE_FREQ = 1
    c.REPORT_FREQ = 20
    c.VALIDATE_FREQ = 1
    c.SEED = 0
    c.EVAL = False
    c.AMP = False
    c.AMP_LEVEL = 'O1'                  # O1: autocast white-list ops; O2: fp16/bf16 weights
    c.AMP_DTYPE = 'float16'             # float16 (GPU) | bfloat16
    c.LOCAL_RANK = 0
    return c


def _read_yaml(path):
    try:
        with open(path, 'r', encoding='utf-8') as f:
            return yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f'config file not found: {path}') from None
    except yaml.YAMLError as e:
        raise ConfigError(f'{path}: not valid YAML: {e}') from None


def _merge_file(config, path):
    """Merge `path` into `config`, its BASE files first (paths relative to it)."""
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f'{path}: expected a mapping of config keys, got {type(data).__name__}')
    for base in data.get('BASE', ['']) or ['']:
        if base:
            _merge_file(config, os.path.join(os.path.dirname(path), base))
    for key, value in _flatten(data):
        if key != 'BASE':
            _assign(config, key, value, path)
    return config


def _flatten(data, prefix=''):
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _flatten(value, f'{prefix}{key}.')
        else:
            yield f'{prefix}{key}', value


def _coerce(value, original, key, source):
    """`value` converted to the type of the default `original`, or an error."""
    if original is None or value is None or type(value) is type(original):
        return value
    if isinstance(value, str) and not isinstance(original, str):
        try:
            value = literal_eval(value)   # PyYAML reads 1e-3 and None as strings
        except (ValueError, SyntaxError):
            pass
        if value is None or type(value) is type(original):
            return value
    if isinstance(original, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(original, (list, tuple)) and isinstance(value, (list, tuple)):
        return type(original)(value)
    raise ConfigError(f'{source}: config key {key!r} expects {type(original).__name__}, '
                      f'got {value!r}')


def _assign(config, key, value, source):
    node = config
    parts = key.split('.')
    for part in parts[:-1]:
        if not isinstance(node, CN) or part not in node:
            raise ConfigError(f'{source}: config key {key!r} does not exist')
        node = node[part]
    if not isinstance(node, CN) or parts[-1] not in node or isinstance(node[parts[-1]], CN):
        raise ConfigError(f'{source}: config key {key!r} does not exist')
    was_frozen = config.is_frozen()
    config.defrost()
    node[parts[-1]] = _coerce(value, node[parts[-1]], key, source)
    if key == 'DATA.DATASET':
        _check_dataset(node[parts[-1]], source)
    if was_frozen:
        config.freeze()


def yaml_model_type(path):
    """MODEL.TYPE as the YAML at `path` (or its BASE chain) sets it, or ''."""
    data = _read_yaml(path)
    model_type = (data.get('MODEL') or {}).get('TYPE', '')
    if model_type:
        return model_type
    for base in data.get('BASE', ['']) or ['']:
        if base:
            model_type = yaml_model_type(os.path.join(os.path.dirname(path), base))
            if model_type:
                return model_type
    return ''


# command-line flag -> config key (PaddleViT's single-dash flags)
_FLAG_KEYS = {
    'dataset': 'DATA.DATASET',
    'data_path': 'DATA.DATA_PATH',
    'batch_size': 'DATA.BATCH_SIZE',
    'batch_size_eval': 'DATA.BATCH_SIZE_EVAL',
    'image_size': 'DATA.IMAGE_SIZE',
    'num_classes': 'MODEL.NUM_CLASSES',
    'output': 'SAVE',
    'pretrained': 'MODEL.PRETRAINED',
    'resume': 'MODEL.RESUME',
    'last_epoch': 'TRAIN.LAST_EPOCH',
    'accum_iter': 'TRAIN.ACCUM_ITER',
    'teacher_model_path': 'TRAIN.TEACHER_MODEL',
}


def apply_overrides(config, args=None, opts=None):
    """Apply parsed command-line flags, then `-opts KEY VALUE ...` pairs."""
    config.defrost()
    if args is not None:
        for flag, key in _FLAG_KEYS.items():
            value = getattr(args, flag, None)
            if value is not None:
                _assign(config, key, value, f'-{flag}')
        if getattr(args, 'eval', False):
            config.EVAL = True
        if getattr(args, 'amp', False):
            config.AMP = True
        opts = list(opts or []) + list(getattr(args, 'opts', None) or [])
    if opts:
        if len(opts) % 2:
            raise ConfigError(f'-opts takes KEY VALUE pairs, got an odd count: {opts}')
        for key, value in zip(opts[0::2], opts[1::2]):
            _assign(config, key, value, '-opts')
    return config


def make_get_config(family_defaults):
    """Build a family's `get_config(cfg_file=None, args=None, opts=None)`.

    `family_defaults(config)` adds the family's MODEL keys to the shared base.
    """
    def get_config(cfg_file=None, args=None, opts=None):
        config = base_config()
        family_defaults(config)
        cfg_file = cfg_file or getattr(args, 'cfg', None)
        if cfg_file:
            _merge_file(config, cfg_file)
        apply_overrides(config, args, opts)
        if config.DATA.BATCH_SIZE_EVAL is None:
            config.DATA.BATCH_SIZE_EVAL = config.DATA.BATCH_SIZE
        config.freeze()
        return config
    return get_config
