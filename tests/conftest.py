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

import engine  # noqa: E402,F401  (sets the environment before paddle is imported)


# ---- the fast lane: `bash run_tests.sh -m "not slow"` must stay under a minute on 2 cores --------
# Tests marked `slow` (training runs, subprocesses, full-size models, per-variant sweeps) still run
# in CI, which runs everything.  Tests are added all the time: in a run that leaves out the slow
# ones, those that took longer than this are listed at the end, to be marked or made cheaper.
FAST_LANE_LIMIT = 2.0   # seconds per test: setup (including a module fixture it is first to use) + call + teardown
_seconds = {}


def pytest_runtest_logreport(report):
    _seconds[report.nodeid] = _seconds.get(report.nodeid, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter, config):
    if 'not slow' not in (config.option.markexpr or ''):
        return
    over = sorted(((s, nodeid) for nodeid, s in _seconds.items() if s > FAST_LANE_LIMIT), reverse=True)
    terminalreporter.section('fast lane')
    terminalreporter.write_line(f'{len(_seconds)} tests, {sum(_seconds.values()):.1f} s in all')
    if over:
        terminalreporter.write_line(f'{len(over)} over {FAST_LANE_LIMIT:g} s: mark them @pytest.mark.slow '
                                    f'(see pytest.ini) or make them cheaper')
        for seconds, nodeid in over:
            terminalreporter.write_line(f'{seconds:7.2f}s  {nodeid}')
