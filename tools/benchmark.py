"""Throughput and peak memory of any model, one resolution or a sweep; data-loader speed.

    # inference and train-step img/s + peak memory, batch 32 at 224, all cores
    python tools/benchmark.py -model vvt_tiny_224 --batch_size 32
    python tools/benchmark.py -cfg image_classification/VVT/configs/vvt_tiny_224.yaml --batch_size 32

    # resolution sweep of several models, table + plot
    python tools/benchmark.py -cfg a.yaml b.yaml --sweep 224,384,512,768,1024 --batch_size 1 \\
        --mode both --plot sweep.png --json sweep.json

    # the train data loader alone (folder of JPEGs, N workers) vs PaddleViT's PIL pipeline
    python tools/benchmark.py --loader -model vit_small_patch16_224 [--data_path DIR] --workers 2 --batch_size 32

    # against the official PyTorch model, same protocol, 2 alternating rounds (--inference: exported)
    git clone https://github.com/naver-ai/pit /tmp/pit        # needs torch, timm, einops in that Python
    python tools/benchmark.py -model pit_s_224 --torch-src /tmp/pit --torch_python /path/to/torch/python \\
        --warmup 1 --iters 3 --threads 2

Models are named by `-model` (names of `paddlevit.list_models()`) or `-cfg` (YAML
files of any family) and built by `paddlevit.create_model`.

What is measured (`tools/benchmarking/measure.py`):
- eval: img/s of `model(images)` under `no_grad` in eval mode;
- train: img/s of one optimizer step (forward in train mode, cross-entropy on random
  labels, backward, AdamW step, clear_grad);
each after `--warmup` untimed iterations (the first runs compile under `--to_static`),
over `--iters` timed ones, on random inputs.  Every measurement runs in a fresh Python
process (`isolation.py`), so one's memory never shows up in another's figure.  Peak memory is, on CPU,
the peak resident set size of that process (`peak MB`) and how far it rose above the
process with the model (and optimizer) built but nothing run yet (`work MB`: activations,
gradients, optimizer moments, workspace); on GPU, `paddle.device.cuda.max_memory_allocated`.
The model is built for each image size (`DATA.IMAGE_SIZE`), so position embeddings and
other size-dependent tensors are right.  By default the model runs in dygraph, as the
launcher trains and evaluates it; `--to_static` runs it through `paddle.jit.to_static`
(on this CPU it sped inference up by 0-5% and slowed training down by 20-50%).
`--mode exported` (or `--inference`) measures eval through Paddle Inference on the exported
model, the deployment path of `tools/export_model.py` + `tools/predict.py` (`inference.py`;
`--cpu_kernels`: the graph of `export_model.py --cpu_kernels`, which runs our fused CPU kernels);
`--mode all` measures eval, train and exported.  `--flop_rate` adds, to eval and exported, the
GFLOP/s achieved and its share of the machine's sgemm rate measured in the same process
(`flop_rate.py`).  `--isa avx2` holds every side to AVX2, as on CPUs without AVX-512.
A model whose training output is not plain logits (a distilled (class, distillation)
pair, token labeling's dense output) is trained on its class logits.
`--torch-src DIR` times the official PyTorch model built from that checkout the same way,
alternating rounds, and prints the ratios ours / PyTorch with the CPU and how busy it was;
it refuses to report them (exit status 3) when the machine was busy (`compare.py`).  Its
`--json` files, given together to `--load_json`, make the speed table of the README:
one row per model, a column per path x batch size x instruction set (`speed_table.py`).
`--loader` times the data pipeline instead (`loader_speed.py`); the table, the memory
growth of a sweep, `--plot` and `--json` are `report.py`'s.
"""
import argparse
import json
import os
import sys

# none of these imports Paddle: a measurement sets its thread count first (benchmarking/process.py)
try:                                                  # imported as tools.benchmark
    from .benchmarking import isolation, report
    from .benchmarking.compare import compare
    from .benchmarking.loader_speed import benchmark_loaders
    from .benchmarking.measure import make_job, measure
    from .benchmarking.speed_table import speed_table
    from .model_args import add_model_arguments, model_sources
    from .onnx_model import BACKENDS
except ImportError:                                   # run as a script: its folder is sys.path[0]
    from benchmarking import isolation, report
    from benchmarking.compare import compare
    from benchmarking.loader_speed import benchmark_loaders
    from benchmarking.measure import make_job, measure
    from benchmarking.speed_table import speed_table
    from model_args import add_model_arguments, model_sources
    from onnx_model import BACKENDS


def cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


MODES = {'eval': ['eval'], 'train': ['train'], 'exported': ['exported'], 'both': ['eval', 'train'],
         'all': ['eval', 'train', 'exported']}
# --isa: what each choice exports for every measuring process (ours and PyTorch's alike)
ISA_ENVIRONMENT = {'native': {},
                   'avx2': {'ONEDNN_MAX_CPU_ISA': 'AVX2', 'MKL_ENABLE_INSTRUCTIONS': 'AVX2',
                            'PADDLEVIT_KERNEL_ISA': 'avx2'}}


def modes_of(args):
    """The measured paths of --mode, with --inference turning eval into exported."""
    return ['exported' if args.inference and m == 'eval' else m for m in MODES[args.mode]]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p, several=True, required=False, cfg_help='YAML config(s) of any family')
    p.add_argument('--batch_size', type=int, default=32)
    p.add_argument('--image_size', type=int, default=None, help='default: the config\'s DATA.IMAGE_SIZE')
    p.add_argument('--mode', choices=list(MODES), default='both',
                   help='eval (dygraph), train (one optimizer step), exported (eval through Paddle Inference, '
                        'as tools/predict.py runs it), both = eval + train, all = the three')
    p.add_argument('--warmup', type=int, default=3, help='untimed iterations first')
    p.add_argument('--iters', type=int, default=10, help='timed iterations')
    p.add_argument('--threads', type=int, default=cpu_count(), help='CPU threads (default: all cores)')
    p.add_argument('--to_static', dest='to_static', action='store_true', default=False,
                   help='run through paddle.jit.to_static')
    p.add_argument('--no_to_static', dest='to_static', action='store_false', help='plain dygraph (default)')
    p.add_argument('--device', choices=['auto', 'cpu', 'gpu'], default='auto')
    p.add_argument('--inference', action='store_true',
                   help='eval through Paddle Inference on the exported model (oneDNN on CPU), '
                        'as tools/predict.py runs it: the eval of --mode becomes exported')
    p.add_argument('--backend', choices=BACKENDS, default='paddle',
                   help='exported: the runtime, as tools/predict.py --backend: Paddle Inference (default) or '
                        'ONNX Runtime on the model paddle2onnx converts (needs paddlevit[onnx])')
    p.add_argument('--cpu_kernels', action='store_true',
                   help='exported: the graph export_model.py --cpu_kernels writes, in which the fused CPU '
                        'kernels are ops (CPU only, Paddle Inference only)')
    p.add_argument('--isa', choices=list(ISA_ENVIRONMENT), default='native',
                   help='the instruction set every side may use: native (all the CPU has), or avx2, which '
                        'holds oneDNN, MKL (Paddle\'s and PyTorch\'s) and our fused kernels to AVX2 as on '
                        'older CPUs (ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS, PADDLEVIT_KERNEL_ISA)')
    p.add_argument('--flop_rate', action='store_true',
                   help='eval and exported: the achieved GFLOP/s and its share of the sgemm rate measured '
                        'in the same process (benchmarking/flop_rate.py)')
    p.add_argument('--sweep', default=None, help='comma-separated image sizes, e.g. 224,384,512,768,1024')
    p.add_argument('--plot', default=None, help='PNG of img/s and memory per image size (with --sweep)')
    p.add_argument('--json', default=None, help='write the measurements to this JSON file')
    p.add_argument('--load_json', nargs='+', default=None,
                   help='print the table (and --plot) of --json file(s) instead of measuring; files of '
                        '--torch-src comparisons give the speed table of them all (benchmarking/speed_table.py)')
    p.add_argument('--timeout', type=float, default=900, help='seconds allowed per measurement')
    p.add_argument('--max_memory_gb', type=float, default=None,
                   help='stop a measurement whose process grows past this RSS (default: 80%% of available)')
    p.add_argument('--loader', action='store_true', help='measure the data loader instead of a model')
    p.add_argument('--data_path', default=None,
                   help='--loader: folder of images (default: 256 sample JPEGs of 500x375 in a temp folder)')
    p.add_argument('--workers', type=int, default=2, help='--loader: worker processes')
    p.add_argument('--batches', type=int, default=30, help='--loader: batches timed (after 2 untimed)')
    p.add_argument('--torch-src', dest='torch_src', default=None,
                   help='compare with the official PyTorch model built from this checkout of its repository '
                        '(benchmarking/compare.py, official.py)')
    p.add_argument('--torch_python', default=sys.executable,
                   help='--torch-src: the Python that has torch and the official code\'s dependencies')
    p.add_argument('--rounds', type=int, default=2, help='--torch-src: alternating rounds of ours and PyTorch')
    p.add_argument('--max_load', type=float, default=0.25,
                   help='--torch-src: refuse the ratios when other processes loaded the machine more than this, '
                        'per core (cores busy over 2 s before and after, from /proc/stat; inf accepts any)')
    p.add_argument('--_worker', default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.cpu_kernels and args.backend != 'paddle':
        p.error('--cpu_kernels writes a graph that only Paddle Inference runs, not --backend ' + args.backend)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args._worker:           # a child of isolation.run_isolated: one measurement, one JSON line
        print(json.dumps(measure(json.loads(args._worker))), flush=True)
        return 0
    if args.load_json:
        results = []
        for path in args.load_json:
            with open(path, encoding='utf-8') as f:
                results += json.load(f)
        if results and all('ratio' in r for r in results):     # comparisons: the speed table
            print(speed_table(results))
            return 0
        report.report(results, args, sweep=len({r['image size'] for r in results}) > 1)
        return 0
    os.environ.update(ISA_ENVIRONMENT[args.isa])     # every measuring process inherits it
    sources = model_sources(args)
    if not sources:
        raise SystemExit('-model / -cfg: give at least one model name or config')
    if args.loader:
        benchmark_loaders(args)
        return 0
    if args.torch_src:
        return max(compare([make_job(source, args.image_size, mode, args) for mode in modes_of(args)], args,
                           cpu_count()) for source in sources)
    return measure_all(args, sources)


def measure_all(args, sources):
    """Every model x image size x mode, each in its own process; then the report."""
    modes = modes_of(args)
    sizes = [int(s) for s in args.sweep.split(',')] if args.sweep else [args.image_size]
    max_bytes = isolation.default_memory_limit(args.max_memory_gb)
    results = []
    load_before = os.getloadavg()[0]   # other processes on the machine skew every img/s figure
    for source in sources:
        for size in sizes:
            for mode in modes:
                r = isolation.run_isolated(make_job(source, size, mode, args), args.timeout, max_bytes)
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
    return report.report(results, args, sweep=bool(args.sweep))


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
