"""Throughput and peak memory of any model config, one resolution or a sweep; data-loader speed.

    # inference and train-step img/s + peak memory, batch 32 at 224, all cores
    python tools/benchmark.py -cfg image_classification/VVT/configs/vvt_tiny_224.yaml --batch_size 32

    # resolution sweep of several models, table + plot
    python tools/benchmark.py -cfg a.yaml b.yaml --sweep 224,384,512,768,1024 --batch_size 1 \\
        --mode both --plot sweep.png --json sweep.json

    # the train data loader alone (folder of JPEGs, N workers) vs PaddleViT's PIL pipeline
    python tools/benchmark.py --loader -cfg image_classification/ViT/configs/vit_small_patch16_224.yaml \\
        [--data_path DIR] --workers 2 --batch_size 32

What is measured:
- eval: img/s of `model(images)` under `no_grad` in eval mode;
- train: img/s of one optimizer step (forward in train mode, cross-entropy on random
  labels, backward, AdamW step, clear_grad);
each after `--warmup` untimed iterations (the first runs compile under `--to_static`),
over `--iters` timed ones, on random inputs.  Every measurement runs in a fresh Python
process, so one's memory never shows up in another's figure.  Peak memory is, on CPU,
the peak resident set size of that process (`peak MB`) and how far it rose above the
process with the model (and optimizer) built but nothing run yet (`work MB`: activations,
gradients, optimizer moments, workspace); on GPU, `paddle.device.cuda.max_memory_allocated`.
The model is built for each image size (`DATA.IMAGE_SIZE`), so position embeddings and
other size-dependent tensors are right.  By default the model runs in dygraph, as the
launcher trains and evaluates it; `--to_static` runs it through `paddle.jit.to_static`
(on this CPU it sped inference up by 0-5% and slowed training down by 20-50%).
`--inference` measures eval through Paddle Inference on the exported model, the
deployment path of `tools/export_model.py` + `tools/predict.py`.
A model whose training output is not plain logits (a distilled (class, distillation)
pair, token labeling's dense output) is trained on its class logits.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IC = os.path.join(REPO, 'image_classification')

COLUMNS = ['model', 'image size', 'batch', 'mode', 'img/s', 'peak MB', 'work MB', 'params (M)']


def class_logits(out):
    """The class logits of a training-mode output: logits, a (class, distillation) pair,
    or token labeling's dense output (a dict with 'cls_logits')."""
    if isinstance(out, dict):
        return out['cls_logits']
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


def cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('-cfg', nargs='+', default=[], help='YAML config(s) of any family')
    p.add_argument('-opts', nargs='+', default=[], help='config overrides KEY VALUE ... (all configs)')
    p.add_argument('--batch_size', type=int, default=32)
    p.add_argument('--image_size', type=int, default=None, help='default: the config\'s DATA.IMAGE_SIZE')
    p.add_argument('--mode', choices=['eval', 'train', 'both'], default='both')
    p.add_argument('--warmup', type=int, default=3, help='untimed iterations first')
    p.add_argument('--iters', type=int, default=10, help='timed iterations')
    p.add_argument('--threads', type=int, default=cpu_count(), help='CPU threads (default: all cores)')
    p.add_argument('--to_static', dest='to_static', action='store_true', default=False,
                   help='run through paddle.jit.to_static')
    p.add_argument('--no_to_static', dest='to_static', action='store_false', help='plain dygraph (default)')
    p.add_argument('--device', choices=['auto', 'cpu', 'gpu'], default='auto')
    p.add_argument('--inference', action='store_true',
                   help='eval through Paddle Inference on the exported model (oneDNN on CPU), '
                        'as tools/predict.py runs it')
    p.add_argument('--sweep', default=None, help='comma-separated image sizes, e.g. 224,384,512,768,1024')
    p.add_argument('--plot', default=None, help='PNG of img/s and memory per image size (with --sweep)')
    p.add_argument('--json', default=None, help='write the measurements to this JSON file')
    p.add_argument('--load_json', default=None,
                   help='print the table (and --plot) of a --json file instead of measuring')
    p.add_argument('--timeout', type=float, default=900, help='seconds allowed per measurement')
    p.add_argument('--max_memory_gb', type=float, default=None,
                   help='stop a measurement whose process grows past this RSS (default: 80%% of available)')
    p.add_argument('--loader', action='store_true', help='measure the data loader instead of a model')
    p.add_argument('--data_path', default=None,
                   help='--loader: folder of images (default: 256 sample JPEGs of 500x375 in a temp folder)')
    p.add_argument('--workers', type=int, default=2, help='--loader: worker processes')
    p.add_argument('--batches', type=int, default=30, help='--loader: batches timed (after 2 untimed)')
    p.add_argument('--_worker', default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --------------------------------------------------------------------------- one measurement
def _setup_paddle(threads):
    """Thread count and quiet logs must be set before `import paddle`."""
    os.environ['OMP_NUM_THREADS'] = str(threads)
    os.environ.setdefault('GLOG_minloglevel', '1')
    import engine
    engine.prepare_process()   # the remaining process defaults, e.g. MKL on AMD
    import paddle
    paddle.base.core.set_num_threads(threads)
    return paddle


def _rss_bytes():
    with open('/proc/self/status', encoding='ascii') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) * 1024
    return 0


def _peak_rss_bytes():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # KiB on Linux


def measure(job):
    """Run one measurement in this process; `job` is a dict made by `_job`."""
    paddle = _setup_paddle(job['threads'])
    import paddle.nn.functional as F
    from engine.families import family_for_config

    device = job['device']
    if device == 'auto':
        device = 'gpu' if paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() else 'cpu'
    paddle.set_device(device)
    from engine.cpu.settings import configure as configure_cpu
    configure_cpu()   # allocator and Paddle flags of a CPU run (the threads are the job's)
    on_gpu = device == 'gpu'

    family = family_for_config(job['cfg'])
    opts = list(job['opts']) + (['DATA.IMAGE_SIZE', str(job['image_size'])] if job['image_size'] else [])
    config = family.get_config(job['cfg'], opts=opts)
    size, batch = config.DATA.IMAGE_SIZE, job['batch_size']
    paddle.seed(0)
    model = family.build_model(config)
    if config.TRAIN.RECOMPUTE and job['mode'] == 'train':   # -opts TRAIN.RECOMPUTE True, as the launcher does
        model.set_grad_checkpointing(True)
    params = sum(int(p.numel()) for p in model.parameters())
    images = paddle.randn([batch, config.DATA.IMAGE_CHANNELS, size, size])
    labels = paddle.randint(0, config.MODEL.NUM_CLASSES, [batch])

    net = paddle.jit.to_static(model, full_graph=True, backend=None) if job['to_static'] else model
    onednn = None
    if job['mode'] == 'eval' and job.get('inference'):
        step, onednn = _inference_step(model, size, images.numpy(), device, job['threads'])
    elif job['mode'] == 'eval':
        model.eval()

        def step():
            with paddle.no_grad():
                return net(images)
    else:
        model.train()
        optimizer = paddle.optimizer.AdamW(learning_rate=1e-4, parameters=model.parameters(),
                                           weight_decay=0.05)

        def step():
            loss = F.cross_entropy(class_logits(net(images)), labels)
            loss.backward()
            optimizer.step()
            optimizer.clear_grad()
            return loss

    def sync():
        if on_gpu:
            paddle.device.synchronize()

    sync()
    base = paddle.device.cuda.memory_allocated() if on_gpu else _rss_bytes()
    for _ in range(job['warmup']):
        out = step()
    sync()
    if not bool(paddle.isfinite(paddle.to_tensor(out)).all()):
        raise FloatingPointError(f'{config.MODEL.NAME}: non-finite output in {job["mode"]} mode')
    del out   # a tensor of the last step kept alive slowed the timed steps (PiT-S train: 4.3 -> 5.1 img/s)
    start = time.perf_counter()
    for _ in range(job['iters']):
        step()
    sync()
    seconds = time.perf_counter() - start
    peak = paddle.device.cuda.max_memory_allocated() if on_gpu else _peak_rss_bytes()
    return {
        'model': config.MODEL.NAME, 'cfg': job['cfg'], 'image size': size, 'batch': batch,
        'mode': job['mode'], 'img/s': batch * job['iters'] / seconds,
        'peak MB': peak / 2 ** 20, 'work MB': (peak - base) / 2 ** 20,
        'params (M)': params / 1e6, 'threads': job['threads'], 'device': device,
        'to_static': job['to_static'], 'inference': bool(job.get('inference')) and job['mode'] == 'eval',
        'onednn': onednn, 'seconds per iter': seconds / job['iters'],
        'warmup': job['warmup'], 'iters': job['iters'], 'recompute': bool(config.TRAIN.RECOMPUTE),
    }


def _inference_step(model, size, images, device, threads):
    """One Paddle Inference run of `model`, exported to a temporary folder as
    `tools/export_model.py` does and loaded as `tools/predict.py` does: oneDNN on
    CPU unless `predict.InferenceModel` finds that it cannot build or run this
    graph (then without it, with its message on stderr).  Returns (step, whether
    oneDNN runs it; None on GPU)."""
    import tempfile
    if __package__:   # imported as tools.benchmark
        from tools import export_model, predict
    else:             # run as a script: its folder is sys.path[0]
        import export_model
        import predict
    folder = tempfile.mkdtemp(prefix='benchmark_export_')
    try:
        export_model.export(model, size, folder)
        runner = predict.InferenceModel(folder, device, threads, onednn=device == 'cpu',
                                        log=lambda message: print(message, file=sys.stderr, flush=True))
        runner.logits(images)                      # the first batch settles oneDNN or not
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    predictor = runner.predictor
    return (lambda: predict.run(predictor, images)), (runner.onednn if device == 'cpu' else None)


# --------------------------------------------------------------------------- isolation
def _job(args, cfg, image_size, mode):
    return {'cfg': cfg, 'opts': args.opts, 'image_size': image_size, 'mode': mode,
            'batch_size': args.batch_size, 'warmup': args.warmup, 'iters': args.iters,
            'threads': args.threads, 'to_static': args.to_static, 'device': args.device,
            'inference': args.inference}


def _available_bytes():
    try:
        with open('/proc/meminfo', encoding='ascii') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _process_rss(pid):
    try:
        with open(f'/proc/{pid}/status', encoding='ascii') as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_isolated(job, timeout, max_bytes):
    """`measure(job)` in a fresh interpreter; a failure becomes {'error': ...}."""
    cmd = [sys.executable, os.path.abspath(__file__), '-cfg', job['cfg'], '--_worker', json.dumps(job)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = []

    def watch():   # keep a runaway measurement from taking the machine down
        while proc.poll() is None:
            if max_bytes and _process_rss(proc.pid) > max_bytes:
                killed.append(f'over the memory limit of {max_bytes / 2 ** 30:.1f} GiB')
                proc.kill()
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        killed.append(f'timed out after {timeout:.0f} s')
    watcher.join()
    for line in reversed(out.splitlines()):
        if line.startswith('{'):
            return json.loads(line)
    reason = killed[0] if killed else (err.strip().splitlines() or [f'exit status {proc.returncode}'])[-1]
    return {**job, 'model': os.path.basename(job['cfg']), 'image size': job['image_size'], 'error': reason,
            'user error': not killed and proc.returncode == 2}   # a bad config or flag: see main()


# --------------------------------------------------------------------------- reporting
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


# --------------------------------------------------------------------------- data loader
def _image_files(root):
    found = []
    for folder, _dirs, files in os.walk(root):
        found += [os.path.relpath(os.path.join(folder, f), root) for f in files
                  if f.lower().endswith(('.jpg', '.jpeg', '.png', '.bmp'))]
    return sorted(found)


def write_sample_jpegs(folder, count=256, size=(500, 375), seed=0):
    """`count` ImageNet-sized JPEGs (quality 90) cut at random from the two photos scikit-learn ships."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_images
    photos = [Image.fromarray(a) for a in load_sample_images().images]   # 640 x 427 each
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        photo = photos[i % len(photos)]
        w, h = int(rng.integers(300, photo.width)), int(rng.integers(200, photo.height))
        x, y = int(rng.integers(0, photo.width - w + 1)), int(rng.integers(0, photo.height - h + 1))
        image = photo.crop((x, y, x + w, y + h)).resize(size, Image.BICUBIC)
        if rng.random() < .5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        image.save(os.path.join(folder, f'{i:05d}.jpg'), quality=90)
    return folder


def benchmark_loaders(args):
    """img/s of engine.data's loader and of the PaddleViT-style PIL pipeline on the same images.

    `--data_path` is a folder of images: its `train_list.txt` is used when present,
    otherwise every image below it is listed (label 0) in a temporary list file.
    Without `--data_path`, 256 JPEGs of 500 x 375 are written to a temporary folder.
    """
    import tempfile
    _setup_paddle(args.threads)
    from engine.families import family_for_config
    try:
        from engine.data import benchmark_baseline_loader, benchmark_loader
    except ImportError as e:
        raise SystemExit(f'--loader needs engine.data (benchmark_loader): {e}')
    temporary = []
    if args.data_path is None:
        args.data_path = write_sample_jpegs(tempfile.mkdtemp(prefix='bench_jpegs_'))
        temporary.append(args.data_path)
    if not os.path.isdir(args.data_path):
        raise SystemExit(f'--data_path {args.data_path}: not a folder')
    root = os.path.abspath(args.data_path)
    list_file = os.path.join(root, 'train_list.txt')
    opts = ['MODEL.NUM_CLASSES', '1000']
    if not os.path.isfile(list_file):
        files = _image_files(root)
        if not files:
            raise SystemExit(f'no images under {root}')
        handle, list_file = tempfile.mkstemp(prefix='bench_list_', suffix='.txt')
        temporary.append(list_file)
        with os.fdopen(handle, 'w', encoding='utf-8') as f:
            f.writelines(f'{path} 0\n' for path in files)
    family = family_for_config(args.cfg[0])
    opts += ['DATA.DATA_PATH', root, 'DATA.TRAIN_LIST', list_file,
             'DATA.NUM_WORKERS', str(args.workers), 'DATA.BATCH_SIZE', str(args.batch_size)]
    if args.image_size:
        opts += ['DATA.IMAGE_SIZE', str(args.image_size)]
    config = family.get_config(args.cfg[0], opts=list(args.opts) + opts)
    try:
        rows = [('engine.data (build_dataset + build_dataloader)',
                 benchmark_loader(config, 'train', args.batches)),
                ('PIL + paddle.vision.transforms, as PaddleViT',
                 benchmark_baseline_loader(config, 'train', args.batches))]
    finally:
        for path in temporary:
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
    source = 'sample JPEGs of 500x375' if args.data_path in temporary else f'images under {root}'
    print(f'train pipeline of {os.path.basename(args.cfg[0])} ({config.DATA.IMAGE_SIZE} px, '
          f'RandAugment {config.TRAIN.RAND_AUGMENT}, random erase {config.TRAIN.RANDOM_ERASE_PROB}), '
          f'{source}, batch {args.batch_size}, {args.workers} workers, '
          f'{args.batches} batches timed after 2\n')
    print('| loader | img/s |\n|---|---|')
    for name, rate in rows:
        print(f'| {name} | {rate:.1f} |')
    print(f'\nengine / PaddleViT: {rows[0][1] / rows[1][1]:.2f}x')
    return rows


# --------------------------------------------------------------------------- main
def main(argv=None):
    args = parse_args(argv)
    if args._worker:
        print(json.dumps(measure(json.loads(args._worker))), flush=True)
        return 0
    if args.loader:
        benchmark_loaders(args)
        return 0
    if args.load_json:
        with open(args.load_json, encoding='utf-8') as f:
            results = json.load(f)
        report(results, args, sweep=len({r['image size'] for r in results}) > 1)
        return 0
    if not args.cfg:
        raise SystemExit('-cfg: give at least one config')
    modes = ['eval', 'train'] if args.mode == 'both' else [args.mode]
    sizes = [int(s) for s in args.sweep.split(',')] if args.sweep else [args.image_size]
    available = _available_bytes()
    max_bytes = (args.max_memory_gb * 2 ** 30 if args.max_memory_gb
                 else (0.8 * available if available else None))
    results = []
    load_before = os.getloadavg()[0]   # other processes on the machine skew every img/s figure
    for cfg in args.cfg:
        for size in sizes:
            for mode in modes:
                r = run_isolated(_job(args, cfg, size, mode), args.timeout, max_bytes)
                if r.get('user error'):   # the same for every other job: stop with its message
                    sys.stdout.flush()
                    print(r['error'], file=sys.stderr, flush=True)
                    return 2
                results.append(r)
                print(f'# {r["model"]} {r["image size"]} {mode}: '
                      + (f'failed: {r["error"]}' if 'error' in r
                         else f'{r["img/s"]:.2f} img/s, peak {r["peak MB"]:.0f} MB'), file=sys.stderr, flush=True)
    print(f'load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after '
          f'(other processes on the machine lower every img/s figure)\n')
    return report(results, args, sweep=bool(args.sweep))


def report(results, args, sweep):
    """Print the markdown table (and the memory growth of a sweep), write --plot and --json."""
    ok = [r for r in results if 'error' not in r]
    if ok:
        r = ok[0]
        print(f'batch {r["batch"]}, {r["threads"]} threads, device {r["device"]}, '
              f'{"to_static" if r["to_static"] else "dygraph"}'
              f'{", eval through Paddle Inference" if r.get("inference") else ""}'
              f'{" (oneDNN)" if r.get("onednn") else ""}, {r.get("warmup", args.warmup)} warm-up + '
              f'{r.get("iters", args.iters)} timed iterations\n')
    print(markdown_table(results))
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


def _exit_on_user_error(error):
    """A UserError (engine.errors; imported by then, as anything that raises one is) ends the
    process with its message and status 2; anything else keeps its traceback."""
    errors = sys.modules.get('engine.errors')
    if errors is not None and isinstance(error, errors.UserError):
        errors.exit_on_user_error(error)


if __name__ == '__main__':
    try:
        sys.exit(main())
    except Exception as error:   # noqa: BLE001  (re-raised unless it is a user error)
        _exit_on_user_error(error)
        raise
