"""The measurements as users read them: a markdown table, how working memory grows with the token
count over a `--sweep`, a plot of img/s and memory per image size, and the `--json` file that
`--load_json` prints again."""
import json
import math

from .flop_rate import describe

__all__ = ['COLUMNS', 'markdown_table', 'memory_growth', 'plot', 'report']

COLUMNS = ['model', 'image size', 'batch', 'mode', 'img/s', 'peak MB', 'work MB', 'params (M)']


def _fmt(value, column):
    if isinstance(value, float):
        return f'{value:.2f}' if column in ('img/s', 'params (M)') else f'{value:.0f}'
    return str(value)


def markdown_table(results):
    lines = ['| ' + ' | '.join(COLUMNS) + ' |', '|' + '---|' * len(COLUMNS)]
    for r in results:
        if 'error' in r:
            cells = [str(r['model']), str(r['image size']), str(r['batch_size']), r['mode'],
                     f'failed: {r["error"]}', '', '', '']
        else:
            cells = [_fmt(r[c], c) for c in COLUMNS]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def _slope(rows):
    """Least-squares slope of log(work MB) against log(pixels) (tokens are proportional to pixels)."""
    xs = [math.log(r['image size'] ** 2) for r in rows]
    ys = [math.log(r['work MB']) for r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def memory_growth(results):
    """Per (model, mode): how work memory grows with the token count.

    The exponent k of memory ~ tokens^k is fitted on the three largest sizes, where
    activations dominate the fixed costs (kernel workspaces; gradients and AdamW
    moments in train mode) that flatten the small sizes: k = 1 is linear, 2 quadratic.
    """
    lines = []
    groups = {}
    for r in results:
        if 'error' not in r and r['work MB'] > 0:
            groups.setdefault((r['model'], r['mode']), []).append(r)
    for (model, mode), rows in groups.items():
        rows.sort(key=lambda r: r['image size'])
        if len(rows) < 2:
            continue
        top = rows[-3:]
        first, last = rows[0], rows[-1]
        lines.append(f'- {model} {mode}: work memory x{last["work MB"] / first["work MB"]:.1f} for '
                     f'x{(last["image size"] / first["image size"]) ** 2:.1f} tokens '
                     f'({first["image size"]} -> {last["image size"]}); memory ~ tokens^{_slope(top):.2f} '
                     f'over {top[0]["image size"]}-{last["image size"]}')
    return '\n'.join(lines)


def plot(results, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (ax_speed, ax_mem) = plt.subplots(1, 2, figsize=(10, 4), dpi=72)
    groups = {}
    for r in results:
        if 'error' not in r:
            groups.setdefault((r['model'], r['mode']), []).append(r)
    colors = {m: f'C{i}' for i, m in enumerate(sorted({m for m, _ in groups}))}
    for (model, mode), rows in sorted(groups.items()):
        rows.sort(key=lambda r: r['image size'])
        sizes = [r['image size'] for r in rows]
        style = dict(color=colors[model], marker='o' if mode == 'eval' else 's',
                     linestyle='-' if mode == 'eval' else '--', label=f'{model} {mode}')
        ax_speed.plot(sizes, [r['img/s'] for r in rows], **style)
        ax_mem.plot(sizes, [r['work MB'] for r in rows], **style)
    sizes = sorted({r['image size'] for r in results})
    anchor = min(r['work MB'] for r in results if r['image size'] == sizes[-1])
    reference, = ax_mem.plot(sizes, [anchor * (s / sizes[-1]) ** 2 for s in sizes], ':', color='gray',
                             label='slope of memory ~ tokens')
    for ax, title in ((ax_speed, 'throughput (img/s)'), (ax_mem, 'working memory (MB, peak - idle)')):
        ax.set_xscale('log')
        ax.set_yscale('log')
        ax.set_xlabel('image size (px)')
        ax.set_title(title, fontsize=10)
        ax.set_xticks(sizes)
        ax.set_xticklabels([str(s) for s in sizes])
        ax.minorticks_off()
        ax.grid(True, alpha=.3)
    ax_speed.legend(fontsize=7)
    ax_mem.legend(handles=[reference], fontsize=7, loc='upper left')
    r0 = results[0]
    fig.suptitle(f'batch {r0.get("batch", r0.get("batch_size"))}, {r0.get("threads")} threads, '
                 f'{r0.get("device", "")}', fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


RUNTIMES = {'paddle': 'Paddle Inference', 'onnxruntime': 'ONNX Runtime'}   # exported rows, by backend


def report(results, args, sweep):
    """Print the markdown table (and the memory growth of a sweep), write --plot and --json."""
    ok = [r for r in results if 'error' not in r]
    if ok:
        r = ok[0]
        print(f'batch {r["batch"]}, {r["threads"]} threads, device {r["device"]}, '
              f'{"to_static" if r["to_static"] else "dygraph"}'
              f'{", eval through " + RUNTIMES[r.get("backend") or "paddle"] if r.get("inference") else ""}'
              f'{" (oneDNN)" if r.get("onednn") else ""}, {r.get("warmup", args.warmup)} warm-up + '
              f'{r.get("iters", args.iters)} timed iterations\n')
    print(markdown_table(results))
    rates = [line for line in map(describe, ok) if line]
    if rates:
        print('\n' + '\n'.join(rates))
    if sweep:
        growth = memory_growth(results)
        if growth:
            print('\nMemory growth (work MB against tokens):\n' + growth)
    if args.plot and ok:
        plot(ok, args.plot)
        print(f'\nplot: {args.plot}')
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as f:
            json.dump(results, f, indent=1)
    return 1 if len(ok) < len(results) else 0
