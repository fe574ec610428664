"""One measurement in this process: a model's eval or train-step img/s and its peak memory.

- eval: img/s of `model(images)` under `no_grad` in eval mode (or, with `inference`, of
  the exported model through Paddle Inference, see `inference.py`);
- train: img/s of one optimizer step (forward in train mode, cross-entropy on random
  labels, backward, AdamW step, clear_grad);
each after `warmup` untimed iterations (the first runs compile under `to_static`), over
`iters` timed ones, on random inputs.  Peak memory is, on CPU, the peak resident set
size of the process (`peak MB`) and how far it rose above the process with the model
(and optimizer) built but nothing run yet (`work MB`: activations, gradients, optimizer
moments, workspace); on GPU, `paddle.device.cuda.max_memory_allocated`.  The model is
built by `paddlevit.create_model` for each image size (`DATA.IMAGE_SIZE`), so position
embeddings and other size-dependent tensors are right.  A model whose training output
is not plain logits (a distilled (class, distillation) pair, token labeling's dense
output) is trained on its class logits.
"""
import time

from .process import peak_rss_bytes, rss_bytes, setup_paddle

try:
    from .. import model_args                  # imported as tools.benchmarking
except ImportError:
    import model_args                          # under tools/benchmark.py, whose folder is sys.path[0]

__all__ = ['make_job', 'measure', 'class_logits', 'path_of']


def make_job(source, image_size, mode, args):
    """The JSON-able description of one measurement, which `measure` runs.  `source` is a model
    name or a config file (kept under 'cfg', the key of saved measurements); `mode` eval, train or
    exported (eval through Paddle Inference); `args` the benchmark's parsed flags."""
    return {'cfg': source, 'opts': list(args.opts or []), 'image_size': image_size,
            'mode': 'train' if mode == 'train' else 'eval', 'inference': mode == 'exported',
            'batch_size': args.batch_size, 'warmup': args.warmup, 'iters': args.iters,
            'threads': args.threads, 'to_static': args.to_static, 'device': args.device,
            'backend': getattr(args, 'backend', 'paddle') if mode == 'exported' else None,
            'cpu_kernels': bool(getattr(args, 'cpu_kernels', False)) and mode == 'exported',
            'flop_rate': bool(getattr(args, 'flop_rate', False)) and mode != 'train'}


def path_of(job):
    """What `job` measures, as reports name it: eval, train, exported (a portable export), or
    exported --cpu_kernels (an export with the fused CPU kernels)."""
    if job['mode'] == 'train' or not job.get('inference'):
        return job['mode']
    return 'exported --cpu_kernels' if job.get('cpu_kernels') else 'exported'


def class_logits(out):
    """The class logits of a training-mode output: logits, a (class, distillation) pair,
    or token labeling's dense output (a dict with 'cls_logits')."""
    if isinstance(out, dict):
        return out['cls_logits']
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


def measure(job):
    """Run the measurement `job` (made by `make_job`) in this process; returns its row."""
    paddle = setup_paddle(job['threads'])
    import paddle.nn.functional as F

    device = job['device']
    if device == 'auto':
        device = 'gpu' if paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() else 'cpu'
    paddle.set_device(device)
    on_gpu = device == 'gpu'

    # the swept image size comes after -opts, so it wins over a DATA.IMAGE_SIZE there
    opts = list(job['opts']) + (['DATA.IMAGE_SIZE', str(job['image_size'])] if job['image_size'] else [])
    paddle.seed(0)
    model = model_args.create_model(job['cfg'], opts)
    config = model.config
    size, batch = config.DATA.IMAGE_SIZE, job['batch_size']
    if config.TRAIN.RECOMPUTE and job['mode'] == 'train':   # -opts TRAIN.RECOMPUTE True, as the launcher does
        model.set_grad_checkpointing(True)
    params = sum(int(p.numel()) for p in model.parameters())
    images = paddle.randn([batch, config.DATA.IMAGE_CHANNELS, size, size])
    labels = paddle.randint(0, config.MODEL.NUM_CLASSES, [batch])

    net = paddle.jit.to_static(model, full_graph=True, backend=None) if job['to_static'] else model
    onednn = None
    if job['mode'] == 'eval' and job.get('inference'):
        from .inference import inference_step
        step, onednn = inference_step(model, size, images.numpy(), device, job['threads'],
                                      job.get('backend') or 'paddle', bool(job.get('cpu_kernels')))
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
    base = paddle.device.cuda.memory_allocated() if on_gpu else rss_bytes()
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
    peak = paddle.device.cuda.max_memory_allocated() if on_gpu else peak_rss_bytes()
    exported = bool(job.get('inference')) and job['mode'] == 'eval'
    row = {
        'model': config.MODEL.NAME, 'cfg': job['cfg'], 'image size': size, 'batch': batch,
        'mode': path_of(job), 'img/s': batch * job['iters'] / seconds,
        'peak MB': peak / 2 ** 20, 'work MB': (peak - base) / 2 ** 20,
        'params (M)': params / 1e6, 'threads': job['threads'], 'device': device,
        'to_static': job['to_static'], 'inference': exported,
        'onednn': onednn, 'backend': job.get('backend') if exported else None,
        'cpu_kernels': bool(job.get('cpu_kernels')) and exported,
        'seconds per iter': seconds / job['iters'],
        'warmup': job['warmup'], 'iters': job['iters'], 'recompute': bool(config.TRAIN.RECOMPUTE),
        'drop path': config.MODEL.DROPPATH,
    }
    if job.get('flop_rate') and job['mode'] == 'eval':   # after the figures above: tracing costs memory
        from .flop_rate import model_gflops, sgemm_gflops
        row['GFLOPs'], row['GFLOP/s'] = model_gflops(model, size, row['img/s'])
        row['sgemm GFLOP/s'] = max(sgemm_gflops(paddle).values())
        row['% of sgemm'] = 100 * row['GFLOP/s'] / row['sgemm GFLOP/s']
    return row
