"""Importing the engine, `paddlevit` or any model changes nothing in the process (issue #20):
the CPU settings apply when a CPU run starts (here: `paddlevit.create_model` on the CPU).

Each check runs in a fresh Python, which compares the process before and after the imports:
environment, Paddle's flags, the OpenMP thread count, calls into the C library (mallopt), and
which modules got imported.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO

IC = os.path.join(REPO, 'image_classification')

_SCRIPT = textwrap.dedent('''
    import json, os, sys
    sys.path[:0] = {paths!r}
    report = {{}}
    environment = dict(os.environ)

    import engine, paddlevit, engine.cpu, engine.cpu.settings
    report['without paddle'] = {{'paddle': 'paddle' in sys.modules, 'fcntl': 'fcntl' in sys.modules,
                                 'ctypes': 'ctypes' in sys.modules, 'environment': dict(os.environ) == environment}}

    import ctypes
    import paddle
    libc_calls = []
    real_cdll = ctypes.CDLL
    ctypes.CDLL = lambda name, *a, **k: libc_calls.append(name) or real_cdll(name, *a, **k)
    omp = real_cdll(os.path.join(os.path.dirname(paddle.__file__), 'libs', 'libiomp5.so'))
    FLAGS = ['FLAGS_use_stride_kernel']

    def state():
        return {{'environment': dict(os.environ), 'flags': paddle.get_flags(FLAGS),
                'threads': omp.omp_get_max_threads(), 'libc calls': list(libc_calls),
                'cpu modules': sorted(m for m in sys.modules if m.startswith(('engine.cpu.kernels', 'engine.cpu.build')))}}

    before = state()
    from engine.families import FAMILIES, load_family
    import engine.layers, engine.attention_dispatch, engine.launcher
    for name in FAMILIES:
        load_family(name)
    report['models imported'] = [m for m in sys.modules if m.startswith('_family_')]
    report['after imports'] = {{k: v == before[k] for k, v in state().items()}}
    paddlevit.create_model('vit_demo_digits_32')
    after_model = state()
    report['after create_model'] = {{k: v == before[k] for k, v in after_model.items()}}
    report['threads'] = [before['threads'], after_model['threads']]
    print(json.dumps(report))
''')


@pytest.mark.slow
def test_imports_change_nothing_and_create_model_configures_the_cpu():
    # `paddlevit` comes from PYTHONPATH, installed or as conftest's alias of image_classification/
    env = {k: v for k, v in os.environ.items()
           if k not in ('OMP_NUM_THREADS', 'GLOG_minloglevel', 'MKL_DEBUG_CPU_TYPE') and not k.startswith('MALLOC_')}
    done = subprocess.run([sys.executable, '-c', _SCRIPT.format(paths=[REPO, IC])], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report['without paddle'] == {'paddle': False, 'fcntl': False, 'ctypes': False, 'environment': True}
    assert len(report['models imported']) >= 2 * 6          # a config and a model module per family
    assert report['after imports'] == dict.fromkeys(['environment', 'flags', 'threads', 'libc calls',
                                                     'cpu modules'], True)
    # the checks see the settings a CPU run applies (this machine has no GPU for Paddle)
    assert report['after create_model']['flags'] is False
    assert report['after create_model']['libc calls'] is False      # mallopt, through ctypes
    assert report['after create_model']['environment'] is True      # settings, not variables
    if os.cpu_count() > 1:
        assert report['threads'] == [1, len(os.sched_getaffinity(0))], report['threads']
