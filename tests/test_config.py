"""Config assembly: defaults < family < YAML (with BASE) < flags < -opts, strict keys."""
import argparse
import re

import pytest

from engine.config import ConfigError, make_get_config


def _family(c):
    c.MODEL.TYPE = 'Toy'
    c.MODEL.EMBED_DIM = 64


get_config = make_get_config(_family)


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_defaults_and_eval_batch_fallback():
    config = get_config()
    assert config.MODEL.EMBED_DIM == 64
    assert config.DATA.BATCH_SIZE_EVAL == config.DATA.BATCH_SIZE   # never None (PaddleViT bug)
    assert config.is_frozen()


def test_yaml_base_chain_and_precedence(tmp_path):
    _write(tmp_path / 'base.yaml', 'MODEL:\n  EMBED_DIM: 32\nTRAIN:\n  BASE_LR: 1e-3\n')
    child = _write(tmp_path / 'child.yaml', "BASE: ['base.yaml']\nMODEL:\n  NAME: toy_s\nDATA:\n  IMAGE_SIZE: 384\n")
    config = get_config(child)
    assert config.MODEL.EMBED_DIM == 32 and config.MODEL.NAME == 'toy_s'
    assert config.TRAIN.BASE_LR == pytest.approx(1e-3)   # PyYAML reads 1e-3 as a string
    args = argparse.Namespace(cfg=child, batch_size=8, image_size=None, eval=True, amp=False,
                              opts=['MODEL.EMBED_DIM', '16', 'TRAIN.BASE_LR', '2'])
    config = get_config(args=args)
    assert config.DATA.BATCH_SIZE == 8 and config.DATA.BATCH_SIZE_EVAL == 8
    assert config.DATA.IMAGE_SIZE == 384 and config.EVAL is True
    assert config.MODEL.EMBED_DIM == 16 and config.TRAIN.BASE_LR == 2.0


def test_unknown_key_in_yaml_names_file_and_key(tmp_path):
    bad = _write(tmp_path / 'bad.yaml', 'MODEL:\n  EMBED_DIMS: 32\n')
    with pytest.raises(ConfigError, match=r"bad\.yaml.*MODEL\.EMBED_DIMS.*does not exist"):
        get_config(bad)


def test_unknown_and_mistyped_opts():
    with pytest.raises(ConfigError, match=r"-opts.*TRAIN\.NOPE"):
        get_config(opts=['TRAIN.NOPE', '1'])
    with pytest.raises(ConfigError, match=r"MODEL\.EMBED_DIM.*expects int"):
        get_config(opts=['MODEL.EMBED_DIM', 'wide'])
    with pytest.raises(ConfigError, match='odd count'):
        get_config(opts=['MODEL.EMBED_DIM'])


def test_missing_file_and_base(tmp_path):
    with pytest.raises(ConfigError, match='not found'):
        get_config(str(tmp_path / 'nope.yaml'))
    orphan = _write(tmp_path / 'orphan.yaml', "BASE: ['gone.yaml']\n")
    with pytest.raises(ConfigError, match='gone.yaml'):
        get_config(orphan)


# --------------------------------------------------------------------------- types
from engine.config import CN, optional  # noqa: E402
from engine.families import FAMILIES, load_family  # noqa: E402

# one valid text per optional key, given as -opts gives it, and the value it must become;
# keys not listed use the sample of their type
_SAMPLES = {int: ('4', 4), float: ('0.5', 0.5), str: ('some/file.pdparams', 'some/file.pdparams')}
_SPECIAL = {'TRAIN.CUTMIX_MINMAX': ('[0.2, 0.8]', [0.2, 0.8]),
            'MODEL.QK_SCALE': ('0.125', 0.125),           # SP-ViT-S: head_dim 64 -> 64 ** -0.5
            'TRAIN.LINEAR_SCALED_LR': ('256', 256),
            'DATA.MAX_IMAGE_PIXELS': ('1000000', 1_000_000)}


def _optional_keys():
    """(family, key) for every key whose default may be None, in the shared base and every family."""
    cases = [('base', key) for key, kind in get_config.kinds().items() if kind.optional]
    for name in sorted(FAMILIES):
        family = load_family(name)
        base = {k for _, k in cases}
        cases += [(name, key) for key, kind in family.get_config.kinds().items()
                  if kind.optional and key not in base]
    return cases


def test_optional_keys_are_the_expected_ones():
    # a new key with a None default must declare its type (optional(...)) and is then covered below
    assert {k for _, k in _optional_keys()} == {
        'DATA.BATCH_SIZE_EVAL', 'MODEL.PRETRAINED', 'MODEL.RESUME', 'TRAIN.GRAD_CLIP',
        'TRAIN.LINEAR_SCALED_LR', 'TRAIN.COLOR_JITTER', 'TRAIN.CUTMIX_MINMAX', 'TRAIN.TEACHER_MODEL',
        'TRAIN.TEACHER_CONFIG', 'MODEL.QK_SCALE', 'DATA.MAX_IMAGE_PIXELS', 'TRAIN.LAYER_DECAY'}


@pytest.mark.parametrize('family,key', _optional_keys())
def test_every_optional_key_gets_its_type_from_opts(family, key):
    """`-opts` converts by the key's declared type, not by the type of a None default (which used
    to hand every such key a string: DATA.BATCH_SIZE_EVAL '4' hung the loader)."""
    get = get_config if family == 'base' else load_family(family).get_config
    kind = get.kinds()[key]
    text, expected = _SPECIAL.get(key) or _SAMPLES[kind.item or kind.type]
    if kind.item and key not in _SPECIAL:
        text, expected = f'[{text}, {text}]', [expected, expected]
    value = get(opts=[key, text])
    node = value
    for part in key.split('.'):
        node = node[part]
    assert node == expected and type(node) is type(expected)
    assert _get(get(opts=[key, 'None']), key) is None or key == 'DATA.BATCH_SIZE_EVAL'
    if kind.type is not str:
        with pytest.raises(ConfigError, match=rf'-opts: config key {re.escape(key)} expects '):
            get(opts=[key, 'abc'])


def _get(config, key):
    for part in key.split('.'):
        config = config[part]
    return config


def test_none_default_without_a_declared_type_is_a_code_error():
    def family(c):
        c.MODEL.WIDTH = None

    with pytest.raises(TypeError, match=r'MODEL\.WIDTH defaults to None without a declared type'):
        make_get_config(family)()

    def declared(c):
        c.MODEL.WIDTH = optional(int)

    assert make_get_config(declared)(opts=['MODEL.WIDTH', '7']).MODEL.WIDTH == 7
    node = CN()
    node.X = optional(float)
    assert node.X is None


def test_eval_batch_from_opts_is_an_int():
    config = get_config(opts=['DATA.BATCH_SIZE_EVAL', '4'])
    assert config.DATA.BATCH_SIZE_EVAL == 4 and isinstance(config.DATA.BATCH_SIZE_EVAL, int)


def test_zero_means_off_the_same_in_yaml_and_opts(tmp_path):
    """TRAIN.GRAD_CLIP 0 used to clip every gradient to zero from -opts ('0' is a true string)."""
    cfg = _write(tmp_path / 'c.yaml', 'TRAIN:\n  GRAD_CLIP: 0\n  LINEAR_SCALED_LR: 0\n')
    for config in (get_config(cfg), get_config(opts=['TRAIN.GRAD_CLIP', '0', 'TRAIN.LINEAR_SCALED_LR', '0']),
                   get_config(opts=['TRAIN.GRAD_CLIP', 'None', 'TRAIN.LINEAR_SCALED_LR', 'null'])):
        assert config.TRAIN.GRAD_CLIP is None and config.TRAIN.LINEAR_SCALED_LR is None
    assert get_config(opts=['TRAIN.GRAD_CLIP', '1']).TRAIN.GRAD_CLIP == 1.0


def test_yaml_and_opts_values_are_converted_alike(tmp_path):
    cfg = _write(tmp_path / 'c.yaml', 'TRAIN:\n  BASE_LR: 1e-3\n  CROP_SCALE: [0.5, 1]\n  MODEL_EMA: true\n'
                                      'DATA:\n  BATCH_SIZE_EVAL: 4\n')
    a = get_config(cfg)
    b = get_config(opts=['TRAIN.BASE_LR', '1e-3', 'TRAIN.CROP_SCALE', '(0.5, 1)', 'TRAIN.MODEL_EMA', 'true',
                         'DATA.BATCH_SIZE_EVAL', '4'])
    for config in (a, b):
        assert config.TRAIN.BASE_LR == 1e-3 and config.TRAIN.CROP_SCALE == (0.5, 1.0)
        assert config.TRAIN.MODEL_EMA is True and config.DATA.BATCH_SIZE_EVAL == 4


# --------------------------------------------------------------------------- values
BAD_VALUES = [
    # (-opts, what the message must hold)
    (['DATA.BATCH_SIZE', '0'], r"DATA\.BATCH_SIZE = 0 is not allowed: must be >= 1"),
    (['DATA.BATCH_SIZE_EVAL', '0'], r"DATA\.BATCH_SIZE_EVAL = 0 .*>= 1"),
    (['REPORT_FREQ', '0'], r"REPORT_FREQ = 0 .*>= 1"),
    (['VALIDATE_FREQ', '0'], r"VALIDATE_FREQ = 0 .*>= 1"),
    (['SAVE_FREQ', '-1'], r"SAVE_FREQ = -1 .*>= 0"),
    (['SAVE_KEEP', '0'], r"SAVE_KEEP = 0 .*>= 1"),
    (['TRAIN.NUM_EPOCHS', '0'], r"TRAIN\.NUM_EPOCHS = 0 .*>= 1"),
    (['TRAIN.ACCUM_ITER', '0'], r"TRAIN\.ACCUM_ITER = 0 .*>= 1"),
    (['DATA.CROP_PCT', '0'], r"DATA\.CROP_PCT = 0\.0 .*in \(0, 1\]"),
    (['DATA.CROP_PCT', '1.2'], r"DATA\.CROP_PCT = 1\.2 .*in \(0, 1\]"),
    (['DATA.MEAN', '[0.5, 0.5]'], r"DATA\.MEAN = \[0\.5, 0\.5\] .*a list of 3 values \(DATA\.IMAGE_CHANNELS\)"),
    (['DATA.STD', '[0.5, 0.0, 0.5]'], r"DATA\.STD = .*values each > 0"),
    (['DATA.IMAGE_CHANNELS', '1'], r"DATA\.IMAGE_CHANNELS = 1 .*RGB"),
    (['DATA.NUM_WORKERS', '-1'], r"DATA\.NUM_WORKERS = -1 .*>= 0"),
    (['DATA.INTERPOLATION', 'cubic'], r"DATA\.INTERPOLATION = 'cubic' .*one of 'nearest', 'bilinear'"),
    (['TRAIN.TRAIN_INTERPOLATION', 'lanczos4'], r"TRAIN\.TRAIN_INTERPOLATION = 'lanczos4' .*'random'"),
    (['SEED', '-1'], r"SEED = -1 .*>= 0"),
    (['TRAIN.OPTIMIZER.NAME', 'Adam'], r"TRAIN\.OPTIMIZER\.NAME = 'Adam' .*one of 'AdamW', 'SGD' \(any case\)"),
    (['TRAIN.LR_SCHEDULER.NAME', 'cosine'], r"TRAIN\.LR_SCHEDULER\.NAME = 'cosine' .*'warmupcosine'"),
    (['AMP_LEVEL', 'O3'], r"AMP_LEVEL = 'O3' .*one of 'O1', 'O2'"),
    (['AMP_DTYPE', 'fp16'], r"AMP_DTYPE = 'fp16' .*'float16', 'bfloat16'"),
    (['TRAIN.DISTILLATION_TYPE', 'kl'], r"TRAIN\.DISTILLATION_TYPE = 'kl' .*'none', 'soft', 'hard'"),
    (['TRAIN.DISTILLATION_SOFT_REDUCTION', 'mean'], r"SOFT_REDUCTION = 'mean' .*'numel', 'batchmean'"),
    (['TRAIN.DISTILLATION_ALPHA', '1.5'], r"TRAIN\.DISTILLATION_ALPHA = 1\.5 .*in \[0, 1\]"),
    (['TRAIN.DISTILLATION_TAU', '0'], r"TRAIN\.DISTILLATION_TAU = 0\.0 .*> 0"),
    (['TRAIN.MIXUP_MODE', 'sample'], r"TRAIN\.MIXUP_MODE = 'sample' .*'batch', 'elem', 'pair'"),
    (['TRAIN.MIXUP_PROB', '1.5'], r"TRAIN\.MIXUP_PROB = 1\.5 .*in \[0, 1\]"),
    (['TRAIN.MIXUP_SWITCH_PROB', '-0.1'], r"TRAIN\.MIXUP_SWITCH_PROB = -0\.1 .*in \[0, 1\]"),
    (['TRAIN.HFLIP_PROB', '2'], r"TRAIN\.HFLIP_PROB = 2\.0 .*in \[0, 1\]"),
    (['TRAIN.RANDOM_ERASE_PROB', '1.01'], r"TRAIN\.RANDOM_ERASE_PROB = 1\.01 .*in \[0, 1\]"),
    (['TRAIN.RANDOM_ERASE_MODE', 'zero'], r"TRAIN\.RANDOM_ERASE_MODE = 'zero' .*'pixel', 'rand', 'const'"),
    (['TRAIN.RANDOM_ERASE_COUNT', '0'], r"TRAIN\.RANDOM_ERASE_COUNT = 0 .*>= 1"),
    (['TRAIN.RANDOM_ERASE_SPLIT', 'True'], r"TRAIN\.RANDOM_ERASE_SPLIT = True .*one of False"),
    (['TRAIN.SMOOTHING', '1'], r"TRAIN\.SMOOTHING = 1\.0 .*in \[0, 1\)"),
    (['TRAIN.CROP_SCALE', '[0.9, 0.1]'], r"TRAIN\.CROP_SCALE = \(0\.9, 0\.1\) .*0 < min <= max <= 1"),
    (['TRAIN.CUTMIX_MINMAX', '[0.5]'], r"TRAIN\.CUTMIX_MINMAX = \[0\.5\] .*\[min, max\]"),
    (['TRAIN.OPTIMIZER.BETAS', '[0.9]'], r"TRAIN\.OPTIMIZER\.BETAS = \(0\.9,\) .*a list of 2 values"),
    (['TRAIN.RAND_AUGMENT_MAGNITUDE', '11'], r"RAND_AUGMENT_MAGNITUDE = 11 .*in \[0, 10\]"),
    (['TRAIN.BASE_LR', '0'], r"TRAIN\.BASE_LR = 0\.0 .*> 0"),
    (['TRAIN.WEIGHT_DECAY', '-0.1'], r"TRAIN\.WEIGHT_DECAY = -0\.1 .*>= 0"),
    (['TRAIN.GRAD_CLIP', '-1'], r"TRAIN\.GRAD_CLIP = -1\.0 .*> 0"),
    (['TRAIN.MODEL_EMA_DECAY', '1'], r"TRAIN\.MODEL_EMA_DECAY = 1\.0 .*in \[0, 1\)"),
    (['MODEL.NUM_CLASSES', '0'], r"MODEL\.NUM_CLASSES = 0 .*>= 1"),
    (['MODEL.DROPPATH', '1'], r"MODEL\.DROPPATH = 1\.0 .*in \[0, 1\)"),
    (['TRAIN.WARMUP_EPOCHS', '10', 'TRAIN.NUM_EPOCHS', '5'],
     r"TRAIN\.WARMUP_EPOCHS = 10\.0 \(-opts\), TRAIN\.NUM_EPOCHS = 5 \(-opts\): .*must not exceed"),
    (['TRAIN.LAST_EPOCH', '300'], r"TRAIN\.LAST_EPOCH = 300 \(-opts\), TRAIN\.NUM_EPOCHS = 300 \(default\)"),
    # types
    (['TRAIN.GRAD_CLIP', 'abc'], r"-opts: config key TRAIN\.GRAD_CLIP expects float or None, got 'abc'"),
    (['TRAIN.NUM_EPOCHS', '2.5'], r"TRAIN\.NUM_EPOCHS expects int, got 2\.5"),
    (['TRAIN.BASE_LR', 'nan'], r"TRAIN\.BASE_LR expects float, got 'nan'"),
    (['TRAIN.MODEL_EMA', 'maybe'], r"TRAIN\.MODEL_EMA expects bool, got 'maybe'"),
    (['TRAIN.MODEL_EMA', '1'], r"TRAIN\.MODEL_EMA expects bool, got 1"),
    (['DATA.MEAN', '0.5'], r"DATA\.MEAN expects a list of float, got 0\.5"),
    (['DATA.BATCH_SIZE', 'None'], r"DATA\.BATCH_SIZE expects int, got None"),
]


@pytest.mark.parametrize('opts,message', BAD_VALUES, ids=[' '.join(o) for o, _ in BAD_VALUES])
def test_bad_value_is_refused_with_key_value_and_rule(opts, message):
    with pytest.raises(ConfigError, match=message):
        get_config(opts=opts)


def test_flag_values_are_checked_and_named():
    args = argparse.Namespace(cfg=None, batch_size=0, eval=False, amp=False, opts=None)
    with pytest.raises(ConfigError, match=r'^-batch_size: DATA\.BATCH_SIZE = 0 is not allowed: must be >= 1$'):
        get_config(args=args)


def test_yaml_value_errors_name_file_and_line(tmp_path):
    cfg = _write(tmp_path / 'bad.yaml', 'DATA:\n  BATCH_SIZE: 8\n  CROP_PCT: 0\n')
    with pytest.raises(ConfigError, match=r'bad\.yaml, line 3: DATA\.CROP_PCT = 0\.0 is not allowed'):
        get_config(cfg)
    cfg = _write(tmp_path / 'typed.yaml', 'TRAIN:\n  GRAD_CLIP: abc\n')
    with pytest.raises(ConfigError, match=r'typed\.yaml, line 2: config key TRAIN\.GRAD_CLIP expects float'):
        get_config(cfg)
    # the value's last source is named: a YAML value overridden by -opts is reported as -opts
    with pytest.raises(ConfigError, match=r'^-opts: DATA\.CROP_PCT = 1\.5'):
        get_config(_write(tmp_path / 'ok.yaml', 'DATA:\n  CROP_PCT: 0.9\n'), opts=['DATA.CROP_PCT', '1.5'])


# --------------------------------------------------------------------------- files
def test_duplicate_yaml_key_names_file_and_line(tmp_path):
    cfg = _write(tmp_path / 'dup.yaml', 'DATA:\n  BATCH_SIZE: 8\n  IMAGE_SIZE: 32\n  BATCH_SIZE: 16\n')
    with pytest.raises(ConfigError, match=r'dup\.yaml, line 4: duplicate key DATA\.BATCH_SIZE \(first given on '
                                          r'line 2\)'):
        get_config(cfg)
    cfg = _write(tmp_path / 'dup2.yaml', 'DATA:\n  BATCH_SIZE: 8\nTRAIN:\n  BASE_LR: 0.1\nDATA:\n  IMAGE_SIZE: 32\n')
    with pytest.raises(ConfigError, match=r'dup2\.yaml, line 5: duplicate key DATA '):
        get_config(cfg)


def test_non_utf8_yaml_names_file_and_line(tmp_path):
    path = tmp_path / 'latin1.yaml'
    path.write_bytes('MODEL:\n  NAME: vit\n# r\u00e9sum\u00e9 of the recipe\n'.encode('latin-1'))
    with pytest.raises(ConfigError, match=r'latin1\.yaml, line 3: not UTF-8 text \(byte 0xe9\)'):
        get_config(str(path))
    path.write_bytes('\ufeffMODEL:\n  NAME: vit\n'.encode('utf-8'))   # a BOM is fine
    assert get_config(str(path)).MODEL.NAME == 'vit'


def test_base_cycle_and_self_reference_are_refused(tmp_path):
    selfish = _write(tmp_path / 'self.yaml', "BASE: ['self.yaml']\n")
    with pytest.raises(ConfigError, match=r'self\.yaml: names itself in BASE'):
        get_config(selfish)
    _write(tmp_path / 'a.yaml', "BASE: ['b.yaml']\n")
    _write(tmp_path / 'b.yaml', "BASE: ['c.yaml']\n")
    _write(tmp_path / 'c.yaml', "BASE: ['a.yaml']\n")
    with pytest.raises(ConfigError, match=r'BASE cycle: .*a\.yaml -> .*b\.yaml -> .*c\.yaml -> .*a\.yaml'):
        get_config(str(tmp_path / 'a.yaml'))
    from engine.config import yaml_model_type
    with pytest.raises(ConfigError, match='BASE cycle'):
        yaml_model_type(str(tmp_path / 'a.yaml'))
    # a shared base reached twice (a diamond) is not a cycle
    _write(tmp_path / 'root.yaml', 'MODEL:\n  EMBED_DIM: 8\n')
    _write(tmp_path / 'l.yaml', "BASE: ['root.yaml']\n")
    _write(tmp_path / 'r.yaml', "BASE: ['root.yaml']\n")
    assert get_config(_write(tmp_path / 'd.yaml', "BASE: ['l.yaml', 'r.yaml']\n")).MODEL.EMBED_DIM == 8


def test_yaml_that_is_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match=r'list\.yaml: expected a mapping of config keys'):
        get_config(_write(tmp_path / 'list.yaml', '- 1\n- 2\n'))


# --------------------------------------------------------------------------- families
FAMILY_CASES = [
    # (family, -opts, message): each family's own rule, from its model file
    ('ViT', ['DATA.IMAGE_SIZE', '30', 'MODEL.PATCH_SIZE', '4'],
     r'DATA\.IMAGE_SIZE = 30 \(-opts\), MODEL\.PATCH_SIZE = 4 \(-opts\).*multiple of MODEL\.PATCH_SIZE'),
    ('ViT', ['MODEL.RESNET_LAYERS', '[3, 4, 9]', 'MODEL.PATCH_SIZE', '8', 'DATA.IMAGE_SIZE', '224'],
     r'hybrid ViT.*PATCH_SIZE a multiple of the ResNet stride 16'),
    ('ViT', ['MODEL.RESNET_LAYERS', '[3, 4]'], r'MODEL\.RESNET_LAYERS = \[3, 4\] .*3 values'),
    ('ViT', ['MODEL.EMBED_DIM', '100'], r'MODEL\.EMBED_DIM = 100 .*multiple of MODEL\.NUM_HEADS'),
    ('ViT', ['MODEL.POS_EMBED_RESIZE', 'nearest'], r"POS_EMBED_RESIZE = 'nearest' .*'zoom_linear', 'bicubic'"),
    ('PiT', ['DATA.IMAGE_SIZE', '225'], r'DATA\.IMAGE_SIZE = 225 .*MODEL\.STRIDE = 8 .*multiple of MODEL\.STRIDE'),
    ('PiT', ['DATA.IMAGE_SIZE', '8'], r'DATA\.IMAGE_SIZE must be at least MODEL\.PATCH_SIZE'),
    ('PiT', ['MODEL.DEPTH', '[2, 6]'], r'one entry per stage'),
    ('PerViT', ['DATA.IMAGE_SIZE', '16'], r'DATA\.IMAGE_SIZE = 16 .*at least 17'),
    ('PerViT', ['MODEL.STEM_DIMS', '[48, 64, 128]'], r'MODEL\.STEM_DIMS = \[48, 64, 128\] .*a list of 4 values'),
    ('PerViT', ['MODEL.STEM_DIMS', '[48, 64, 96, 120]'], r'MODEL\.STEM_DIMS\[-1\]'),
    ('PerViT', ['MODEL.ATTENTION_DROPOUT', '0.1'],
     r'MODEL\.ATTENTION_DROPOUT = 0\.1 .*PerViT has no attention dropout'),
    ('SPViT', ['DATA.IMAGE_SIZE', '200'], r'DATA\.IMAGE_SIZE = 200 .*multiple of MODEL\.PATCH_SIZE'),
    ('SPViT', ['MODEL.PATCH_SIZE', '15', 'DATA.IMAGE_SIZE', '225'], r'MODEL\.PATCH_SIZE = 15 .*multiple of 2'),
    ('SPViT', ['MODEL.LOCAL_UP_TO_LAYER', '16'], r'LOCAL_UP_TO_LAYER = 16 .*MODEL\.DEPTH = 16 .*below'),
    ('SPViT', ['MODEL.QK_SCALE', '0.1'], r'MODEL\.QK_SCALE = 0\.1 .*not supported'),
    ('SPViT', ['MODEL.PATCH_EMBED', '42'], r"MODEL\.PATCH_EMBED = '42' .*'4_2', '4_2_128'"),
    ('SPViT', ['TRAIN.TOKEN_LABEL.LABEL_REGION', 'center'], r"LABEL_REGION = 'center' .*'center_square'"),
    ('VVT', ['MODEL.DEPTHS', '[2, 2, 2]'], r'one entry per stage'),
    ('VVT', ['MODEL.NUM_HEADS', '[1, 3, 5, 8]'], r'split into MODEL\.NUM_HEADS heads'),
    ('VVT', ['MODEL.SE_RATIO', '0'], r'MODEL\.SE_RATIO = 0 .*>= 1'),
    ('RegNet', ['MODEL.W0', '100'], r'MODEL\.W0 = 100 .*multiple of 8'),
    ('RegNet', ['MODEL.WM', '1.0'], r'MODEL\.WM = 1\.0 .*> 1'),
]


@pytest.mark.parametrize('family,opts,message', FAMILY_CASES,
                         ids=[f'{f}:{" ".join(o)}' for f, o, _ in FAMILY_CASES])
def test_family_rules(family, opts, message):
    with pytest.raises(ConfigError, match=message):
        load_family(family).get_config(opts=opts)


def test_edge_pixels_are_ignored_only_when_the_config_says_so():
    vit = load_family('ViT').get_config
    assert vit(opts=['MODEL.PATCH_SIZE', '14', 'DATA.IMAGE_SIZE', '384',
                     'MODEL.IGNORE_EDGE_PIXELS', 'True']).DATA.IMAGE_SIZE == 384
    with pytest.raises(ConfigError, match='IGNORE_EDGE_PIXELS'):
        vit(opts=['MODEL.PATCH_SIZE', '14', 'DATA.IMAGE_SIZE', '384'])
    # the hybrid's ResNet map must still match the position embedding
    with pytest.raises(ConfigError, match='ResNet stride 16'):
        vit(opts=['MODEL.RESNET_LAYERS', '[3, 4, 9]', 'DATA.IMAGE_SIZE', '200', 'MODEL.IGNORE_EDGE_PIXELS', 'True'])


def test_model_type_of_another_family_is_refused(tmp_path):
    cfg = _write(tmp_path / 'pit.yaml', 'MODEL:\n  TYPE: PiT\n')
    with pytest.raises(ConfigError, match=r"pit\.yaml, line 2: MODEL\.TYPE = 'PiT', but this program builds "
                                          r"'ViT' models"):
        load_family('ViT').get_config(cfg)
