"""Config assembly: defaults < family < YAML (with BASE) < flags < -opts, strict keys."""
import argparse

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
