"""Test setup: import paths, quiet Paddle, and helpers to build any family."""
import atexit
import importlib.util
import os
import shutil
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, 'tests', 'fixtures')
TINY_DIR = os.path.join(FIXTURES, 'tiny_family')          # a test-only family with every layer kind
TINY_CFG = os.path.join(TINY_DIR, 'tinynet_32.yaml')
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

import engine  # noqa: E402
engine.prepare_process()   # before paddle is imported, as the entry points do
from engine.cpu import settings as _cpu_settings  # noqa: E402
_cpu_settings.configure()   # the settings of a CPU run, as the launcher applies them


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


def python_traceback_free(log):
    """A rank's log (text) has no Python traceback.  A rank that `paddle.distributed.launch`
    terminated while it was still importing paddle (the other rank failed first; after the
    import `engine.prepare_process` lets SIGTERM end it silently) ends with Paddle's own signal
    report, a "C++ Traceback" block naming SIGTERM: that is the launcher's doing, not an error."""
    lines = [line for line in log.splitlines() if line.strip()]
    if any(line.startswith('Traceback (most recent call last)') for line in lines):
        return False
    return 'C++ Traceback' not in log or 'SIGTERM' in lines[-1]


def kernel_ops_in_graph(folder):
    """The fused CPU kernels (the ops csrc/fused_cpu_ops.cc builds) that the graph exported into
    `folder` calls, read from PIR's JSON, where an op is written `"#":"<dialect id>.<name>"`."""
    import re
    with open(os.path.join(REPO, 'image_classification', 'engine', 'cpu', 'csrc', 'fused_cpu_ops.cc'),
              encoding='utf-8') as f:
        ops = set(re.findall(r'^PD_BUILD_OP\((\w+)\)', f.read(), re.M))
    with open(os.path.join(folder, 'inference.json'), encoding='utf-8') as f:
        called = set(re.findall(r'"#":"\d+\.(\w+)"', f.read()))
    return ops & called


@pytest.fixture(scope='module')
def tiny_family():
    """The test-only family TinyNet (tests/fixtures/tiny_family) registered while a module runs."""
    from engine import families
    families.FAMILIES['TinyNet'] = (TINY_DIR, 'tinynet', 'build_tinynet')
    yield
    del families.FAMILIES['TinyNet']


@pytest.fixture(scope='module')
def tiny_trained(tiny_family, tmp_path_factory):
    """(config, TinyNet in eval mode, its .pdparams path) with non-trivial BatchNorm statistics."""
    import paddle
    from engine.families import build_from_config
    paddle.seed(1)
    config, model = build_from_config(TINY_CFG)
    model.bn._mean.set_value(paddle.uniform([16], min=-0.5, max=0.5))
    model.bn._variance.set_value(paddle.uniform([16], min=0.5, max=2.0))
    model.eval()
    path = str(tmp_path_factory.mktemp('weights') / 'tiny.pdparams')
    paddle.save(model.state_dict(), path)
    return config, model, path


@pytest.fixture
def predict_onednn(monkeypatch):
    """A function of `tools/predict.py` arguments: whether predict.py would open the model with
    oneDNN (it is stopped right there, `open_model` replaced)."""
    from tools import predict

    class Chosen(Exception):
        pass

    def open_model(model_dir, backend, device, threads, onednn, log):
        raise Chosen(onednn)
    monkeypatch.setattr(predict, 'open_model', open_model)

    def onednn(argv):
        with pytest.raises(Chosen) as info:
            predict.main(argv)
        return info.value.args[0]
    return onednn
