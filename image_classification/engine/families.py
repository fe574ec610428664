"""The one registry of model families: everything else reads it.

A family is a folder of `image_classification/` holding `config.py` (its
defaults and rules, `get_config`), a model file with a `build_<name>(config)`
function, `configs/*.yaml` (its variants: each file name is a model name for
`paddlevit.list_models` / `create_model`), optionally a `hooks.py` with a
`FamilyHooks` subclass for the launcher, and a weight-port key map
`port_weights/<porter>.py`.  `FAMILIES` below is the only table naming them:
the `main_*.py` entry points, `port_weights/port.py`, the tools and the
`paddlevit` API all look families up here, so adding a family is one folder,
one key map and one line in this table.

Every folder has a module called `config`, so family modules are imported by
file path under unique names (`_family_<type>_<module>`) instead of through
`sys.path`.
"""
import fnmatch
import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

from .config import ConfigError, yaml_model_type


def _families_root():
    """The folder holding the family folders: `image_classification/` in a clone or an
    editable install, `site-packages/paddlevit/` in a regular install (the family folders
    are package data of `paddlevit`, which maps onto `image_classification/`)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isdir(os.path.join(here, 'ViT')):
        return here
    spec = importlib.util.find_spec('paddlevit')
    if spec is not None and spec.submodule_search_locations:
        return list(spec.submodule_search_locations)[0]
    return here


ROOT = _families_root()


class FamilySpec(NamedTuple):
    """One registry entry.  Plain 3-tuples (folder, module, builder) are accepted too."""
    folder: str                    # under ROOT (or an absolute path)
    module: str                    # model file, without .py
    builder: str                   # build function in it: config -> paddle.nn.Layer
    porter: Optional[str] = None   # port_weights.<porter>: official key map (`convert`)
    hooks: Optional[str] = None    # 'module.Class' in the folder: the launcher's FamilyHooks


# MODEL.TYPE -> where the family lives
FAMILIES = {
    'ViT': FamilySpec('ViT', 'vit', 'build_vit', porter='vit'),
    'PiT': FamilySpec('PiT', 'pit', 'build_pit', porter='pit'),
    'PerViT': FamilySpec('PerViT', 'pervit', 'build_pervit', porter='pervit', hooks='hooks.PerViTHooks'),
    'SPViT': FamilySpec('SPViT', 'spvit', 'build_spvit', porter='spvit', hooks='hooks.SPViTHooks'),
    'VVT': FamilySpec('VVT', 'vvt', 'build_vvt', porter='vvt'),
    'RegNet': FamilySpec('RegNet', 'regnet', 'build_regnet', porter='regnet'),
}


@dataclass(frozen=True)
class Family:
    name: str
    folder: str
    get_config: Callable
    build_model: Callable
    porter: Optional[str] = None
    hooks_class: Optional[type] = None

    def make_hooks(self):
        """A fresh hooks instance for `engine.launcher.main` (None: the engine's defaults)."""
        return self.hooks_class() if self.hooks_class else None

    def run(self, distributed, argv=None):
        """What every `main_single_gpu.py` / `main_multi_gpu.py` does: the launcher with this
        family's config, builder and hooks.  The scripts load the family at import, so a process
        spawned by `paddle.distributed.spawn` (which re-imports the script) can unpickle them."""
        from .launcher import main
        return main(self.get_config, self.build_model, distributed=distributed, hooks=self.make_hooks(),
                    argv=argv)

    def variants(self):
        """{model name: config file} from `configs/*.yaml`, sorted by name."""
        folder = os.path.join(self.folder, 'configs')
        names = sorted(f for f in os.listdir(folder) if f.endswith('.yaml')) if os.path.isdir(folder) else []
        return {f[:-len('.yaml')]: os.path.join(folder, f) for f in names}


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
    spec = FAMILIES[model_type]
    folder, module, builder = spec[:3]
    porter = spec[3] if len(spec) > 3 else None
    hooks = spec[4] if len(spec) > 4 else None
    folder = os.path.join(ROOT, folder)
    tag = model_type.lower()
    config_module = _import_file(os.path.join(folder, 'config.py'), f'_family_{tag}_config')
    model_module = _import_file(os.path.join(folder, f'{module}.py'), f'_family_{tag}_{module}')
    hooks_class = None
    if hooks:
        hooks_module, hooks_name = hooks.rsplit('.', 1)
        hooks_class = getattr(_import_file(os.path.join(folder, f'{hooks_module}.py'),
                                           f'_family_{tag}_{hooks_module}'), hooks_name)
    return Family(model_type, folder, config_module.get_config, getattr(model_module, builder),
                  porter, hooks_class)


def all_variants(pattern='*'):
    """{model name: (MODEL.TYPE, config file)} of every family, names matching `pattern`
    (fnmatch, case-insensitive); a name used by two families is an error."""
    found = {}
    for model_type in FAMILIES:
        for name, path in load_family(model_type).variants().items():
            if name in found:
                raise ConfigError(f'model name {name!r} is a config of both {found[name][0]} and {model_type}')
            found[name] = (model_type, path)
    return {n: found[n] for n in sorted(found) if fnmatch.fnmatch(n.lower(), pattern.lower())}


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

