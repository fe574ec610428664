"""Test setup: import paths, quiet Paddle, and helpers to build any family."""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, 'tests', 'fixtures')
for _path in (REPO, os.path.join(REPO, 'image_classification')):
    if _path not in sys.path:
        sys.path.insert(0, _path)
# the scripts the tests run (main_*.py, tools/, port_weights/) import `engine` and `port_weights`
# as an installed package; without an install (the shared test venv) the same folders are given
# to them through PYTHONPATH
os.environ['PYTHONPATH'] = os.pathsep.join(
    [REPO, os.path.join(REPO, 'image_classification')]
    + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p])

import engine  # noqa: E402
engine.prepare_process()   # before paddle is imported, as the entry points do
from engine.cpu import settings as _cpu_settings  # noqa: E402
_cpu_settings.configure()   # the settings of a CPU run, as the launcher applies them
