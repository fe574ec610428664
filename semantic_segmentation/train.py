"""Train or evaluate a segmentor: the iteration-based run behind main_single_gpu.py / main_multi_gpu.py.

The flags are the classification launcher's (`engine.launcher.build_parser`):
-cfg, -data_path (the ADE20K root), -output, -batch_size, -pretrained, -resume,
-eval, -overwrite, -opts.  `-pretrained` takes either a classification
`.pdparams` (the backbone's initialisation, strict on its keys) or a
segmentor's own checkpoint (every key, strict): what the file holds decides.

Multi-process: under `python -m paddle.distributed.launch` each process joins
the group (gloo on CPU, NCCL on GPU); the model is wrapped in DataParallel and
its BatchNorms become SyncBatchNorm on GPU (the recipe's SyncBN; Paddle has no
CPU SyncBatchNorm, so CPU processes average their running statistics before
each evaluation and checkpoint: `average_batchnorm_statistics`).  Each rank
evaluates its share of the validation images and the confusion matrices are
summed.  Checkpoints (`<NAME>-Iter-<i>.*`, latest.txt, `<NAME>-Best.pdparams` by
mIoU) go through the engine's CheckpointManager: atomic, bounded (SAVE_KEEP,
SAVE_FREQ in iterations), never non-finite.
"""
import os
import sys
import time

import numpy as np
import paddle

from engine import distributed as dist
from engine.checkpoint import CheckpointManager, check_output_folder, resolve_resume, resume
from engine.config import ConfigError
from engine.cpu import settings as cpu_settings
from engine.errors import exit_on_user_error, UserError
from engine.hooks import FamilyHooks
from engine.launcher import build_parser
from engine.logger import FILE_ONLY, ScalarWriter, get_logger, run_finished
from engine.weights import load_checkpoint, load_weights, weights_path

from .ade20k import ADE20K
from .backbone import load_backbone_weights
from .config import get_config
from .metrics import confusion_matrix, segmentation_metrics
from .schedule import PolyWarmup
from .segmentor import build_segmentor
from .transforms import EvalTransform, TrainTransform


def build_datasets(config, splits=('train', 'val')):
    seg, data = config.SEG, config.DATA
    transforms = {
        'train': TrainTransform(data.IMAGE_SIZE, seg.DATA.IMG_SCALE, seg.DATA.RATIO_RANGE, seg.DATA.CAT_MAX_RATIO,
                                seg.DATA.FLIP_PROB, seg.DATA.PHOTOMETRIC, data.MEAN, data.STD, seg.IGNORE_INDEX),
        'val': EvalTransform(data.MEAN, data.STD)}
    return {split: ADE20K(data.DATA_PATH, split, transforms[split], seg.DATA.REDUCE_ZERO_LABEL) for split in splits}


def load_pretrained(model, path, removed, log):
    """A segmentor checkpoint (keys under `backbone.`) strictly into the whole model, else a
    classification checkpoint into the backbone (backbone.load_backbone_weights)."""
    path = weights_path(path)
    if not os.path.isfile(path):
        raise ConfigError(f'MODEL.PRETRAINED (-pretrained) {path}: no such file')
    state = load_checkpoint(path)
    if any(k.startswith('backbone.') for k in state):
        load_weights(model, state, what='pretrained', name=path, log=log)
    else:
        load_backbone_weights(model.backbone, state, removed, path, log=log)


def evaluate(model, dataset, config, rank=0, world=1):
    """Metrics (metrics.segmentation_metrics) of `model` on `dataset`, this rank taking every
    world-th image; the confusion matrices of all ranks are summed."""
    seg = config.SEG
    model.eval()
    confusion = np.zeros((seg.NUM_CLASSES, seg.NUM_CLASSES), np.int64)
    for index in range(rank, len(dataset), world):
        image, label = dataset[index]
        probs = model.predict(paddle.to_tensor(image[None]), seg.TEST.MODE, config.DATA.IMAGE_SIZE,
                              seg.TEST.STRIDE, seg.TEST.SCALES, seg.TEST.FLIP, seg.DATA.IMG_SCALE,
                              out_size=label.shape)
        confusion += confusion_matrix(probs.argmax(axis=1)[0].numpy(), label, seg.NUM_CLASSES, seg.IGNORE_INDEX)
    confusion = dist.all_reduce_sum(paddle.to_tensor(confusion)).numpy()
    return segmentation_metrics(confusion)


def describe(metrics):
    return (f'Validation mIoU: {metrics["mIoU"]:.4f}, aAcc: {metrics["aAcc"]:.4f}, '
            f'mAcc: {metrics["mAcc"]:.4f}')


def per_class_table(metrics):
    rows = [f'{c:5d} {iou:8.4f} {acc:8.4f}' for c, (iou, acc) in enumerate(zip(metrics['IoU'], metrics['Acc']))]
    return 'class      IoU      Acc\n' + '\n'.join(rows)


def average_batchnorm_statistics(model):
    """Make every rank's BatchNorm running mean / variance the mean over ranks.

    Without SyncBatchNorm (CPU processes) each rank's statistics follow only its
    own batches: ranks would evaluate different models and the saved weights
    would be rank 0's alone.  Called before every evaluation and checkpoint.
    """
    world = dist.world_size()
    for layer in model.sublayers():
        if isinstance(layer, paddle.nn.layer.norm._BatchNormBase):
            for buffer in (layer._mean, layer._variance):
                buffer.set_value(dist.all_reduce_sum(buffer.detach().clone()) / world)


def _train_batches(loader, sampler):
    """The training batches forever, one pass of the sampler after another (reshuffled per pass)."""
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def run(config, distributed=False):
    """Train (or with EVAL evaluate) in this process; returns the last validation metrics."""
    if config.AMP:
        raise ConfigError('-amp / AMP: mixed precision is not supported by the segmentation runs yet')
    rank, world = dist.init(distributed)
    device = dist.device()
    paddle.set_device(device)
    cpu_settings.configure()   # threads, allocator, Paddle flags: on the CPU only
    resume_prefix = None
    if not config.EVAL:
        resume_prefix = resolve_resume(config.MODEL.RESUME) if config.MODEL.RESUME else None
        check_output_folder(config.SAVE, resume_prefix, config.OVERWRITE)
    logger = get_logger(config.SAVE, rank)
    logger.info(f'command: {" ".join(sys.argv)}', extra=FILE_ONLY)
    if rank == 0:
        logger.info(f'config:\n{config}', extra=FILE_ONLY)
    paddle.seed(config.SEED + rank)
    np.random.seed((config.SEED + rank) % 2**32)

    model, removed = build_segmentor(config)
    params = sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient)
    logger.info(f'process {rank}/{world} on {device}; model {config.MODEL.NAME}: {params:,} trainable parameters')
    if config.MODEL.PRETRAINED:
        load_pretrained(model, config.MODEL.PRETRAINED, removed, logger.info)
    datasets = build_datasets(config, ('val',) if config.EVAL else ('train', 'val'))
    test = config.SEG.TEST
    logger.info(f'validation: {len(datasets["val"])} images, {test.MODE} inference, scales {list(test.SCALES)}'
                f'{", flip" if test.FLIP else ""}')
    if config.EVAL:
        start = time.time()
        metrics = evaluate(model, datasets['val'], config, rank, world)
        logger.info(f'{describe(metrics)} ({time.time() - start:.1f}s)')
        logger.info(per_class_table(metrics), extra=FILE_ONLY)
        run_finished()
        return metrics

    train_cfg = config.SEG.TRAIN
    scheduler = PolyWarmup(config.TRAIN.BASE_LR, train_cfg.MAX_ITERS, train_cfg.WARMUP_ITERS,
                           train_cfg.WARMUP_RATIO, train_cfg.POWER, train_cfg.MIN_LR)
    clip = paddle.nn.ClipGradByGlobalNorm(config.TRAIN.GRAD_CLIP) if config.TRAIN.GRAD_CLIP else None
    opt = config.TRAIN.OPTIMIZER
    if opt.NAME.lower() != 'adamw':
        raise ConfigError(f'TRAIN.OPTIMIZER.NAME {opt.NAME!r}: the segmentation runs use AdamW')
    optimizer = paddle.optimizer.AdamW(
        learning_rate=scheduler, parameters=[p for p in model.parameters() if not p.stop_gradient],
        beta1=opt.BETAS[0], beta2=opt.BETAS[1], epsilon=opt.EPS, weight_decay=config.TRAIN.WEIGHT_DECAY,
        grad_clip=clip)
    checkpoints = CheckpointManager(config.SAVE, config.MODEL.NAME, config.SAVE_FREQ, config.SAVE_KEEP,
                                    log=logger.info if rank == 0 else None, unit='Iter')
    start_iter, best = 0, -1.0
    if resume_prefix:
        start_iter, extra = resume(resume_prefix, model, optimizer, scheduler)
        best = extra.get('best_miou', -1.0)
        checkpoints.last_good = resume_prefix
        logger.info(f'resumed from {resume_prefix}: {start_iter} iterations done, next lr {scheduler():.6e}')

    train_set = datasets['train']
    sampler = paddle.io.DistributedBatchSampler(train_set, config.DATA.BATCH_SIZE, shuffle=True, drop_last=True)
    if len(sampler) == 0:
        raise ConfigError(f'{len(train_set)} training images cannot fill one batch of DATA.BATCH_SIZE '
                          f'{config.DATA.BATCH_SIZE} on each of {world} processes')
    loader = paddle.io.DataLoader(train_set, batch_sampler=sampler, num_workers=config.DATA.NUM_WORKERS,
                                  use_shared_memory=False)
    train_model = model
    if world > 1:
        if device.startswith('gpu'):
            model = paddle.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        train_model = paddle.DataParallel(model)
    logger.info(f'training: {len(train_set)} images, global batch {config.DATA.BATCH_SIZE * world}, '
                f'{train_cfg.MAX_ITERS} iterations, lr {config.TRAIN.BASE_LR:.2e} poly (power {train_cfg.POWER}) '
                f'after {train_cfg.WARMUP_ITERS} warmup iterations')
    writer = ScalarWriter(config.SAVE, rank)
    metrics, window, tic = {}, [], time.time()
    batches = _train_batches(loader, sampler)
    for it in range(start_iter + 1, train_cfg.MAX_ITERS + 1):
        images, labels = next(batches)
        train_model.train()
        losses = model.losses(train_model(images), labels)
        loss = losses['total']
        if not np.isfinite(loss.item()):
            raise checkpoints.diverged(it, f'training loss is {loss.item()}')
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        lr = optimizer.get_lr()
        scheduler.step()
        window.append({k: v.item() for k, v in losses.items()})
        if it % config.REPORT_FREQ == 0 or it == train_cfg.MAX_ITERS:
            means = {k: np.mean([w[k] for w in window]) for k in window[0]}
            logger.info(f'Iter[{it}/{train_cfg.MAX_ITERS}], lr {lr:.3e}, '
                        + ', '.join(f'{k} loss {v:.4f}' for k, v in means.items())
                        + f', {(time.time() - tic) / len(window):.2f} s/iter')
            writer.add_scalar('train/loss', means['total'], it)
            window, tic = [], time.time()
        last = it == train_cfg.MAX_ITERS
        if world > 1 and not device.startswith('gpu') and (
                it % train_cfg.EVAL_INTERVAL == 0 or it % train_cfg.CHECKPOINT_INTERVAL == 0 or last):
            average_batchnorm_statistics(model)
        if it % train_cfg.EVAL_INTERVAL == 0 or last:
            metrics = evaluate(model, datasets['val'], config, rank, world)
            logger.info(f'Iter[{it}/{train_cfg.MAX_ITERS}], {describe(metrics)}')
            logger.info(per_class_table(metrics), extra=FILE_ONLY)
            writer.add_scalar('val/mIoU', metrics['mIoU'], it)
            if metrics['mIoU'] > best and rank == 0:
                checkpoints.save_best(model, epoch=it)
                logger.info(f'new best mIoU {metrics["mIoU"]:.4f}: saved {checkpoints.prefix("Best")}.pdparams')
            best = max(best, metrics['mIoU'])
        if (it % train_cfg.CHECKPOINT_INTERVAL == 0 or last) and rank == 0:
            prefix = checkpoints.save(it, model, optimizer, scheduler, extra={'best_miou': best})
            logger.info(f'saved {prefix}.pdparams / .pdopt')
    writer.close()
    run_finished()
    return metrics


def main(distributed=False, argv=None):
    """Parse the flags, assemble the config and run; a UserError ends the process with its message."""
    try:
        return execute(distributed, argv)
    except UserError as error:
        exit_on_user_error(error, hard=distributed and dist.launched_by_paddle())


def execute(distributed=False, argv=None):
    """`main`, raising UserErrors to the caller (tests, programs)."""
    args = build_parser(FamilyHooks()).parse_args(argv)
    if not args.cfg:
        raise ConfigError('-cfg is required: a segmentation YAML, e.g. -cfg '
                          'configs/upernet_lvvit_s_512x512_160k_ade20k.yaml')
    return run(get_config(args=args), distributed)
