"""tools/benchmark.py --torch-src: ours against the official PyTorch model.

torch is no requirement of this project: the adapter table, the module loading from a checkout,
the ratios and the busy-machine refusal are tested without it, on stand-in "official
repositories" written here and fake timings; the one test that times a PyTorch model is
skipped, with a message, where torch is not installed.
"""
import argparse
import importlib.util
import json
import os
import sys

import pytest

from tools.benchmarking import compare, official

ARGS = dict(threads=2, rounds=2, max_load=0.25, torch_python=sys.executable, torch_src='/nowhere',
            timeout=60, max_memory_gb=None)


def job(mode):
    return {'cfg': 'pit_s', 'image_size': None, 'mode': mode, 'batch_size': 32, 'warmup': 1,
            'iters': 3, 'threads': 2, 'inference': False}


def fake_runs(speeds):
    """A stand-in for isolation.run_isolated: img/s from `speeds[(side, mode)]`, one per call in turn."""
    calls = {key: iter(values) for key, values in speeds.items()}

    def run(job, timeout, max_bytes, command=None, env=None):
        side = 'torch' if command else 'ours'
        row = {'model': 'pit_s', 'image size': 224, 'batch': 32, 'drop path': 0.1, 'mode': job['mode'], 'peak MB': 100.0,
               'img/s': next(calls[side, job['mode']])}
        if side == 'torch':
            row.update(repository='naver-ai/pit', torch='2.13.0')
            assert command[1:] == ['-m', 'tools.benchmarking.official'] and job['torch_src'] == '/nowhere'
            assert (job['batch_size'], job['warmup'], job['iters'], job['threads']) == (32, 1, 3, 2)
            assert job['drop path'] == 0.1                # ours, for the official constructor
        return row
    return run


SPEEDS = {('ours', 'eval'): [12.0, 10.0], ('torch', 'eval'): [10.0, 10.0],
          ('ours', 'train'): [4.0, 4.5], ('torch', 'train'): [5.0, 5.0]}


def test_ratios_per_round_and_their_range(monkeypatch, capsys):
    monkeypatch.setattr(compare.isolation, 'run_isolated', fake_runs(SPEEDS))
    loads = iter([0.1, 0.3])
    status = compare.compare([job('eval'), job('train')], argparse.Namespace(**ARGS), 2,
                             load=lambda: next(loads))
    out = capsys.readouterr().out
    assert status == 0
    assert '| pit_s | eval | 1 | 12.00 | 10.00 | 1.20 |' in out
    assert '| pit_s | train | 2 | 4.50 | 5.00 | 0.90 |' in out
    assert 'ours / PyTorch, eval: 1.00-1.20 over 2 round(s)' in out
    assert 'ours / PyTorch, train: 0.80-0.90 over 2 round(s)' in out
    assert 'cores busy with other work: 0.10 before, 0.30 after' in out and out.startswith('CPU: ')


@pytest.mark.parametrize('before, after', [(0.9, 0.1), (0.1, 0.9)])
def test_busy_machine_gets_no_ratio(monkeypatch, capsys, before, after):
    monkeypatch.setattr(compare.isolation, 'run_isolated', fake_runs(SPEEDS))
    loads = iter([before, after])
    status = compare.compare([job('eval'), job('train')], argparse.Namespace(**ARGS), 2,
                             load=lambda: next(loads))
    out = capsys.readouterr().out
    assert status == compare.BUSY_EXIT
    assert 'ours / PyTorch,' not in out and '1.20' not in out
    assert '| pit_s | eval | 1 | 12.00 | 10.00 | not reported |' in out
    assert 'no ratio reported: the machine was busy' in out and '--max_load 0.25 per core = 0.50' in out
    # a user who accepts the load gets the ratios
    monkeypatch.setattr(compare.isolation, 'run_isolated', fake_runs(SPEEDS))
    loads = iter([before, after])
    accepting = argparse.Namespace(**{**ARGS, 'max_load': float('inf')})
    assert compare.compare([job('eval')], accepting, 2, load=lambda: next(loads)) == 0


def test_busy_threshold_is_per_core():
    assert compare.busy_reason(0.5, 0.4, cores=2, max_load=0.25) is None
    assert compare.busy_reason(0.6, 0.0, cores=2, max_load=0.25) is not None
    assert compare.busy_reason(0.0, 0.6, cores=2, max_load=0.25) is not None
    assert compare.busy_reason(0.6, 0.0, cores=4, max_load=0.25) is None


def test_busy_cores_is_the_share_not_idle_over_the_window(tmp_path, monkeypatch):
    """Two reads of /proc/stat's cpu line: busy = 1 - (idle + iowait) / total of the change, x cores."""
    stat = tmp_path / 'stat'
    lines = iter(['cpu  100 0 100 700 100 0 0 0 0 0\n',          # total 1000, idle + iowait 800
                  'cpu  250 0 150 1000 100 0 0 0 0 0\n'])         # +500, of which +300 idle
    monkeypatch.setattr(compare.time, 'sleep', lambda s: stat.write_text(next(lines)))
    stat.write_text(next(lines))
    monkeypatch.setattr(compare.os, 'cpu_count', lambda: 2)
    assert compare.busy_cores(1.0, str(stat)) == pytest.approx(0.8)    # (1 - 300/500) x 2 cores
    assert compare.busy_cores(1.0, str(tmp_path / 'absent')) == compare.os.getloadavg()[0]


def test_cpu_model_and_vector_extensions(tmp_path):
    info = tmp_path / 'cpuinfo'
    info.write_text('processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse4_2 avx avx2 fma '
                    'avx512f avx512bw\n\nprocessor\t: 1\nmodel name\t: Test CPU 9000\nflags\t\t: fpu\n')
    assert compare.cpu_description(str(info)) == \
        'Test CPU 9000 (vector extensions: sse4_2 avx avx2 fma avx512f avx512bw)'


# ---- building the official model from a checkout (official.py) -----------------------------------

@pytest.fixture
def checkout(tmp_path):
    """A stand-in naver-ai/pit checkout: pit.py whose pit_s records how it was called, importing a
    helper module of its own checkout as the official file imports its neighbours."""
    (tmp_path / 'pit_helper.py').write_text('WIDTH = 48\n')
    (tmp_path / 'pit.py').write_text(
        'import pit_helper\n'
        'def pit_s(pretrained, **kwargs):\n'
        '    return ("pit_s", pretrained, pit_helper.WIDTH, kwargs)\n')
    yield tmp_path
    for name in ('pit', 'pit_helper'):
        sys.modules.pop(name, None)
    sys.path[:] = [p for p in sys.path if p != str(tmp_path)]


def test_official_model_built_from_the_checkout(checkout):
    model, repository = official.official_model('pit_s', str(checkout), 224, drop_path=0.1)
    assert model == ('pit_s', False, 48, {'drop_path_rate': 0.1}) and repository == 'naver-ai/pit'


def test_unknown_model_and_wrong_checkout_are_named(checkout, tmp_path_factory):
    with pytest.raises(official.OfficialModelError, match='no official PyTorch model is known for resnet50'):
        official.official_model('resnet50', str(checkout), 224)
    empty = tmp_path_factory.mktemp('empty')
    with pytest.raises(official.OfficialModelError, match=r'has no pit.py \(a checkout of github.com/naver-ai/pit\)'):
        official.official_model('pit_s', str(empty), 224)
    with pytest.raises(official.OfficialModelError, match='models/modeling.py'):   # ViT's second adapter
        official.official_model('vit_small_patch16_224', str(empty), 224)


def test_a_module_found_elsewhere_is_refused(checkout, tmp_path_factory):
    other = tmp_path_factory.mktemp('other')
    (other / 'pit.py').write_text('def pit_s(pretrained): return "not the checkout\'s"\n')
    sys.path.insert(0, str(other))
    try:
        __import__('pit')                     # an installed `pit` already imported wins over the checkout
        with pytest.raises(official.OfficialModelError, match='found .*other.*/pit.py instead'):
            official.official_model('pit_s', str(checkout), 224)
    finally:
        sys.path.remove(str(other))


def test_spvit_checkout_gets_back_the_numpy_alias_its_mixtoken_calls(tmp_path):
    """ZhouYuxuanYX/SP-ViT's training forward calls np.int (removed in NumPy 1.24)."""
    import numpy as np
    (tmp_path / 'tlt' / 'models').mkdir(parents=True)
    (tmp_path / 'tlt' / 'models' / 'spvit.py').write_text(
        'import numpy as np\n'
        'def lvvit_s(**kwargs):\n'
        '    return np.int(7.9), kwargs\n')
    had_alias = 'int' in vars(np)
    try:
        model, repository = official.official_model('spvit_s_224', str(tmp_path), 224, drop_path=0.1)
    finally:
        if not had_alias:
            vars(np).pop('int', None)
        for name in ('tlt.models.spvit', 'tlt.models', 'tlt'):
            sys.modules.pop(name, None)
        sys.path[:] = [p for p in sys.path if p != str(tmp_path)]
    assert model[0] == 7 and model[1]['drop_path_rate'] == 0.1 and repository == 'ZhouYuxuanYX/SP-ViT'


@pytest.mark.slow           # resolves every config of the registry
def test_every_adapter_names_our_models():
    """The table is keyed by MODEL.NAME, which a measurement's row carries."""
    import paddlevit
    from engine.families import FAMILIES
    ours = {paddlevit.model_config(name).MODEL.NAME for name in paddlevit.list_models()}
    for family, adapters in official.ADAPTERS.items():
        assert family in FAMILIES
        for adapter in adapters:
            assert set(adapter.names) <= ours, (family, set(adapter.names) - ours)


@pytest.mark.skipif(importlib.util.find_spec('torch') is None,
                    reason='torch is not installed (it is no requirement of this project): the PyTorch side '
                           'of tools/benchmark.py --torch-src is not timed here')
def test_official_side_times_a_torch_model(tmp_path):
    (tmp_path / 'pit.py').write_text(
        'import torch\n'
        'def pit_s(pretrained, **kwargs):\n'
        '    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 8, 8), torch.nn.Flatten(), torch.nn.LazyLinear(1000))\n')
    try:
        for mode in ('eval', 'train'):
            row = official.measure_official({'model': 'pit_s', 'image size': 32, 'batch_size': 2,
                                             'warmup': 1, 'iters': 2, 'threads': 1, 'mode': mode, 'drop path': 0.0,
                                             'torch_src': str(tmp_path)})
            assert row['img/s'] > 0 and row['repository'] == 'naver-ai/pit' and row['mode'] == mode
    finally:
        sys.modules.pop('pit', None)
        sys.path[:] = [p for p in sys.path if p != str(tmp_path)]


# ---- the paths, the instruction set, the JSON rows and the speed table -------------------------

def test_json_rows_of_a_comparison_make_the_speed_table(monkeypatch, tmp_path, capsys):
    from tools.benchmarking.speed_table import speed_table
    monkeypatch.setattr(compare.isolation, 'run_isolated', fake_runs(SPEEDS))
    loads = iter([0.1, 0.1])
    args = argparse.Namespace(**ARGS, isa='avx2', json=str(tmp_path / 'c.json'))
    assert compare.compare([job('eval'), job('train')], args, 2, load=lambda: next(loads)) == 0
    assert 'instruction set: avx2 on both sides' in capsys.readouterr().out
    rows = json.loads((tmp_path / 'c.json').read_text())
    assert [(r['mode'], r['round'], r['ratio']) for r in rows] == [
        ('eval', 1, 1.2), ('train', 1, 0.8), ('eval', 2, 1.0), ('train', 2, 0.9)]
    assert {r['isa'] for r in rows} == {'avx2'} and all(r['cpu'] for r in rows)
    table = speed_table(rows)
    assert 'instruction set: avx2 on both sides' in table
    assert '| model | eval b32 | train b32 |' in table
    assert '| pit_s | **1.00-1.20** | **0.80-0.90** |' in table          # bold: under the 1.1 goal
    assert '| pit_s | 32 | 100 | 100 | 1.00 |' in table                 # training memory, both sides


def test_speed_table_says_busy_and_failed_and_keeps_batches_and_isas_apart():
    from tools.benchmarking.speed_table import speed_table
    base = {'model': 'm', 'image size': 224, 'cpu': 'CPU X', 'ours peak MB': 1.0, 'PyTorch peak MB': 2.0,
            'error': None}
    rows = [dict(base, mode='eval', batch=32, isa='native', round=1, ratio=1.25),
            dict(base, mode='eval', batch=32, isa='native', round=2, ratio=1.254),
            dict(base, mode='eval', batch=1, isa='native', round=1, ratio=None),               # busy
            dict(base, mode='train', batch=1, isa='native', round=1, ratio=None, error='boom'),
            dict(base, mode='exported', batch=32, isa='avx2', round=1, ratio=1.5)]
    table = speed_table(rows)
    native, avx2 = table.split('instruction set: avx2')
    assert '| m | 1.25 | busy | failed |' in native and 'exported' not in native
    assert '| model | exported b32 |' in avx2 and '| m | 1.50 |' in avx2


def test_modes_and_the_instruction_set_reach_every_measuring_process(monkeypatch):
    sys.path.insert(0, os.path.join(os.path.dirname(official.__file__), '..'))
    import benchmark
    args = benchmark.parse_args(['-model', 'pit_s_224', '--mode', 'all'])
    assert benchmark.modes_of(args) == ['eval', 'train', 'exported']
    assert benchmark.modes_of(benchmark.parse_args(['-model', 'x', '--inference', '--mode', 'both'])) == \
        ['exported', 'train']
    from tools.benchmarking.measure import make_job
    job_ = make_job('pit_s_224', None, 'exported', benchmark.parse_args(['-model', 'x', '--flop_rate']))
    assert (job_['mode'], job_['inference'], job_['flop_rate']) == ('eval', True, True)
    assert make_job('x', None, 'train', benchmark.parse_args(['-model', 'x', '--flop_rate']))['flop_rate'] is False
    assert benchmark.ISA_ENVIRONMENT['avx2'] == {'ONEDNN_MAX_CPU_ISA': 'AVX2', 'MKL_ENABLE_INSTRUCTIONS': 'AVX2',
                                                 'PADDLEVIT_KERNEL_ISA': 'avx2'}
    seen = {}
    for name in benchmark.ISA_ENVIRONMENT['avx2']:
        monkeypatch.setenv(name, 'before')      # put back as it was once the test ends
        monkeypatch.delenv(name)
    monkeypatch.setattr(benchmark, 'measure_all', lambda args, sources: seen.update(
        {k: os.environ.get(k) for k in benchmark.ISA_ENVIRONMENT['avx2']}) or 0)
    assert benchmark.main(['-model', 'x', '--isa', 'avx2']) == 0
    assert seen == benchmark.ISA_ENVIRONMENT['avx2']
