"""The configuration every family shares, and how a run's config is assembled and checked.

Order of precedence (lowest first), as in PaddleViT: these defaults, the
family's own defaults (its `config.py`), the YAML file (following its `BASE:`
chain), the command-line flags, then `-opts KEY VALUE ...`.

Every key has a type.  It is the type of its default (`c.DATA.BATCH_SIZE = 256`
is an int), or, where the default says nothing (None, an empty list), the one
declared next to it: `c.DATA.BATCH_SIZE_EVAL = optional(int)`.  A value from a
YAML file, a flag or `-opts` is converted to that type the same way whatever its
source (so `-opts DATA.BATCH_SIZE_EVAL 4` is the int 4, as `BATCH_SIZE_EVAL: 4`
in a YAML is), or refused with the key, the value and where it came from.

When the config is complete, every value is checked against the rules of
`BASE_RULES` (one key's value: ranges, choices, list lengths) and `BASE_CHECKS`
(relations between keys), plus the family's own (`make_get_config(...,
rules=, checks=)`: patch and image sizes, stage lists, ...).  A failure is a
`ConfigError` naming the key, the value, its file and line (or flag), and what
is allowed: a user must never find out from a traceback 90 lines into a run,
or from a run that silently trains nothing.

Adding a key: one line in `base_config()` (or a family's defaults), plus one
line in the rule table when its values are restricted, e.g.

    c.DATA.REPEATED_AUG = 1                  # in base_config()
    'DATA.REPEATED_AUG': (at_least(1),),     # in BASE_RULES

    c.DATA.MAX_IMAGE_PIXELS = optional(int)  # None: no limit
    'DATA.MAX_IMAGE_PIXELS': (at_least(1),), # rules never see None: it is what `optional` allows
"""
import ast
import math
import os

import yaml
from yacs.config import CfgNode as _YacsNode

from .errors import UserError

__all__ = ['CN', 'ConfigError', 'base_config', 'make_get_config', 'optional', 'typed', 'Kind',
           'Rule', 'Check', 'at_least', 'greater_than', 'in_range', 'one_of', 'length', 'each',
           'multiple_of', 'PROBABILITY', 'BASE_RULES', 'BASE_CHECKS', 'yaml_model_type']


class ConfigError(UserError, ValueError):
    """A config file, flag or override that cannot be applied, or a value outside what is allowed."""


# ---------------------------------------------------------------------------------------- types
class Kind:
    """The type of a config key: bool, int, float or str, or a list of one of them; maybe None.

    `container` is list or tuple (the default's own, kept so a tuple stays a tuple).
    """
    __slots__ = ('type', 'item', 'optional', 'container')

    def __init__(self, type_, item=None, optional=False, container=None):
        self.type, self.item, self.optional = type_, item, optional
        self.container = container or (type_ if type_ in (list, tuple) else None)

    def describe(self):
        text = f'a list of {self.item.__name__}' if self.item else self.type.__name__
        return f'{text} or None' if self.optional else text


class _Declared:
    """A default together with its declared Kind; `CN` stores the bare default and keeps the kind."""

    def __init__(self, default, kind):
        self.default, self.kind = default, kind


def _kind_from_spec(spec, optional_):
    if isinstance(spec, (list, tuple)):
        if len(spec) != 1 or spec[0] not in (bool, int, float, str):
            raise TypeError(f'a list type is written [int] (one item type), got {spec!r}')
        return Kind(type(spec), spec[0], optional_)
    if spec not in (bool, int, float, str):
        raise TypeError(f'config types are bool, int, float, str or [type], got {spec!r}')
    return Kind(spec, None, optional_)


def optional(spec, default=None):
    """Declare a key that may be None (`off` / `not set`): `optional(int)`, `optional([float])`,
    `optional(int, default=512)` for a key that is set by default but may be switched off."""
    return _Declared(default, _kind_from_spec(spec, True))


def typed(default, spec):
    """Declare a key whose default does not show its type, e.g. an empty list: `typed([], [int])`."""
    return _Declared(default, _kind_from_spec(spec, False))


class CN(_YacsNode):
    """yacs' CfgNode that also accepts `optional(...)` / `typed(...)` declarations.

    The node stores the bare default (what yacs, its printout and pickling see)
    and remembers the declared Kind for `make_get_config`.
    """

    def __setattr__(self, name, value):
        if isinstance(value, _Declared):
            self.__dict__.setdefault('_declared_kinds', {})[name] = value.kind
            value = value.default
        super().__setattr__(name, value)


def _infer_kind(value, key):
    """The Kind a default implies; a default that does not tell must be declared (a code error)."""
    if value is None:
        raise TypeError(f'config key {key} defaults to None without a declared type: write '
                        f'`= optional(int)` (or float, str, [int], ...) in its declaration')
    for t in (bool, int, float, str):
        if type(value) is t:
            return Kind(t)
    if isinstance(value, (list, tuple)):
        types = {type(v) for v in value}
        if not types:
            raise TypeError(f'config key {key} defaults to an empty list: declare its item type, '
                            f'e.g. `= typed([], [int])`')
        item = types.pop() if len(types) == 1 else (float if types == {int, float} else None)
        if item not in (bool, int, float, str):
            raise TypeError(f'config key {key}: cannot tell the item type of {value!r}; declare it')
        return Kind(type(value), item)
    raise TypeError(f'config key {key}: unsupported default {value!r}')


_NONE_WORDS = ('none', 'null', '~')


def _parse_text(text):
    """A value given as text: every `-opts` value, and YAML scalars PyYAML leaves as strings
    (`1e-3`, `None`): Python literals, plus YAML's null / true / false."""
    word = text.strip()
    if word.lower() in _NONE_WORDS:
        return None
    if word.lower() in ('true', 'false'):
        return word.lower() == 'true'
    try:
        return ast.literal_eval(word)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _scalar(t, value):
    """`value` as type `t`, or raise ValueError."""
    if t is bool:
        if isinstance(value, bool):
            return value
    elif isinstance(value, bool):
        pass                                   # True is an int to Python, never to a config
    elif t is int:
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif t is float:
        if isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
    elif t is str:
        if isinstance(value, str):
            return value
    raise ValueError(value)


def convert(kind, value, key, source):
    """`value` (from a YAML file, a flag or -opts) as `kind`, or a ConfigError naming key and source."""
    if isinstance(value, str) and kind.type is not str:
        value = _parse_text(value)
    elif isinstance(value, str) and kind.optional and value.strip().lower() in _NONE_WORDS:
        value = None
    if value is None:
        if kind.optional:
            return None
        raise ConfigError(f'{source}: config key {key} expects {kind.describe()}, got None')
    expects = f'{source}: config key {key} expects {kind.describe()}'
    if kind.item is not None:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f'{expects}, got {value!r}')
        items = []
        for i, v in enumerate(value):
            try:
                items.append(_scalar(kind.item, v))
            except ValueError:
                raise ConfigError(f'{expects}, got {value!r} (item {i}: {v!r})') from None
        return kind.container(items)
    try:
        return _scalar(kind.type, value)
    except ValueError:
        hint = ' (quote it in the YAML)' if kind.type is str and not isinstance(value, (list, dict)) else ''
        raise ConfigError(f'{expects}, got {value!r}{hint}') from None


# ---------------------------------------------------------------------------------------- rules
class Rule:
    """A condition on one key's value.  `test(value, config)` -> bool; `allowed(config)` says in
    words what passes (it may name another key, e.g. a length that is DATA.IMAGE_CHANNELS)."""

    def __init__(self, test, allowed):
        self.test = test
        self.allowed = allowed if callable(allowed) else (lambda config, _text=allowed: _text)


def at_least(low):
    return Rule(lambda v, c: v >= low, f'>= {low}')


def greater_than(low):
    return Rule(lambda v, c: v > low, f'> {low}')


def in_range(low, high, low_open=False, high_open=False):
    def test(v, c):
        return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    return Rule(test, f'in {"(" if low_open else "["}{low}, {high}{")" if high_open else "]"}')


def multiple_of(n):
    return Rule(lambda v, c: v % n == 0, f'a multiple of {n}')


def one_of(*choices, case_sensitive=True):
    """A choice among `choices`; with case_sensitive=False, 'adamw' matches 'AdamW' (for keys the
    code itself lower-cases)."""
    def norm(v):
        return v.lower() if isinstance(v, str) and not case_sensitive else v
    allowed = {norm(c) for c in choices}
    return Rule(lambda v, c: norm(v) in allowed, f'one of {", ".join(repr(c) for c in choices)}'
                + ('' if case_sensitive else ' (any case)'))


def length(n):
    """A list of `n` values; `n` may be a key ('DATA.IMAGE_CHANNELS') whose value gives it."""
    if isinstance(n, str):
        return Rule(lambda v, c: len(v) == _get(c, n), lambda c: f'a list of {_get(c, n)} values ({n})')
    return Rule(lambda v, c: len(v) == n, f'a list of {n} values')


def each(rule):
    """`rule` holds for every item of a list."""
    return Rule(lambda v, c: all(rule.test(x, c) for x in v), lambda c: f'values each {rule.allowed(c)}')


def pair(test, allowed):
    """A [low, high] list (length checked first) with a condition on both values."""
    return Rule(lambda v, c: len(v) == 2 and test(*v), allowed)


class Check:
    """A relation between keys: `test(*values)` -> bool, over the values of `keys`; `allowed` says
    in words what must hold.  Keys that are None skip the check (None is `off`)."""

    def __init__(self, keys, test, allowed):
        self.keys, self.test, self.allowed = tuple(keys), test, allowed


PROBABILITY = in_range(0, 1)
NON_NEGATIVE = at_least(0)
POSITIVE = greater_than(0)

_PIL_INTERPOLATIONS = ('nearest', 'bilinear', 'bicubic', 'lanczos', 'box', 'hamming')
_CV2_INTERPOLATIONS = ('nearest', 'bilinear', 'bicubic', 'lanczos', 'area', 'box', 'random')

# Keys where 0 means "off" exactly as None does: stored as None, whatever the source, so the
# printed config and every consumer see one value for "off".
ZERO_MEANS_NONE = {'TRAIN.GRAD_CLIP', 'TRAIN.LINEAR_SCALED_LR', 'DATA.MAX_IMAGE_PIXELS'}


# DATA.DATASET (-dataset): how engine.data.build_dataset reads DATA.DATA_PATH
DATASETS = {
    'imagenet2012': "PaddleViT's name, the default: the list files when DATA_PATH has them, "
                    "else train/<class>/ and val/<class>/ folders",
    'imagelist': 'the list files DATA.TRAIN_LIST and DATA.VAL_LIST only',
    'imagefolder': 'the class folders train/<class>/ and val/<class>/ only',
}


def base_config():
    """A fresh copy of the defaults shared by every family (types declared, nothing checked)."""
    c = CN()
    c.BASE = ['']

    c.DATA = CN()
    c.DATA.BATCH_SIZE = 256             # per process
    c.DATA.BATCH_SIZE_EVAL = optional(int)   # per process; None -> DATA.BATCH_SIZE
    c.DATA.DATA_PATH = ''
    c.DATA.DATASET = 'imagenet2012'     # how DATA_PATH is read: one of DATASETS (above)
    c.DATA.TRAIN_LIST = 'train_list.txt'
    c.DATA.VAL_LIST = 'val_list.txt'
    c.DATA.IMAGE_SIZE = 224
    c.DATA.IMAGE_CHANNELS = 3
    # eval preprocessing: resize the short side to IMAGE_SIZE / CROP_PCT with
    # INTERPOLATION, center-crop IMAGE_SIZE, normalise with MEAN / STD.
    # EVAL_RESIZE 'squash' instead resizes the whole image to IMAGE_SIZE x IMAGE_SIZE
    # (aspect not kept, no crop, CROP_PCT unused), as Google's ViT and ViT-pytorch evaluate.
    c.DATA.EVAL_RESIZE = 'shorter'      # 'shorter' | 'squash'
    c.DATA.CROP_PCT = 0.875
    c.DATA.INTERPOLATION = 'bicubic'
    c.DATA.MEAN = [0.485, 0.456, 0.406]
    c.DATA.STD = [0.229, 0.224, 0.225]
    c.DATA.NUM_WORKERS = 2
    c.DATA.SKIP_BAD_IMAGES = False      # log and skip undecodable images instead of failing
    # images whose header declares more pixels are refused before decoding (a bad image, as
    # above); PIL's own default; None or 0: no limit
    c.DATA.MAX_IMAGE_PIXELS = optional(int, default=89_478_485)   # PIL's limit; 0 / None: no limit
    c.DATA.REPEATED_AUG = 0             # copies of each image per epoch (DeiT's RASampler: 3); 0 or 1 = off

    c.MODEL = CN()
    c.MODEL.TYPE = ''
    c.MODEL.NAME = ''
    c.MODEL.NUM_CLASSES = 1000
    c.MODEL.DROPOUT = 0.0
    c.MODEL.ATTENTION_DROPOUT = 0.0
    c.MODEL.DROPPATH = 0.1
    c.MODEL.PRETRAINED = optional(str)  # .pdparams to fine-tune from
    c.MODEL.RESUME = optional(str)      # checkpoint prefix to resume from

    c.TRAIN = CN()
    c.TRAIN.LAST_EPOCH = 0
    c.TRAIN.NUM_EPOCHS = 300
    # epochs after NUM_EPOCHS held at END_LR (timm's --cooldown-epochs: SP-ViT/TLT train 300 + 10)
    c.TRAIN.COOLDOWN_EPOCHS = 0
    c.TRAIN.WARMUP_EPOCHS = 5.0         # may be fractional (ViT fine-tuning warms up 500 steps)
    c.TRAIN.WEIGHT_DECAY = 0.05
    c.TRAIN.BASE_LR = 5e-4
    c.TRAIN.WARMUP_START_LR = 1e-6
    c.TRAIN.END_LR = 1e-5
    c.TRAIN.GRAD_CLIP = optional(float)     # global-norm clip value; None or 0: no clipping
    c.TRAIN.ACCUM_ITER = 1
    c.TRAIN.SHARDING = 'off'           # off | os | os_g | p_g_os: ZeRO stage 0-3 (engine/sharding.py; GPU only)
    c.TRAIN.LINEAR_SCALED_LR = optional(int, default=512)   # lr *= global_batch / this; None or 0: unscaled
    # which LRs that factor scales: 'base' = BASE_LR only (DeiT, PiT, PerViT, VVT main.py);
    # 'all' = also WARMUP_START_LR and END_LR (PaddleViT)
    c.TRAIN.LR_SCALING = 'base'
    c.TRAIN.MODEL_EMA = False
    c.TRAIN.MODEL_EMA_DECAY = 0.99996
    # timm's --model-ema-warmup: decay at EMA step t is min(MODEL_EMA_DECAY, (1 + t) / (10 + t))
    c.TRAIN.MODEL_EMA_WARMUP = False
    # gradient checkpointing: each transformer block's activations are recomputed in the backward
    # pass instead of kept (engine/recompute.py); same loss and gradients, less memory, slower step
    c.TRAIN.RECOMPUTE = False
    # layer-wise LR decay (BEiT / timm): LR x LAYER_DECAY ** (num_layers + 1 - layer id); None or 1.0: off
    c.TRAIN.LAYER_DECAY = optional(float)
    # train with every layer inside the model in eval mode: no dropout, attention dropout or drop
    # path, BatchNorm frozen at its running statistics (DeiT's --finetune; engine/trainer.py)
    c.TRAIN.FINETUNE_EVAL_MODE = False

    c.TRAIN.OPTIMIZER = CN()
    c.TRAIN.OPTIMIZER.NAME = 'AdamW'
    c.TRAIN.OPTIMIZER.EPS = 1e-8
    c.TRAIN.OPTIMIZER.BETAS = (0.9, 0.999)
    c.TRAIN.OPTIMIZER.MOMENTUM = 0.9

    c.TRAIN.LR_SCHEDULER = CN()
    c.TRAIN.LR_SCHEDULER.NAME = 'warmupcosine'

    c.TRAIN.SMOOTHING = 0.1
    c.TRAIN.COLOR_JITTER = optional(float, default=0.4)   # used without Auto/RandAugment; None or 0: off
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
    c.TRAIN.CUTMIX_MINMAX = optional([float])   # [min, max] box side ratio; None: from CUTMIX_ALPHA
    c.TRAIN.RANDOM_ERASE_PROB = 0.25
    c.TRAIN.RANDOM_ERASE_MODE = 'pixel'
    c.TRAIN.RANDOM_ERASE_COUNT = 1
    c.TRAIN.RANDOM_ERASE_SPLIT = False

    c.TRAIN.DISTILLATION_TYPE = 'none'  # none | soft | hard
    c.TRAIN.DISTILLATION_ALPHA = 0.5
    c.TRAIN.DISTILLATION_TAU = 1.0
    c.TRAIN.DISTILLATION_SOFT_REDUCTION = 'numel'   # DeiT: KL sum / (batch x classes); or 'batchmean'
    c.TRAIN.TEACHER_MODEL = optional(str)    # teacher .pdparams
    c.TRAIN.TEACHER_CONFIG = optional(str)   # teacher yaml (family found from its MODEL.TYPE)

    c.SAVE = './output'
    c.SAVE_FREQ = 10                    # epochs that are multiples of it are kept for good; 0: none
    c.SAVE_KEEP = 2                     # newest complete checkpoints kept besides them (>= 1)
    c.OVERWRITE = False                 # -overwrite: a new run may write where another run's checkpoints are
    c.REPORT_FREQ = 20
    c.VALIDATE_FREQ = 1
    c.SEED = 0
    c.EVAL = False
    c.AMP = False
    c.AMP_LEVEL = 'O1'                  # O1: autocast white-list ops; O2: fp16/bf16 weights
    c.AMP_DTYPE = 'float16'             # float16 (GPU) | bfloat16
    c.LOCAL_RANK = 0
    return c


# What each shared key may hold beyond its type (None, where the type allows it, is never checked).
BASE_RULES = {
    'DATA.BATCH_SIZE': (at_least(1),),
    'DATA.BATCH_SIZE_EVAL': (at_least(1),),
    'DATA.TRAIN_LIST': (Rule(lambda v, c: bool(v), 'a file name'),),
    'DATA.VAL_LIST': (Rule(lambda v, c: bool(v), 'a file name'),),
    'DATA.IMAGE_SIZE': (at_least(1),),
    'DATA.IMAGE_CHANNELS': (Rule(lambda v, c: v == 3, '3: images are decoded as RGB'),),
    'DATA.CROP_PCT': (in_range(0, 1, low_open=True),),
    'DATA.INTERPOLATION': (one_of(*_PIL_INTERPOLATIONS),),
    'DATA.EVAL_RESIZE': (one_of('shorter', 'squash'),),
    # PaddleViT accepted any name and ran the same; CIFAR was downloaded at run time there
    'DATA.DATASET': (Rule(lambda v, c: v in DATASETS,
                          'one of ' + '; '.join(f'{name!r} ({meaning})' for name, meaning in DATASETS.items())
                          + ' (for CIFAR or any other set, write its images as class folders and pass '
                            '-dataset imagefolder -num_classes N)'),),
    'DATA.REPEATED_AUG': (NON_NEGATIVE,),
    'DATA.MEAN': (length('DATA.IMAGE_CHANNELS'), each(in_range(0, 1))),
    'DATA.STD': (length('DATA.IMAGE_CHANNELS'), each(greater_than(0))),
    'DATA.NUM_WORKERS': (NON_NEGATIVE,),
    'DATA.MAX_IMAGE_PIXELS': (at_least(1),),
    'MODEL.NUM_CLASSES': (at_least(1),),
    'MODEL.DROPOUT': (in_range(0, 1, high_open=True),),
    'MODEL.ATTENTION_DROPOUT': (in_range(0, 1, high_open=True),),
    'MODEL.DROPPATH': (in_range(0, 1, high_open=True),),
    'TRAIN.LAST_EPOCH': (NON_NEGATIVE,),
    'TRAIN.NUM_EPOCHS': (at_least(1),),
    'TRAIN.WARMUP_EPOCHS': (NON_NEGATIVE,),
    'TRAIN.WEIGHT_DECAY': (NON_NEGATIVE,),
    'TRAIN.BASE_LR': (POSITIVE,),
    'TRAIN.WARMUP_START_LR': (NON_NEGATIVE,),
    'TRAIN.END_LR': (NON_NEGATIVE,),
    'TRAIN.GRAD_CLIP': (POSITIVE,),
    'TRAIN.ACCUM_ITER': (at_least(1),),
    'TRAIN.SHARDING': (one_of('off', 'os', 'os_g', 'p_g_os'),),
    'TRAIN.LINEAR_SCALED_LR': (at_least(1),),
    'TRAIN.MODEL_EMA_DECAY': (in_range(0, 1, high_open=True),),
    'TRAIN.LAYER_DECAY': (in_range(0, 1, low_open=True),),
    'TRAIN.LR_SCALING': (one_of('base', 'all'),),
    'TRAIN.COOLDOWN_EPOCHS': (NON_NEGATIVE,),
    'TRAIN.OPTIMIZER.NAME': (one_of('AdamW', 'SGD', case_sensitive=False),),
    'TRAIN.OPTIMIZER.EPS': (POSITIVE,),
    'TRAIN.OPTIMIZER.BETAS': (length(2), each(in_range(0, 1, high_open=True))),
    'TRAIN.OPTIMIZER.MOMENTUM': (in_range(0, 1, high_open=True),),
    'TRAIN.LR_SCHEDULER.NAME': (one_of('warmupcosine', 'constant', case_sensitive=False),),
    'TRAIN.SMOOTHING': (in_range(0, 1, high_open=True),),
    'TRAIN.COLOR_JITTER': (NON_NEGATIVE,),
    'TRAIN.RAND_AUGMENT_LAYERS': (NON_NEGATIVE,),
    'TRAIN.RAND_AUGMENT_MAGNITUDE': (in_range(0, 10),),
    'TRAIN.TRAIN_INTERPOLATION': (one_of(*_CV2_INTERPOLATIONS),),
    'TRAIN.CROP_SCALE': (pair(lambda lo, hi: 0 < lo <= hi <= 1, '[min, max] with 0 < min <= max <= 1'),),
    'TRAIN.HFLIP_PROB': (PROBABILITY,),
    'TRAIN.MIXUP_ALPHA': (NON_NEGATIVE,),
    'TRAIN.MIXUP_PROB': (PROBABILITY,),
    'TRAIN.MIXUP_SWITCH_PROB': (PROBABILITY,),
    'TRAIN.MIXUP_MODE': (one_of('batch', 'elem', 'pair'),),
    'TRAIN.CUTMIX_ALPHA': (NON_NEGATIVE,),
    'TRAIN.CUTMIX_MINMAX': (pair(lambda lo, hi: 0 <= lo < hi <= 1, '[min, max] with 0 <= min < max <= 1'),),
    'TRAIN.RANDOM_ERASE_PROB': (PROBABILITY,),
    'TRAIN.RANDOM_ERASE_MODE': (one_of('pixel', 'rand', 'const'),),
    'TRAIN.RANDOM_ERASE_COUNT': (at_least(1),),
    # only meaningful with augmentation splits, which this pipeline does not make
    'TRAIN.RANDOM_ERASE_SPLIT': (one_of(False),),
    'TRAIN.DISTILLATION_TYPE': (one_of('none', 'soft', 'hard'),),
    'TRAIN.DISTILLATION_ALPHA': (PROBABILITY,),
    'TRAIN.DISTILLATION_TAU': (POSITIVE,),
    'TRAIN.DISTILLATION_SOFT_REDUCTION': (one_of('numel', 'batchmean'),),
    'SAVE': (Rule(lambda v, c: bool(v), 'a folder name'),),
    'SAVE_FREQ': (at_least(0),),       # 0: no epoch kept for good
    'SAVE_KEEP': (at_least(1),),
    'REPORT_FREQ': (at_least(1),),
    'VALIDATE_FREQ': (at_least(1),),
    'SEED': (NON_NEGATIVE,),
    'AMP_LEVEL': (one_of('O1', 'O2'),),
    'AMP_DTYPE': (one_of('float16', 'bfloat16'),),
    'LOCAL_RANK': (NON_NEGATIVE,),
}

# Relations between shared keys.
BASE_CHECKS = (
    Check(('TRAIN.LAST_EPOCH', 'TRAIN.NUM_EPOCHS'), lambda last, total: last < total,
          'TRAIN.LAST_EPOCH (epochs already done) must be below TRAIN.NUM_EPOCHS, or nothing is trained'),
    Check(('TRAIN.WARMUP_EPOCHS', 'TRAIN.NUM_EPOCHS'), lambda warmup, total: warmup <= total,
          'TRAIN.WARMUP_EPOCHS must not exceed TRAIN.NUM_EPOCHS'),
)


def _get(config, key):
    node = config
    for part in key.split('.'):
        node = node[part]
    return node


# ---------------------------------------------------------------------------------------- YAML files
def _read_yaml(path):
    """(mapping, {dotted key: line}) of one YAML file; encoding, syntax and duplicate keys checked."""
    try:
        with open(path, 'rb') as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError(f'config file not found: {path}') from None
    except OSError as e:
        raise ConfigError(f'config file {path} cannot be read: {e.strerror}') from None
    try:
        text = raw.decode('utf-8-sig')
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b'\n') + 1
        raise ConfigError(f'{path}, line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); '
                          f'save the config file as UTF-8') from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return {}, {}
        if not isinstance(node, yaml.MappingNode):
            raise ConfigError(f'{path}: expected a mapping of config keys (KEY: value lines), '
                              f'got {node.tag.rsplit(":", 1)[-1]}')
        lines = {}
        _key_lines(node, path, '', lines)
        data = loader.construct_document(node)
    except yaml.YAMLError as e:
        raise ConfigError(f'{path}: not valid YAML: {e}') from None
    finally:
        loader.dispose()
    return data, lines


def _key_lines(node, path, prefix, lines):
    """Record the line of each dotted key under mapping `node`; refuse a key given twice
    (PyYAML would silently keep the last one)."""
    seen = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.value == '<<':
            continue
        line = key_node.start_mark.line + 1
        if key_node.value in seen:
            raise ConfigError(f'{path}, line {line}: duplicate key {prefix}{key_node.value} (first given on '
                              f'line {seen[key_node.value]}); YAML would silently keep the last one')
        seen[key_node.value] = line
        lines[prefix + key_node.value] = line
        if isinstance(value_node, yaml.MappingNode):
            _key_lines(value_node, path, f'{prefix}{key_node.value}.', lines)


def _config_chain(path, _stack=()):
    """[(path, mapping, lines)] of `path` and its BASE files, each base before the file naming it
    (BASE paths are relative to the file).  A BASE cycle, or a file naming itself, is refused."""
    real = os.path.realpath(path)
    visited = [p for p, _ in _stack]
    if real in visited:
        names = [shown for _, shown in _stack[visited.index(real):]] + [path]
        if len(names) == 2:
            raise ConfigError(f'{path}: names itself in BASE')
        raise ConfigError(f'BASE cycle: {" -> ".join(names)}')
    data, lines = _read_yaml(path)
    bases = data.get('BASE', [''])
    if isinstance(bases, str) or bases is None:
        bases = [bases or '']
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f'{path}, line {lines.get("BASE")}: BASE expects a list of YAML file names, '
                          f'got {bases!r}')
    chain = []
    for base in bases:
        if base:
            base_path = os.path.join(os.path.dirname(path), base)
            if not os.path.isfile(base_path):
                raise ConfigError(f'{path}, line {lines.get("BASE")}: BASE file not found: {base_path}')
            chain += _config_chain(base_path, _stack + ((real, path),))
    chain.append((path, data, lines))
    return chain


def _flatten(data, prefix=''):
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _flatten(value, f'{prefix}{key}.')
        else:
            yield f'{prefix}{key}', value


def yaml_model_type(path):
    """MODEL.TYPE as the YAML at `path` (or its BASE chain) sets it, or ''."""
    model_type = ''
    for _, data, _ in _config_chain(path):
        model_type = (data.get('MODEL') or {}).get('TYPE') or model_type
    return model_type


# ---------------------------------------------------------------------------------------- assembly
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


def _leaves(node, prefix=''):
    for name, value in node.items():
        if isinstance(value, _YacsNode):
            yield from _leaves(value, f'{prefix}{name}.')
        else:
            yield f'{prefix}{name}', node, name, value


class _Assembly:
    """One config being built: the values, each key's Kind, and where each value came from."""

    def __init__(self, family_defaults):
        config = base_config()
        self.kinds = self._declare(config, {})
        family_defaults(config)
        self.kinds = self._declare(config, self.kinds)
        self.config = config
        self.origins = {key: 'default' for key in self.kinds}
        self.family_type = config.MODEL.TYPE

    @staticmethod
    def _declare(config, known):
        """Each leaf's Kind: declared, known from the shared base, or inferred from its default.
        A family's default for a shared key is converted to the shared key's type."""
        kinds = {}
        for key, node, name, value in _leaves(config):
            if key == 'BASE':
                continue
            kind = node.__dict__.get('_declared_kinds', {}).get(name) or known.get(key) \
                or _infer_kind(value, key)
            try:
                dict.__setitem__(node, name, convert(kind, value, key, 'defaults'))
            except ConfigError as e:
                raise TypeError(str(e)) from None   # a default of the wrong type is a code error
            kinds[key] = kind
        return kinds

    def assign(self, key, value, source):
        if key not in self.kinds:
            raise ConfigError(f'{source}: config key {key} does not exist')
        value = convert(self.kinds[key], value, key, source)
        if key in ZERO_MEANS_NONE and value == 0:
            value = None
        *parents, leaf = key.split('.')
        node = self.config
        for part in parents:
            node = node[part]
        dict.__setitem__(node, leaf, value)
        self.origins[key] = source

    def merge_file(self, path):
        for file, data, lines in _config_chain(path):
            for key, value in _flatten(data):
                if key != 'BASE':
                    self.assign(key, value, f'{file}, line {lines.get(key, "?")}')

    def apply_overrides(self, args=None, opts=None):
        """Apply parsed command-line flags, then `-opts KEY VALUE ...` pairs."""
        if args is not None:
            for flag, key in _FLAG_KEYS.items():
                value = getattr(args, flag, None)
                if value is not None:
                    self.assign(key, value, f'-{flag}')
            if getattr(args, 'eval', False):
                self.assign('EVAL', True, '-eval')
            if getattr(args, 'amp', False):
                self.assign('AMP', True, '-amp')
            if getattr(args, 'overwrite', False):
                self.assign('OVERWRITE', True, '-overwrite')
            opts = list(opts or []) + list(getattr(args, 'opts', None) or [])
        if opts:
            if len(opts) % 2:
                raise ConfigError(f'-opts takes KEY VALUE pairs, got an odd count: {opts}')
            for key, value in zip(opts[0::2], opts[1::2]):
                self.assign(key, value, '-opts')

    def where(self, key):
        return self.origins.get(key, 'default')

    def validate(self, rules, checks):
        config = self.config
        if self.family_type and config.MODEL.TYPE != self.family_type:
            raise ConfigError(f'{self.where("MODEL.TYPE")}: MODEL.TYPE = {config.MODEL.TYPE!r}, but this '
                              f'program builds {self.family_type!r} models: use the '
                              f'{config.MODEL.TYPE or "matching"} family\'s scripts, or a '
                              f'{self.family_type} config')
        for key, key_rules in rules.items():
            if key not in self.kinds:
                raise TypeError(f'a rule names config key {key}, which does not exist')
            value = _get(config, key)
            if value is None:
                continue
            for rule in key_rules:
                if not rule.test(value, config):
                    raise ConfigError(f'{self.where(key)}: {key} = {value!r} is not allowed: '
                                      f'must be {rule.allowed(config)}')
        for check in checks:
            values = [_get(config, key) for key in check.keys]
            if any(v is None for v in values) or check.test(*values):
                continue
            given = ', '.join(f'{key} = {value!r} ({self.where(key)})'
                              for key, value in zip(check.keys, values))
            raise ConfigError(f'{given}: {check.allowed}')


def make_get_config(family_defaults, rules=None, checks=()):
    """Build a family's `get_config(cfg_file=None, args=None, opts=None)`.

    `family_defaults(config)` adds the family's MODEL keys to the shared base
    (and may change shared defaults).  `rules` ({key: (Rule, ...)}) restricts the
    values of the family's keys, and may add rules to shared keys; `checks`
    (Check, ...) relate keys: the patch and image sizes the model can tile,
    lists with one entry per stage, ...  Everything is checked once, after the
    YAML, flags and -opts have been applied.
    """
    all_rules = {key: tuple(value) for key, value in BASE_RULES.items()}
    for key, value in (rules or {}).items():
        all_rules[key] = all_rules.get(key, ()) + tuple(value)
    all_checks = tuple(BASE_CHECKS) + tuple(checks)

    def get_config(cfg_file=None, args=None, opts=None):
        build = _Assembly(family_defaults)
        cfg_file = cfg_file or getattr(args, 'cfg', None)
        if cfg_file:
            build.merge_file(cfg_file)
        build.apply_overrides(args, opts)
        build.validate(all_rules, all_checks)
        config = build.config
        if config.DATA.BATCH_SIZE_EVAL is None:
            config.DATA.BATCH_SIZE_EVAL = config.DATA.BATCH_SIZE
        config.freeze()
        return config
    get_config.kinds = lambda: dict(_Assembly(family_defaults).kinds)
    return get_config
