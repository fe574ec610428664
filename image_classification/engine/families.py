"""Where each model family lives, so shared tools can build any model from a config.

A family is a folder of `image_classification/` holding `config.py` (with
`get_config`) and a model file (with a `build_<name>(config)` function).  Every
folder has a module called `config`, so they are imported here by file path
under unique names instead of through `sys.path`.
"""
import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import Callable

from .config import ConfigError, yaml_model_type

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# MODEL.TYPE -> (folder, model module, builder)
FAMILIES = {
    'ViT': ('ViT', 'vit', 'build_vit'),
    'PiT': ('PiT', 'pit', 'build_pit'),
    'PerViT': ('PerViT', 'pervit', 'build_pervit'),
    'SPViT': ('SPViT', 'spvit', 'build_spvit'),
    'VVT': ('VVT', 'vvt', 'build_vvt'),
    'RegNet': ('RegNet', 'regnet', 'build_regnet'),
}


@dataclass(frozen=True)
class Family:
    name: str
    folder: str
    get_config: Callable
    build_model: Callable


def _import_file(path, module_name):
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def load_family(model_type):
    """The `Family` registered for MODEL.TYPE `model_type`."""
    if model_type not in FAMILIES:
        raise ConfigError(f'unknown MODEL.TYPE {model_type!r}; known: {sorted(FAMILIES)}')
    folder, module, builder = FAMILIES[model_type]
    folder = os.path.join(ROOT, folder)
    tag = model_type.lower()
    config_module = _import_file(os.path.join(folder, 'config.py'), f'_family_{tag}_config')
    model_module = _import_file(os.path.join(folder, f'{module}.py'), f'_family_{tag}_{module}')
    return Family(model_type, folder, config_module.get_config, getattr(model_module, builder))


def family_for_config(cfg_file):
    """The `Family` a YAML config belongs to, from its (inherited) MODEL.TYPE."""
    model_type = yaml_model_type(cfg_file)
    if not model_type:
        raise ConfigError(f'{cfg_file}: MODEL.TYPE is not set (nor in its BASE files)')
    return load_family(model_type)


def build_from_config(cfg_file, opts=None):
    """(config, model) for a YAML config of any family."""
    family = family_for_config(cfg_file)
    config = family.get_config(cfg_file, opts=opts)
    return config, family.build_model(config)
