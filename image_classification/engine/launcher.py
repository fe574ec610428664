"""The one entry point behind every family's `main_single_gpu.py` / `main_multi_gpu.py`.

    main(get_config, build_model, distributed=False, hooks=None)

Single process: runs here, on the GPU when Paddle has CUDA, else on the CPU.
Multi-process (`distributed=True`): under `python -m paddle.distributed.launch`
(one or many nodes; `--ips` for several) each launched process joins the group;
run directly, it spawns one process per visible GPU (or `-nprocs N` CPU
processes) with `paddle.distributed.spawn`.  No process-group code lives here.
"""
import argparse
import os
import random
import sys
import time

import numpy as np
import paddle

from . import distributed as dist
from . import runtime
from .checkpoint import CheckpointManager, load_pretrained, resolve_resume, resume
from .config import ConfigError
from .ema import ModelEMA
from .hooks import FamilyHooks
from .logger import ScalarWriter, get_logger
from .optim import build_optimizer, build_scheduler, scaled_lrs
from .trainer import TrainState, evaluate, train_one_epoch



def build_parser(hooks):
    parser = argparse.ArgumentParser(
        description='Train or evaluate an image classifier (PaddleViT-compatible flags).')
    parser.add_argument('-cfg', type=str, default=None, help='YAML config of the variant')
    parser.add_argument('-dataset', type=str, default=None,
                        help='imagenet2012 (default: lists, else class folders) | imagelist | imagefolder')
    parser.add_argument('-data_path', type=str, default=None,
                        help='folder holding train_list.txt / val_list.txt, or train/<class>/ and val/<class>/')
    parser.add_argument('-output', type=str, default=None, help='output folder (config SAVE)')
    parser.add_argument('-batch_size', type=int, default=None, help='per-process training batch')
    parser.add_argument('-batch_size_eval', type=int, default=None, help='per-process evaluation batch')
    parser.add_argument('-image_size', type=int, default=None)
    parser.add_argument('-num_classes', type=int, default=None)
    parser.add_argument('-accum_iter', type=int, default=None, help='gradient accumulation steps')
    parser.add_argument('-pretrained', type=str, default=None, help='.pdparams to start from (fine-tuning)')
    parser.add_argument('-teacher_model_path', type=str, default=None, help='teacher .pdparams (distillation)')
    parser.add_argument('-resume', type=str, default=None, help='checkpoint prefix or output folder')
    parser.add_argument('-last_epoch', type=int, default=None)
    parser.add_argument('-eval', action='store_true', help='evaluate -pretrained weights and exit')
    parser.add_argument('-amp', action='store_true', help='mixed precision (AMP_LEVEL, AMP_DTYPE)')
    parser.add_argument('-nprocs', type=int, default=None,
                        help='processes to spawn when not under paddle.distributed.launch '
                             '(default: visible GPUs, or 1 on CPU)')
    parser.add_argument('-opts', nargs='+', default=None, help='config overrides: KEY VALUE ...')
    hooks.add_arguments(parser)
    return parser


def main(get_config, build_model, distributed=False, hooks=None, argv=None):
    """Parse flags, assemble the config, and train or evaluate (see module docstring)."""
    hooks = hooks or FamilyHooks()
    parser = build_parser(hooks)
    args = parser.parse_args(argv)
    try:
        config = get_config(args=args)
    except ConfigError as e:
        parser.error(str(e))
    if distributed and not dist.launched_by_paddle():
        nprocs = args.nprocs
        if nprocs is None:
            cuda = paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
            nprocs = paddle.device.cuda.device_count() if cuda else 1
        if nprocs > 1:
            paddle.distributed.spawn(run, args=(config, build_model, hooks, args, True), nprocs=nprocs)
            return None
    return run(config, build_model, hooks, args, distributed)


def _seed_everything(seed):
    paddle.seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _epoch_seed(config, epoch, rank):
    """Each epoch's randomness depends only on (SEED, epoch, rank): resume is exact."""
    return config.SEED + 100003 * epoch + 1009 * rank


def _amp_settings(config, on_gpu):
    enable = bool(config.AMP)
    return {'enable': enable, 'level': config.AMP_LEVEL, 'dtype': config.AMP_DTYPE}, \
        enable and on_gpu and config.AMP_DTYPE == 'float16'


def run(config, build_model, hooks, args, distributed):
    """Train or evaluate in this process (one rank of a group when distributed)."""
    from . import data, losses   # imported here: workers must not pay for them at spawn

    rank, world = dist.init(distributed)
    device = dist.device()
    paddle.set_device(device)
    logger = get_logger(config.SAVE, rank)
    logger.info(f'{" ".join(sys.argv)}\nprocess {rank}/{world} on {device}, '
                f'paddle {paddle.__version__}, CPU threads {runtime.threads or os.environ.get("OMP_NUM_THREADS")}')
    if rank == 0:
        logger.info(f'config:\n{config}')
    _seed_everything(config.SEED + rank)

    model = build_model(config)
    params = sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient)
    logger.info(f'model {config.MODEL.NAME} ({config.MODEL.TYPE}): {params:,} trainable parameters')
    if config.MODEL.PRETRAINED:
        load_pretrained(model, config.MODEL.PRETRAINED, log=logger.info)

    amp, use_scaler = _amp_settings(config, device.startswith('gpu'))
    val_dataset = hooks.build_dataset(config, 'val') or data.build_dataset(config, 'val', log=logger.info)
    if rank == 0 and getattr(val_dataset, 'classes', None):   # class folders: name the indices
        data.write_labels(os.path.join(config.SAVE, 'labels.txt'), val_dataset.classes)
        logger.info(f'class names (line i = class i): {os.path.join(config.SAVE, "labels.txt")}')
    val_loader = data.build_dataloader(config, val_dataset, 'val', distributed=world > 1)
    logger.info(f'eval transform: {data.describe_eval_transform(config)}')

    if config.EVAL:
        if not config.MODEL.PRETRAINED:
            logger.info('WARNING: -eval without -pretrained evaluates random weights')
        start = time.time()
        loss, top1, top5, count = evaluate(model, val_loader, amp)
        logger.info(f'Validation Loss: {loss:.4f}, Validation Acc@1: {top1 / 100:.4f}, '
                    f'Validation Acc@5: {top5 / 100:.4f} ({count} images, {time.time() - start:.1f}s)')
        hooks.after_eval(model, config, args, logger)
        return {'loss': loss, 'acc1': top1, 'acc5': top5, 'count': count}

    train_dataset = hooks.build_dataset(config, 'train') or data.build_dataset(config, 'train', log=logger.info)
    train_loader = data.build_dataloader(config, train_dataset, 'train', distributed=world > 1)
    steps_per_epoch = -(-len(train_loader) // max(1, config.TRAIN.ACCUM_ITER))
    scheduler = build_scheduler(config, steps_per_epoch, world)
    optimizer = build_optimizer(config, model, scheduler)
    if config.AMP and config.AMP_LEVEL == 'O2' and device.startswith('gpu'):
        model, optimizer = paddle.amp.decorate(models=model, optimizers=optimizer, level='O2',
                                               dtype=config.AMP_DTYPE, master_weight=True)
    scaler = paddle.amp.GradScaler(enable=use_scaler, init_loss_scaling=2.**16)
    ema = ModelEMA(model, config.TRAIN.MODEL_EMA_DECAY) if config.TRAIN.MODEL_EMA else None
    batch_mix = hooks.build_batch_mix(config) or data.build_mixup(config)
    criterion = hooks.build_criterion(config) or losses.build_criterion(config, batch_mix is not None)
    distill = config.TRAIN.DISTILLATION_TYPE != 'none'
    if distill:
        from .distillation import DistillationLoss, build_teacher
        teacher = build_teacher(config, log=logger.info)
        criterion = DistillationLoss(criterion, teacher, config.TRAIN.DISTILLATION_TYPE,
                                     config.TRAIN.DISTILLATION_ALPHA, config.TRAIN.DISTILLATION_TAU,
                                     soft_reduction=config.TRAIN.DISTILLATION_SOFT_REDUCTION)
        logger.info(f'distillation: {config.TRAIN.DISTILLATION_TYPE}, alpha {config.TRAIN.DISTILLATION_ALPHA}, '
                    f'tau {config.TRAIN.DISTILLATION_TAU}, teacher {config.TRAIN.TEACHER_CONFIG} '
                    f'<- {config.TRAIN.TEACHER_MODEL}')

    elif getattr(model, 'head_dist', None) is not None:
        logger.info('WARNING: this model has a distillation head but TRAIN.DISTILLATION_TYPE is none: '
                    'only the class head is trained, while evaluation averages both heads. Train with a '
                    'teacher, or build it with MODEL.DISTILLED False.')

    checkpoints = CheckpointManager(config.SAVE, config.MODEL.NAME, config.SAVE_FREQ)
    start_epoch, best_acc = config.TRAIN.LAST_EPOCH, 0.0
    if config.MODEL.RESUME:
        prefix = resolve_resume(config.MODEL.RESUME)
        start_epoch, extra = resume(prefix, model, optimizer, scheduler, scaler if use_scaler else None, ema)
        best_acc = extra.get('best_acc', 0.0)
        logger.info(f'resumed from {prefix}: epoch {start_epoch} done, next lr {scheduler():.6e}, '
                    f'best Acc@1 so far {best_acc / 100:.4f}')
    elif start_epoch:
        scheduler.step(start_epoch * steps_per_epoch)

    base_lr, _, _ = scaled_lrs(config, world)
    logger.info(f'training: {len(train_dataset)} images, {steps_per_epoch} steps/epoch, '
                f'global batch {config.DATA.BATCH_SIZE * world * config.TRAIN.ACCUM_ITER}, '
                f'scaled base lr {base_lr:.3e}, AMP {amp if config.AMP else "off"}')
    state = TrainState(optimizer, scheduler, criterion, scaler, amp, ema, batch_mix,
                       config.TRAIN.ACCUM_ITER, distill)
    train_model = paddle.DataParallel(model) if world > 1 else model
    writer = ScalarWriter(config.SAVE, rank)
    result = {}
    for epoch in range(start_epoch + 1, config.TRAIN.NUM_EPOCHS + 1):
        _seed_everything(_epoch_seed(config, epoch, rank))
        if hasattr(train_loader.batch_sampler, 'set_epoch'):
            train_loader.batch_sampler.set_epoch(epoch)
        start = time.time()
        train_loss = train_one_epoch(train_model, train_loader, state, epoch, config.TRAIN.NUM_EPOCHS,
                                     logger, config.REPORT_FREQ, writer)
        logger.info(f'----- Epoch[{epoch:03d}/{config.TRAIN.NUM_EPOCHS:03d}], Train Loss: {train_loss:.4f}, '
                    f'time: {time.time() - start:.1f}s{data.skipped_report(train_dataset)}')
        result = {'epoch': epoch, 'train_loss': train_loss}
        if epoch % config.VALIDATE_FREQ == 0 or epoch == config.TRAIN.NUM_EPOCHS:
            loss, top1, top5, count = evaluate(model, val_loader, amp)
            logger.info(f'----- Epoch[{epoch:03d}/{config.TRAIN.NUM_EPOCHS:03d}], Validation Loss: {loss:.4f}, '
                        f'Validation Acc@1: {top1 / 100:.4f}, Validation Acc@5: {top5 / 100:.4f} ({count} images)')
            writer.add_scalar('val/acc1', top1, epoch)
            result.update(val_loss=loss, acc1=top1, acc5=top5)
            if ema is not None:
                _, ema_top1, ema_top5, _ = evaluate(ema.module, val_loader, amp)
                logger.info(f'----- Epoch[{epoch:03d}/{config.TRAIN.NUM_EPOCHS:03d}], EMA Validation '
                            f'Acc@1: {ema_top1 / 100:.4f}, EMA Validation Acc@5: {ema_top5 / 100:.4f}')
                result.update(ema_acc1=ema_top1)
            if top1 > best_acc and rank == 0:
                checkpoints.save_best(model, ema)
                logger.info(f'new best Acc@1 {top1 / 100:.4f}: saved {checkpoints.prefix("Best")}.pdparams')
            best_acc = max(best_acc, top1)
        if rank == 0:
            prefix = checkpoints.save(epoch, model, optimizer, scheduler,
                                      scaler if use_scaler else None, ema, extra={'best_acc': best_acc})
            logger.info(f'saved {prefix}.pdparams / .pdopt')
    writer.close()
    result['best_acc1'] = best_acc
    return result
