"""Test setup: import paths, quiet Paddle, and helpers to build any family."""
import atexit
import importlib.util
import os
import shutil
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, 'tests', 'fixtures')
for _path in (REPO, os.path.join(REPO, 'image_classification')):
    if _path not in sys.path:
        sys.path.insert(0, _path)
# the scripts the tests run (main_*.py, tools/, port_weights/) import `engine`, `port_weights` and
# `paddlevit` as an installed package; without an install (the shared test venv) the same folders
# are given to them through PYTHONPATH, `paddlevit` (= image_classification/, pyproject.toml's
# package-dir) through a symlink in a temporary folder
_ALIAS = []
if importlib.util.find_spec('paddlevit') is None:
    _ALIAS.append(tempfile.mkdtemp(prefix='paddlevit_alias_'))
    os.symlink(os.path.join(REPO, 'image_classification'), os.path.join(_ALIAS[0], 'paddlevit'))
    sys.path.append(_ALIAS[0])
    atexit.register(shutil.rmtree, _ALIAS[0], ignore_errors=True)
os.environ['PYTHONPATH'] = os.pathsep.join(
    [REPO, os.path.join(REPO, 'image_classification')] + _ALIAS
    + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p])

import engine  # noqa: E402,F401  (sets the environment before paddle is imported)
