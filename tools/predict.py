"""Classify images with a model exported by `tools/export_model.py`, through Paddle Inference
(or ONNX Runtime).

    python tools/predict.py --model_dir ./inference/pit_s_224 cat.jpg dog.png photos/ val_list.txt ... \\
        [-model pit_s_224 | -cfg my_pit_s_224.yaml] [-opts KEY VALUE ...] [--labels names.txt] [--topk 5] \\
        [--batch_size 32] [--csv top5.csv] [--quiet] [--threads N] [--backend paddle|onnxruntime]

Inputs are image files, folders (every image below them, sorted) and list files
(`path [label]` lines, paths relative to the list's folder): see
`prediction_inputs.py`.  Images run in batches of `--batch_size`; a progress bar
is drawn on stderr when it is a terminal (not with `--quiet`).  Without `--csv`
the top-k of each image are printed; with it they go to the CSV file, one row per
image: path, then class index, probability (and name, with `--labels`) of ranks
1..k.  At the end: images scored, unreadable ones skipped (each named on its own
line when met, never scored), throughput in images/s (reading, preprocessing and
inference; the model load excluded), and with a labelled list the top-1 / top-5
accuracy over its labelled images.

Each image is preprocessed exactly as the config's evaluation does it
(`paddlevit.create_transform` of the config's `data_config`, the engine's eval
transform: resize the short side to IMAGE_SIZE / CROP_PCT with
DATA.INTERPOLATION, centre-crop IMAGE_SIZE, normalise with DATA.MEAN / DATA.STD).
The config defaults to the `config.yaml` the export wrote next to the model;
`-model` (a name of `paddlevit.list_models()`) or `-cfg` (a YAML file) names
another, resolved by `paddlevit.model_config`.  For each image the top-k
classes are printed, one per line: rank, class index, softmax probability and,
with `--labels` (a text file with one class name per line, line i = class i),
the name.

On the CPU, Paddle Inference runs oneDNN or its plain kernels by the rule
`onednn_by_default` (by family, from the config, and plain for a graph exported
with `--cpu_kernels`: the faster measured), on this process's cores; `--onednn
on|off` overrides it (`--no-onednn` = off).  A graph exported with
`--cpu_kernels` (`cpu_kernels.json` beside it) calls this repository's fused CPU
kernels: it runs on the CPU only and without oneDNN (`--onednn on` is refused), once `engine.cpu.exported` has checked that
they are the ones it was traced with and registered them (built on first use).
Where Paddle Inference's oneDNN cannot build the predictor for a model or
cannot run its first batch (its fusion passes have bugs that depend on the
graph, see `InferenceModel`), the model runs on plain kernels instead, after
one message naming the error.  `--device gpu`
runs on the first GPU of a CUDA build of Paddle.

`--backend onnxruntime` runs `inference.onnx` (written by `export_model.py
--onnx`) through ONNX Runtime on the CPU instead (`onnx_model.py`; the packages
are the optional extra `paddlevit[onnx]`), `--threads` threads.
"""
import argparse
import csv
import os
import re
import sys
import tempfile
import time

import engine
engine.prepare_process()   # before paddle is imported
import numpy as np  # noqa: E402
from paddle import inference  # noqa: E402

import paddlevit  # noqa: E402
from engine.data import DecodeError, decode_image, describe_eval_transform  # noqa: E402
from engine.cpu import exported  # noqa: E402
from engine.cpu.settings import configure as configure_cpu, cpu_threads  # noqa: E402
from engine.errors import UserError  # noqa: E402

try:
    from .model_args import add_model_arguments, model_config, model_sources  # imported as tools.predict
    from .onnx_model import BACKENDS, OnnxModel
    from .prediction_inputs import NO_LABEL, input_datasets
except ImportError:
    from model_args import add_model_arguments, model_config, model_sources   # run as a script
    from onnx_model import BACKENDS, OnnxModel
    from prediction_inputs import NO_LABEL, input_datasets

__all__ = ['BACKENDS', 'Classifier', 'InferenceModel', 'PLAIN_KERNEL_FAMILIES', 'create_predictor', 'load_config',
           'onednn_by_default', 'open_model', 'read_labels', 'run', 'softmax', 'topk']

MODEL_NAME = 'inference'

# Families whose exported graphs Paddle Inference (3.3.1) runs faster on its plain CPU kernels than
# with oneDNN.  img/s of the exported model, 2 threads, AMD EPYC (Zen 4), two alternating rounds,
# plain / oneDNN:  PerViT-T batch 1 17.1-18.9 / 7.9-8.0, batch 32 13.9-16.0 / 11.2-13.3;  VVT-tiny
# batch 1 6.1-7.2 / 4.0, batch 32 5.4-5.8 / 5.4-5.5 (their grouped norms, position maps and linear
# attention run as many small ops, each reordered into and out of oneDNN's layouts).  The others
# gain from oneDNN's fused attention and GEMMs: ViT-S/16 9.3-9.8 / 10.9-11.1 and 11.7-12.3 /
# 16.5-17.4, PiT-S 11.7-12.2 / 13.4-14.1 and 16.1-18.6 / 22.7-25.6, SP-ViT-S 6.8-7.9 / 8.8-9.2
# and 7.2 / 11.9-12.4.
# A graph exported with --cpu_kernels runs on plain kernels whatever the family: there oneDNN ran
# no family faster and slowed two down (img/s, same machine, two alternating rounds, plain / oneDNN,
# batch 32: VVT-tiny 15.3 / 5.4-5.5, PerViT-T 30.4-33.8 / 26.7-27.6, ViT-S/16 15.8-18.0 / 16.3-16.7,
# PiT-S 21.6-22.9 / 22.0-22.9, SP-ViT-S 9.4-11.0 / 9.7-10.1; batch 1: VVT-tiny 11.5-12.4 / 4.1,
# PerViT-T 28.1-29.1 / 23.1-24.6, ViT-S 14.9-15.3 / 14.0-14.2, PiT-S 19.6-20.0 / 18.1-18.9, SP-ViT-S
# 8.5-8.7 / 7.9-8.0): its GEMMs, norms and attention are already the fused kernels.  Since GroupNorm
# became a fused kernel too, oneDNN computes ViT-R50's such graph wrong (45% off), so
# `InferenceModel` refuses oneDNN for them.
PLAIN_KERNEL_FAMILIES = frozenset({'PerViT', 'VVT'})


def onednn_by_default(config, cpu_kernels=False):
    """Whether the CPU runs the exported model of `config` with oneDNN: no for a graph exported
    with --cpu_kernels (`cpu_kernels`); else yes, except for the families of
    `PLAIN_KERNEL_FAMILIES` (by its MODEL.TYPE); yes for None (no config, no family)."""
    return not cpu_kernels and (config is None or config.MODEL.TYPE not in PLAIN_KERNEL_FAMILIES)


def load_config(model_dir, source=None, opts=None):
    """The config of the exported model: `source` (a model name or a YAML file), else
    `model_dir/config.yaml`, with the `-opts` overrides `opts`.

    A config whose DATA.IMAGE_SIZE differs from the one exported is refused:
    the graph only accepts its own input size.
    """
    exported = os.path.join(model_dir, 'config.yaml')
    path = source or exported
    if path.endswith(('.yaml', '.yml')) and not os.path.isfile(path):
        raise FileNotFoundError(f'{path} not found: pass -model or -cfg, the model it was exported from')
    config = model_config(path, opts)
    if (source or opts) and os.path.isfile(exported):
        size = paddlevit.model_config(exported).DATA.IMAGE_SIZE
        if size != config.DATA.IMAGE_SIZE:
            raise ValueError(f'{path} has DATA.IMAGE_SIZE {config.DATA.IMAGE_SIZE}, but the model in '
                             f'{model_dir} was exported for {size}')
    return config


def create_predictor(model_dir, device='cpu', threads=None, onednn=True, paddle_log=False):
    """A Paddle Inference predictor for `model_dir/inference.{json,pdiparams}` (an export with
    `--cpu_kernels` only on the CPU, after `engine.cpu.exported.prepare` registered the kernels).

    `paddle_log`: leave Paddle's C++ log as it is instead of silencing it
    (`disable_glog_info`, which also lowers the log level for the rest of the
    process); `InferenceModel` captures it to name what oneDNN failed on.
    """
    prefix = os.path.join(model_dir, MODEL_NAME)
    model_file = next((prefix + ext for ext in ('.json', '.pdmodel') if os.path.isfile(prefix + ext)), None)
    if model_file is None or not os.path.isfile(prefix + '.pdiparams'):
        raise FileNotFoundError(f'{model_dir} holds no {MODEL_NAME}.json/.pdiparams: '
                                'make it with tools/export_model.py')
    exported.prepare(model_dir, device)     # a graph with the fused CPU kernels: checked, kernels registered
    config = inference.Config(model_file, prefix + '.pdiparams')
    if not paddle_log:
        config.disable_glog_info()
    if device == 'gpu':
        config.enable_use_gpu(256, 0)
    else:
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(threads or cpu_threads())
        switch = ('enable' if onednn else 'disable') + '_onednn'
        if not hasattr(config, switch):     # Paddle 3.0 names oneDNN by its old name, MKLDNN
            switch = switch.replace('onednn', 'mkldnn')
        getattr(config, switch)()
    return inference.create_predictor(config)


class InferenceModel:
    """A Paddle Inference predictor of an exported model, on oneDNN where oneDNN works.

    The one place that decides whether a model runs on oneDNN (`Classifier`,
    hence `predict.py`, and `tools/benchmark.py --inference` use it).  Paddle
    Inference 3.3.1's oneDNN passes fuse op patterns into kernels that fail for
    some graphs: a reshape -> transpose feeding a matmul whose other input is
    4-D becomes a `fused_matmul` that raises `dnnl::error`.  When that matmul's
    inputs are all constants (PerViT's position encoding before it was
    rewritten) the predictor's `constant_folding_pass` runs it and creation
    fails; otherwise the first run fails.  Either way Python sees only
    `RuntimeError: std::exception`.

    So with oneDNN on CPU, a failure while the predictor is built or while the
    first batch runs is retried without oneDNN.  If the retry works, one message
    names the oneDNN error (Paddle's C++ log line, captured for that, and the
    exception) and everything after runs without oneDNN.  If the retry fails
    too, the fault is not oneDNN's: the retry's error is raised, no message.
    Later batches are never retried.  Paddle silences its log level for the
    whole process once any predictor is built quietly, so only the first
    predictor of a process (as in `predict.py`) can quote the log line.
    """

    def __init__(self, model_dir, device='cpu', threads=None, onednn=True, log=print):
        self.model_dir, self.device, self.threads, self.log = model_dir, device, threads, log
        self.onednn = onednn and device == 'cpu'
        if self.onednn and exported.read_record(model_dir) is not None:
            # measured wrong: ViT-R50's export with the kernels gave logits 45% off under oneDNN
            # (plain kernels: right), its passes mishandle tensors around the fused ops
            raise UserError(f'{model_dir} was exported with --cpu_kernels: it runs on plain kernels only '
                            '(oneDNN\'s passes compute such graphs wrong); drop --onednn on')
        self.checked = False        # whether a batch has run
        if not self.onednn:
            self.predictor = create_predictor(model_dir, device, threads, onednn=False)
            return
        self.predictor, error, logged = _attempt(
            lambda: create_predictor(model_dir, device, threads, onednn=True, paddle_log=True))
        if error is not None:
            plain = create_predictor(model_dir, device, threads, onednn=False)   # raises if the model is at fault
            self._give_up_onednn('build the predictor', error, logged)
            self.predictor = plain

    def logits(self, images):
        """Logits [N, classes] for a float32 [N, 3, S, S] batch of preprocessed images."""
        if self.checked or not self.onednn:
            out = run(self.predictor, images)
        else:
            out, error, logged = _attempt(lambda: run(self.predictor, images))
            if error is not None:
                plain = create_predictor(self.model_dir, self.device, self.threads, onednn=False)
                out = run(plain, images)                # raises if the batch (or the model) is at fault
                self._give_up_onednn('run this model', error, logged)
                self.predictor = plain
        self.checked = True
        return out

    def _give_up_onednn(self, what, error, logged):
        self.onednn = False
        named = [ln.split('] ', 1)[-1].strip() for ln in logged]       # without glog's prefix
        raised = [ln.strip() for ln in str(error).splitlines() if 'Error' in ln] or [str(error).strip()]
        reason = '; '.join(text[:200] for text in named[:2] + [f'{type(error).__name__}: {raised[0]}'])
        self.log(f'oneDNN could not {what} ({reason}); running without oneDNN')


GLOG_WARNING = re.compile(r'^[WEF]\d{4} ')    # glog's prefix of a warning, error or fatal line


def _attempt(fn):
    """(fn(), None, []) or (None, the exception, Paddle's error lines), with Paddle's C++
    log (file descriptor 2) captured meanwhile.  The error lines are returned; of the
    rest, warnings (glog's W/E lines, Python's) go back to stderr and Paddle's pass
    chatter, which `disable_glog_info` would have silenced, is dropped."""
    sys.stderr.flush()
    saved = os.dup(2)
    result = error = None
    with tempfile.TemporaryFile() as f:
        os.dup2(f.fileno(), 2)
        try:
            result = fn()
        except Exception as e:          # noqa: BLE001  (Paddle raises a bare RuntimeError: std::exception)
            error = e
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        lines = f.read().decode('utf-8', 'replace').splitlines(keepends=True)
    logged = [ln for ln in lines if error is not None and ('exception' in ln.lower() or 'error' in ln.lower())]
    sys.stderr.write(''.join(ln for ln in lines if ln not in logged and (GLOG_WARNING.match(ln) or 'Warning' in ln)))
    return result, error, logged


def open_model(model_dir, backend='paddle', device='cpu', threads=None, onednn=True, log=print):
    """The exported model of `model_dir` on `backend`: an `InferenceModel` (Paddle Inference) or an
    `OnnxModel` (ONNX Runtime, CPU only); either gives `logits(images)`."""
    if backend == 'paddle':
        return InferenceModel(model_dir, device, threads, onednn, log)
    if backend != 'onnxruntime':
        raise ValueError(f'backend {backend!r}: one of {", ".join(BACKENDS)}')
    if device != 'cpu':
        raise UserError(f'--backend onnxruntime runs on the CPU only, not on --device {device}')
    return OnnxModel(model_dir, threads or cpu_threads())


class Classifier:
    """An exported model (`open_model`) with the eval preprocessing of its config."""

    def __init__(self, model_dir, config, device='cpu', threads=None, onednn=True, log=print, backend='paddle'):
        self.model = open_model(model_dir, backend, device, threads, onednn, log)
        self.config = config
        self.transform = paddlevit.create_transform(paddlevit.data_config(config))

    def logits(self, images):
        """Logits [N, classes] for a float32 [N, 3, S, S] batch of preprocessed images."""
        return self.model.logits(images)

    def preprocess(self, paths):
        """[N, 3, S, S] float32 batch of the image files, through the config's eval transform."""
        batch = []
        for path in paths:
            with open(path, 'rb') as f:
                data = f.read()
            try:
                batch.append(self.transform(decode_image(data)))
            except DecodeError as e:
                raise DecodeError(f'{path}: {e}') from None
        return np.stack(batch)

    def predict(self, paths, k=5):
        """(indices [N, k], probabilities [N, k]) of the top-k classes of each image file."""
        return topk(softmax(self.logits(self.preprocess(paths))), k)


def run(predictor, images):
    """Logits [N, classes] of the predictor on a float32 [N, 3, S, S] batch."""
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.reshape(list(images.shape))
    handle.copy_from_cpu(np.ascontiguousarray(images, dtype=np.float32))
    predictor.run()
    return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()


def softmax(logits):
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def topk(probs, k):
    """(indices, probabilities) of the k largest probabilities per row, largest first."""
    k = min(k, probs.shape[-1])
    order = np.argsort(-probs, axis=-1, kind='stable')[:, :k]
    return order, np.take_along_axis(probs, order, axis=-1)


def read_labels(path, num_classes=None):
    """Class names, one per line (line i names class i)."""
    with open(path, encoding='utf-8') as f:
        names = [line.rstrip('\r\n') for line in f]
    while names and not names[-1].strip():
        names.pop()
    if num_classes is not None and len(names) != num_classes:
        raise ValueError(f'{path} names {len(names)} classes, the model predicts {num_classes}')
    return names


class Progress:
    """A one-line text progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, total, quiet=False, width=30):
        self.total, self.width = total, width
        self.shown = not quiet and sys.stderr.isatty()
        self.start = time.perf_counter()

    def draw(self, done):
        if self.shown:
            filled = self.width * done // max(self.total, 1)
            rate = done / max(time.perf_counter() - self.start, 1e-9)
            sys.stderr.write(f'\r[{"#" * filled}{"." * (self.width - filled)}] {done}/{self.total} '
                             f'images, {rate:.1f} img/s')
            sys.stderr.flush()

    def clear(self):
        if self.shown:
            sys.stderr.write('\r' + ' ' * (self.width + 40) + '\r')
            sys.stderr.flush()


def batches(datasets, batch_size):
    """(paths, [N, 3, S, S] images, labels) of the readable images of `datasets`, `batch_size` at a
    time, and after each the count of images read so far (unreadable ones included)."""
    paths, images, labels, read = [], [], [], 0
    for dataset in datasets:
        for index in range(len(dataset)):
            sample = dataset[index]                 # None: unreadable, logged and counted by the dataset
            read += 1
            if sample is not None:
                paths.append(dataset.path(index))
                images.append(sample[0])
                labels.append(sample[1])
            if len(paths) == batch_size:
                yield paths, np.stack(images), labels, read
                paths, images, labels = [], [], []
    if paths:
        yield paths, np.stack(images), labels, read


def write_results(paths, indices, probs, k, labels, table):
    """The top-k of each image: a CSV row each with `table` (a csv.writer), else printed."""
    for path, row_idx, row_prob in zip(paths, indices[:, :k], probs[:, :k]):
        if table is not None:
            table.writerow([path] + [cell for i, p in zip(row_idx, row_prob)
                                     for cell in (int(i), f'{p:.6f}', *([labels[i]] if labels else []))])
            continue
        print(path)
        for rank, (i, p) in enumerate(zip(row_idx, row_prob), 1):
            name = f'  {labels[i]}' if labels else ''
            print(f'  {rank}. class {i:>4d}  prob {p:.4f}{name}')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('images', nargs='+', help='image files, folders of images, list files')
    parser.add_argument('--model_dir', required=True, help='folder written by tools/export_model.py')
    add_model_arguments(parser, required=False, cfg_help='YAML config (default: MODEL_DIR/config.yaml)')
    parser.add_argument('--labels', default=None, help='class names, one per line')
    parser.add_argument('--topk', type=int, default=5)
    parser.add_argument('--batch_size', type=int, default=32)
    parser.add_argument('--csv', default=None, help='write the top-k of each image to this CSV file')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    parser.add_argument('--device', choices=('cpu', 'gpu'), default='cpu')
    parser.add_argument('--threads', type=int, default=None, help='CPU threads (default: all cores)')
    parser.add_argument('--onednn', choices=('auto', 'on', 'off'), default='auto',
                        help='CPU, Paddle Inference: oneDNN (on) or plain kernels (off); auto (default): by the '
                             'model\'s family, the faster measured (onednn_by_default)')
    parser.add_argument('--no-onednn', dest='onednn', action='store_const', const='off', help='= --onednn off')
    parser.add_argument('--backend', choices=BACKENDS, default='paddle',
                        help='paddle: Paddle Inference (default); onnxruntime: ONNX Runtime on the inference.onnx '
                             'of export_model.py --onnx (CPU)')
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.topk < 1:
        parser.error('--batch_size and --topk must be at least 1')
    if args.backend == 'onnxruntime' and (args.device != 'cpu' or args.onednn != 'auto'):
        parser.error('--backend onnxruntime runs on the CPU, without --device gpu or --onednn (Paddle\'s)')

    if args.device == 'cpu':
        configure_cpu()
    config = load_config(args.model_dir, model_sources(args), args.opts)
    labels = read_labels(args.labels, config.MODEL.NUM_CLASSES) if args.labels else None
    cpu_kernels = exported.read_record(args.model_dir) is not None
    onednn = onednn_by_default(config, cpu_kernels) if args.onednn == 'auto' else args.onednn == 'on'
    classifier = Classifier(args.model_dir, config, args.device, args.threads, onednn=onednn, backend=args.backend)
    datasets = input_datasets(args.images, config, classifier.transform)
    print(f'preprocessing: {describe_eval_transform(config)}')
    csv_file = open(args.csv, 'w', newline='', encoding='utf-8') if args.csv else None
    table = csv.writer(csv_file) if csv_file else None
    progress = Progress(sum(len(d) for d in datasets), args.quiet)
    scored, hits, labelled = 0, np.zeros(2, np.int64), 0      # hits: top-1, top-5
    start = time.perf_counter()
    try:
        for paths, images, targets, read in batches(datasets, args.batch_size):
            indices, probs = topk(softmax(classifier.logits(images)), max(args.topk, 5))
            progress.clear()
            write_results(paths, indices, probs, args.topk, labels, table)
            scored += len(paths)
            targets = np.asarray(targets)
            known = targets != NO_LABEL
            labelled += int(known.sum())
            hits += [(indices[known, :n] == targets[known, None]).any(axis=1).sum() for n in (1, 5)]
            progress.draw(read)
    finally:
        if csv_file:
            csv_file.close()
    seconds = time.perf_counter() - start
    progress.clear()
    skipped = sum(d.num_missing + d.take_skipped() for d in datasets)
    print(f'{scored} images in {seconds:.2f} s: {scored / seconds:.1f} images/s (reading, preprocessing and '
          f'inference, batch {args.batch_size}; model load excluded)'
          + (f'; skipped {skipped} unreadable image(s)' if skipped else '')
          + (f'; top-k written to {args.csv}' if args.csv else ''))
    if labelled:
        print(f'accuracy over {labelled} labelled images: top-1 {100 * hits[0] / labelled:.2f}%, '
              f'top-5 {100 * hits[1] / labelled:.2f}%')
    return 0 if scored else 1


if __name__ == '__main__':
    from engine.errors import cli
    sys.exit(cli(main))
