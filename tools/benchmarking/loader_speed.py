"""`--loader`: img/s of the engine's train data pipeline and of the PaddleViT-style PIL pipeline
(`baseline.py`) on the same images, in one process.

Both read DATA.DATA_PATH / the list of `mode`, with DATA.BATCH_SIZE (train) or
BATCH_SIZE_EVAL (val) and DATA.NUM_WORKERS workers.  The first two batches
(worker start-up) are not timed.
"""
import gc
import os
import shutil
import tempfile
import time

from .process import setup_paddle

try:
    from .. import model_args                  # imported as tools.benchmarking
except ImportError:
    import model_args                          # under tools/benchmark.py, whose folder is sys.path[0]

__all__ = ['benchmark_loaders', 'benchmark_loader', 'benchmark_baseline_loader', 'time_loader',
           'write_sample_jpegs']


def time_loader(loader, num_batches, untimed=2):
    """Images per second over `num_batches` batches after `untimed` ones (re-iterating if needed)."""
    it = iter(loader)
    count, start = 0, None
    for i in range(num_batches + untimed):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        if i == untimed - 1:
            start = time.perf_counter()
        elif i >= untimed:
            count += batch[0].shape[0]
    if start is None:   # untimed == 0
        raise ValueError('untimed must be >= 1')
    rate = count / (time.perf_counter() - start)
    # Stop the workers before the caller may delete the images they are still prefetching.
    del it
    if hasattr(loader, 'shutdown'):
        loader.shutdown()
    gc.collect()
    return rate


def benchmark_loader(config, mode='train', num_batches=30):
    """img/s of build_dataset + build_dataloader (this engine) for `mode`."""
    from engine.data import build_dataloader, build_dataset
    dataset = build_dataset(config, mode)
    loader = build_dataloader(config, dataset, mode, distributed=False)
    return time_loader(loader, num_batches)


def benchmark_baseline_loader(config, mode='train', num_batches=30):
    """img/s of the same list read as PaddleViT does: PIL decode, PIL RandAugment,
    paddle.vision.transforms, paddle.io.DataLoader (shared memory when /dev/shm has room)."""
    import paddle
    from engine.data.loader import shared_memory_ok
    from .baseline import PaddleViTListDataset, paddlevit_transform
    data = config.DATA
    list_file = os.path.join(data.DATA_PATH, data.TRAIN_LIST if mode == 'train' else data.VAL_LIST)
    dataset = PaddleViTListDataset(data.DATA_PATH, list_file, config.MODEL.NUM_CLASSES,
                                   paddlevit_transform(config, mode))
    batch_size = data.BATCH_SIZE if mode == 'train' else (data.BATCH_SIZE_EVAL or data.BATCH_SIZE)
    sampler = paddle.io.DistributedBatchSampler(dataset, batch_size, num_replicas=1, rank=0,
                                                shuffle=mode == 'train', drop_last=mode == 'train')
    ok = shared_memory_ok(batch_size * 3 * data.IMAGE_SIZE ** 2 * 4, data.NUM_WORKERS)[0]
    loader = paddle.io.DataLoader(dataset, batch_sampler=sampler, num_workers=data.NUM_WORKERS,
                                  use_shared_memory=ok)
    return time_loader(loader, num_batches)


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
    """Print (and return) the img/s of both pipelines with the train transforms of the first
    `-model` / `-cfg`, as a markdown table.

    `--data_path` is a folder of images: its `train_list.txt` is used when present,
    otherwise every image below it is listed (label 0) in a temporary list file.
    Without `--data_path`, 256 JPEGs of 500 x 375 are written to a temporary folder.
    """
    setup_paddle(args.threads)
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
    source = model_args.model_sources(args)[0]
    opts += ['DATA.DATA_PATH', root, 'DATA.TRAIN_LIST', list_file,
             'DATA.NUM_WORKERS', str(args.workers), 'DATA.BATCH_SIZE', str(args.batch_size)]
    if args.image_size:
        opts += ['DATA.IMAGE_SIZE', str(args.image_size)]
    config = model_args.model_config(source, list(args.opts or []) + opts)
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
    images = 'sample JPEGs of 500x375' if args.data_path in temporary else f'images under {root}'
    print(f'train pipeline of {os.path.basename(source)} ({config.DATA.IMAGE_SIZE} px, '
          f'RandAugment {config.TRAIN.RAND_AUGMENT}, random erase {config.TRAIN.RANDOM_ERASE_PROB}), '
          f'{images}, batch {args.batch_size}, {args.workers} workers, '
          f'{args.batches} batches timed after 2\n')
    print('| loader | img/s |\n|---|---|')
    for name, rate in rows:
        print(f'| {name} | {rate:.1f} |')
    print(f'\nengine / PaddleViT: {rows[0][1] / rows[1][1]:.2f}x')
    return rows
