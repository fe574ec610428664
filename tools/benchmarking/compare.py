"""Ours against the official PyTorch model, same protocol, in alternating rounds (`--torch-src`).

Each round measures ours, then the official model, for every mode, each in a fresh process
(`isolation.py`; the PyTorch side is `official.py` run by `--torch_python`).  Alternating in
rounds, instead of all of ours then all of theirs, spreads a slow spell of the machine over
both sides; the ratio ours / PyTorch of each round is printed, and their range (not a mean:
the spread is the measurement's honesty).  Alongside: the CPU model and its vector
extensions (the hand-written kernels and oneDNN both depend on them), and how busy the machine was.

A ratio measured while other processes ran is not a figure anyone can reproduce, so the
comparison refuses to report ratios (exit status `BUSY_EXIT`, the timings still printed) when
the machine was busy: the cores kept busy while nothing of the comparison ran, measured over
two seconds from /proc/stat just before the first measurement and just after the last (the
larger counts; steal time, another VM on the same cores, counts as busy), exceeds `--max_load`
per core (default 0.25, i.e. half a core on two cores).  Not the 1-minute load average: it
decays over minutes, so it still carried the previous comparison's own load when comparisons
ran back to back, and lags behind a job that just started.  `--max_load inf` accepts any load,
for users who know.
"""
import json
import os
import sys
import time

from . import isolation
from .flop_rate import describe
from .measure import path_of

__all__ = ['BUSY_EXIT', 'cpu_description', 'busy_cores', 'busy_reason', 'ratio_lines', 'comparison_rows', 'compare']

BUSY_EXIT = 3
VECTOR_EXTENSIONS = ('sse4_2', 'avx', 'avx2', 'fma', 'avx512f', 'avx512bw', 'avx512vl', 'avx512_vnni',
                     'avx512_bf16', 'amx_tile', 'amx_bf16')
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cpu_description(cpuinfo='/proc/cpuinfo'):
    """'MODEL NAME (vector extensions: avx2 fma avx512f ...)' from /proc/cpuinfo."""
    model, flags = 'unknown CPU', set()
    try:
        with open(cpuinfo, encoding='utf-8', errors='replace') as f:
            for line in f:
                key, _, value = line.partition(':')
                if key.strip() == 'model name' and model == 'unknown CPU':
                    model = value.strip()
                elif key.strip() == 'flags' and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    present = [x for x in VECTOR_EXTENSIONS if x in flags]
    return f'{model} (vector extensions: {" ".join(present) or "none of " + " ".join(VECTOR_EXTENSIONS)})'


def busy_cores(seconds=2.0, stat='/proc/stat'):
    """How many cores other processes keep busy now: the share of the CPU time not idle (nor
    waiting on I/O) over `seconds`, from the 'cpu' line of /proc/stat, times the cores; the
    1-minute load average where /proc/stat cannot be read (not Linux)."""
    def times():
        with open(stat, encoding='ascii') as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return sum(values), values[3] + values[4]          # total, idle + iowait
    try:
        total, idle = times()
        time.sleep(seconds)
        total2, idle2 = times()
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0]
    if total2 <= total:
        return 0.0
    return (1 - (idle2 - idle) / (total2 - total)) * (os.cpu_count() or 1)


def busy_reason(busy_before, busy_after, cores, max_load):
    """Why the machine counts as busy (see the module docstring), or None."""
    others = max(busy_before, busy_after)
    limit = max_load * cores
    if others <= limit:
        return None
    return (f'the machine was busy: other processes kept about {others:.2f} of its {cores} cores busy '
            f'({busy_before:.2f} before the first measurement, {busy_after:.2f} after the last), over '
            f'--max_load {max_load} per core = {limit:.2f}; rerun on a quiet machine, or pass --max_load inf '
            f'to accept it')


def ratio_lines(pairs, ratios_shown=True):
    """Markdown rows (and a range line per mode) of [(mode, round, ours row, PyTorch row)];
    without `ratios_shown`, the timings only."""
    lines = ['| model | mode | round | ours img/s | PyTorch img/s | ours / PyTorch | ours peak MB | PyTorch peak MB |',
             '|---|---|---|---|---|---|---|---|']
    ratios = {}
    for mode, number, ours, theirs in pairs:
        if 'error' in ours or 'error' in theirs:
            failed = ours.get('error') or theirs.get('error')
            lines.append(f'| {ours["model"]} | {mode} | {number} | failed: {failed} | | | | |')
            continue
        ratio = ours['img/s'] / theirs['img/s']
        ratios.setdefault(mode, []).append(ratio)
        lines.append(f'| {ours["model"]} | {mode} | {number} | {ours["img/s"]:.2f} | {theirs["img/s"]:.2f} | '
                     f'{f"{ratio:.2f}" if ratios_shown else "not reported"} | {ours["peak MB"]:.0f} | '
                     f'{theirs["peak MB"]:.0f} |')
    lines.append('')
    for mode, values in ratios.items() if ratios_shown else ():
        lines.append(f'ours / PyTorch, {mode}: {min(values):.2f}-{max(values):.2f} over {len(values)} round(s) '
                     f'(> 1: ours is faster)')
    return lines


def comparison_rows(pairs, isa, ratios_shown=True):
    """The JSON rows of a comparison (`--json`, read back by `speed_table`): per round and path, both
    sides' img/s and peak MB, the ratio (None where the machine was busy), the CPU and the --isa."""
    cpu = cpu_description()
    rows = []
    for mode, number, ours, theirs in pairs:
        failed = ours.get('error') or theirs.get('error')
        row = {'model': ours['model'], 'mode': mode, 'round': number, 'batch': ours.get('batch'),
               'image size': ours.get('image size'), 'isa': isa, 'cpu': cpu, 'error': failed,
               'ours img/s': None if failed else ours['img/s'], 'PyTorch img/s': None if failed else theirs['img/s'],
               'ratio': None if failed or not ratios_shown else ours['img/s'] / theirs['img/s'],
               'ours peak MB': ours.get('peak MB'), 'PyTorch peak MB': theirs.get('peak MB'),
               'repository': theirs.get('repository'), 'torch': theirs.get('torch')}
        row.update({k: ours[k] for k in ('GFLOPs', 'GFLOP/s', 'sgemm GFLOP/s', '% of sgemm') if k in ours})
        rows.append(row)
    return rows


def _flop_rate_lines(pairs):
    lines = [f'round {number}: {line}' for _, number, ours, _ in pairs if (line := describe(ours))]
    return [''] + lines if lines else []


def compare(jobs, args, cores, load=busy_cores):
    """Run `jobs` (ours, one per mode of one model, from `measure.make_job`) against the official
    model for `args.rounds` rounds; print the report; return the exit status."""
    isa = getattr(args, 'isa', 'native')
    print(f'CPU: {cpu_description()}, {cores} cores; {args.threads} threads per side; instruction set: '
          f'{"all the CPU has" if isa == "native" else isa + " on both sides"}')
    command = [args.torch_python, '-m', 'tools.benchmarking.official']
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([REPO, os.environ.get('PYTHONPATH', '')])}
    max_bytes = isolation.default_memory_limit(args.max_memory_gb)
    load_before = load()
    pairs = []
    for number in range(1, args.rounds + 1):
        for job in jobs:
            ours = isolation.run_isolated(job, args.timeout, max_bytes)
            if ours.get('user error'):
                print(ours['error'], file=sys.stderr)
                return 2
            theirs = {'error': 'ours failed'} if 'error' in ours else isolation.run_isolated(
                {'model': ours['model'], 'image size': ours['image size'], 'drop path': ours['drop path'],
                 'batch_size': job['batch_size'],
                 'warmup': job['warmup'], 'iters': job['iters'], 'threads': job['threads'],
                 'mode': job['mode'], 'torch_src': args.torch_src}, args.timeout, max_bytes, command, env)
            if theirs.get('user error'):        # no official model for ours, or a wrong checkout
                print(theirs['error'], file=sys.stderr)
                return 2
            mode = path_of(job)
            print(f'# round {number} {mode}: ours {ours.get("img/s", 0):.2f} img/s, '
                  f'PyTorch {theirs.get("img/s", 0):.2f} img/s', file=sys.stderr, flush=True)
            pairs.append((mode, number, ours, theirs))
    load_after = load()
    first = next((t for _, _, _, t in pairs if 'error' not in t), {})
    print(f'official model: {first.get("repository", "?")} under torch {first.get("torch", "?")}; '
          f'batch {jobs[0]["batch_size"]}, {jobs[0]["warmup"]} warm-up + {jobs[0]["iters"]} timed steps')
    print(f'cores busy with other work: {load_before:.2f} before, {load_after:.2f} after\n')
    reason = busy_reason(load_before, load_after, cores, args.max_load)
    print('\n'.join(ratio_lines(pairs, ratios_shown=reason is None) + _flop_rate_lines(pairs)))
    if getattr(args, 'json', None):
        with open(args.json, 'w', encoding='utf-8') as f:
            json.dump(comparison_rows(pairs, isa, ratios_shown=reason is None), f, indent=1)
    if reason:
        print(f'no ratio reported: {reason}')
        return BUSY_EXIT
    return 1 if any('error' in o or 'error' in t for _, _, o, t in pairs) else 0
