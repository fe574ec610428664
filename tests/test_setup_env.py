"""tools/setup_env.sh, the set-up behind run_demo.sh and run_tests.sh, on a copy of the
repository whose Python is a stand-in that records every pip call (nothing is installed).

- a fresh machine gets a venv, the CPU Paddle and the requirements;
- a second run does nothing; a changed requirement file re-installs;
- PADDLE_PACKAGE / PADDLE_INDEX_URL choose Paddle's GPU wheel from Paddle's index and
  uninstall the CPU wheel first (both install the same `paddle` module); later runs
  without the variables keep that choice;
- requirements.txt no longer names a Paddle package, so pip cannot put the CPU wheel on
  top of a GPU one.
"""
import os
import re
import shutil
import stat
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# records its arguments; `-m venv DIR` makes DIR/bin/python (this same script);
# `-m pip show NAME` succeeds when NAME is a line of $FAKE_INSTALLED
FAKE_PYTHON = r'''#!/usr/bin/env bash
echo "$*" >> "$FAKE_LOG"
if [ "$1 $2" = "-m venv" ]; then
    mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && chmod +x "$3/bin/python"
elif [ "$1 $2 $3" = "-m pip show" ]; then
    grep -qx "$4" "$FAKE_INSTALLED" 2>/dev/null
fi
'''


def _copy(tmp_path):
    root = tmp_path / 'repo'
    (root / 'tools').mkdir(parents=True)
    shutil.copy(os.path.join(REPO, 'tools', 'setup_env.sh'), root / 'tools')
    for name in ('requirements.txt', 'requirements-dev.txt', 'requirements-onnx.txt'):
        shutil.copy(os.path.join(REPO, name), root)
    python = tmp_path / 'python3'
    python.write_text(FAKE_PYTHON)
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    return root, python


def _run(root, python, tmp_path, **env):
    log = tmp_path / 'calls.log'
    log.write_text('')
    full = {k: v for k, v in os.environ.items() if not k.startswith('PADDLE_')}
    full.update(PYTHON=str(python), FAKE_LOG=str(log), FAKE_INSTALLED=str(tmp_path / 'installed'), **env)
    done = subprocess.run(['bash', str(root / 'tools' / 'setup_env.sh')], env=full, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return log.read_text().splitlines(), done.stdout


def test_fresh_machine_then_nothing_then_changed_requirements(tmp_path):
    root, python = _copy(tmp_path)
    calls, _ = _run(root, python, tmp_path)
    assert calls[0] == '-m venv .venv'
    assert '-m pip install -q paddlepaddle>=3.0.0,<3.4' in calls
    assert calls[-2:] == ['-m pip install -q -r requirements-dev.txt',
                          '-m pip install -q --no-deps -e .']   # then this repository, editable
    assert not any('uninstall' in c for c in calls)
    assert _run(root, python, tmp_path)[0] == []          # up to date: no pip call at all
    with open(root / 'requirements.txt', 'a') as f:
        f.write('tqdm\n')
    calls, _ = _run(root, python, tmp_path)
    assert '-m pip install -q -r requirements-dev.txt' in calls and '-m venv .venv' not in calls


def test_gpu_wheel_from_paddles_index_replaces_the_cpu_wheel(tmp_path):
    root, python = _copy(tmp_path)
    _run(root, python, tmp_path)
    (tmp_path / 'installed').write_text('paddlepaddle\n')
    index = 'https://www.paddlepaddle.org.cn/packages/stable/cu126/'
    calls, out = _run(root, python, tmp_path, PADDLE_PACKAGE='paddlepaddle-gpu==3.0.0', PADDLE_INDEX_URL=index)
    uninstall = calls.index('-m pip uninstall -q -y paddlepaddle')
    install = calls.index(f'-m pip install -q paddlepaddle-gpu==3.0.0 --extra-index-url {index}')
    assert uninstall < install < calls.index('-m pip install -q -r requirements-dev.txt')
    assert 'uninstalling paddlepaddle' in out
    assert _run(root, python, tmp_path, PADDLE_PACKAGE='paddlepaddle-gpu==3.0.0', PADDLE_INDEX_URL=index)[0] == []
    # later runs without the variables (bash run_demo.sh) keep the GPU wheel
    (tmp_path / 'installed').write_text('paddlepaddle-gpu\n')
    assert _run(root, python, tmp_path)[0] == []
    with open(root / 'requirements.txt', 'a') as f:
        f.write('tqdm\n')
    calls, _ = _run(root, python, tmp_path)
    assert f'-m pip install -q paddlepaddle-gpu==3.0.0 --extra-index-url {index}' in calls
    assert not any('uninstall' in c for c in calls)
    # and back to the CPU wheel when asked: the GPU wheel goes
    calls, _ = _run(root, python, tmp_path, PADDLE_PACKAGE='paddlepaddle>=3.0.0,<3.4')
    assert '-m pip uninstall -q -y paddlepaddle-gpu' in calls and '-m pip install -q paddlepaddle>=3.0.0,<3.4' in calls
    assert not any('extra-index-url' in c for c in calls)


def test_requirements_name_no_paddle_package():
    for name in ('requirements.txt', 'requirements-dev.txt', 'requirements-onnx.txt'):
        with open(os.path.join(REPO, name)) as f:
            specs = [line.split('#')[0].strip() for line in f]
        assert not [s for s in specs if re.match(r'paddlepaddle', s, re.I)], name
