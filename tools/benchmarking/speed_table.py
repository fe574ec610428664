"""The speed table of the README, from the `--json` files of `--torch-src` comparisons.

One table per instruction set (`--isa`) and CPU: a row per model, a column per path (eval, train,
exported, exported --cpu_kernels) and batch size, each cell the range of the paired ratios ours / PyTorch over the rounds
(one figure when all rounds agree to two decimals), bold below 1.1, the goal.  Then the training
memory: the peak resident MB of both sides, their range over the rounds, per model and batch.
A comparison that could not report its ratios (a busy machine) or failed is shown as such.
"""
__all__ = ['GOAL', 'speed_table']

GOAL = 1.1                          # every path at least 1.1x PyTorch
PATHS = ('eval', 'train', 'exported', 'exported --cpu_kernels')


def _span(values, digits=2, unit=''):
    low, high = min(values), max(values)
    text = f'{low:.{digits}f}' if f'{low:.{digits}f}' == f'{high:.{digits}f}' else f'{low:.{digits}f}-{high:.{digits}f}'
    return text + unit


def _ratio_cell(rows):
    if not rows:
        return ''
    if any(r.get('error') for r in rows):
        return 'failed'
    ratios = [r['ratio'] for r in rows if r.get('ratio') is not None]
    if not ratios:
        return 'busy'
    cell = _span(ratios)
    return f'**{cell}**' if min(ratios) < GOAL else cell


def _group(rows, *keys):
    groups = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    return groups


def speed_table(rows):
    """Markdown of comparison rows (`compare.comparison_rows`) from any number of runs."""
    out = []
    for (isa, cpu), part in sorted(_group(rows, 'isa', 'cpu').items(), key=lambda kv: (kv[0][0] != 'native', kv[0])):
        batches = sorted({r['batch'] for r in part}, reverse=True)
        columns = [(p, b) for b in batches for p in PATHS if any(r['mode'] == p and r['batch'] == b for r in part)]
        cells = _group(part, 'model', 'mode', 'batch')
        models = list(dict.fromkeys(r['model'] for r in part))
        torch = sorted({str(r.get('torch')) for r in part if r.get('torch')})
        out += [f'ours / PyTorch ({", ".join(torch) or "torch"}), {cpu}; instruction set: '
                f'{"all the CPU has" if isa == "native" else isa + " on both sides"}; range over rounds, '
                f'bold under {GOAL}:', '',
                '| model | ' + ' | '.join(f'{p} b{b}' for p, b in columns) + ' |',
                '|---|' + '---|' * len(columns)]
        for model in models:
            out.append(f'| {model} | ' + ' | '.join(_ratio_cell(cells.get((model, p, b), [])) for p, b in columns)
                       + ' |')
        train = [(m, b) for m in models for b in batches if cells.get((m, 'train', b))]
        if train:
            out += ['', 'training peak memory (resident MB, range over rounds):', '',
                    '| model | batch | ours MB | PyTorch MB | ours / PyTorch |', '|---|---|---|---|---|']
            for model, batch in train:
                ok = [r for r in cells[model, 'train', batch] if not r.get('error')]
                if ok:
                    out.append(f'| {model} | {batch} | {_span([r["ours peak MB"] for r in ok], 0)} | '
                               f'{_span([r["PyTorch peak MB"] for r in ok], 0)} | '
                               f'{_span([r["ours peak MB"] / r["PyTorch peak MB"] for r in ok])} |')
        out.append('')
    return '\n'.join(out)
