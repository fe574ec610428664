"""The one entry point behind every family's `main_single_gpu.py` / `main_multi_gpu.py`.

    main(get_config, build_model, distributed=False, hooks=None)

Single process: runs here, on the GPU when Paddle has CUDA, else on the CPU.
Multi-process (`distributed=True`): under `python -m paddle.distributed.launch`
(one or many nodes; `--ips` for several) each launched process joins the group;
run directly, it spawns one process per visible GPU (or `-nprocs N` CPU
processes) with `paddle.distributed.spawn`.  No process-group code lives here.
"""
import argparse
import glob
import os
import random
import sys
import tempfile
import time

import numpy as np
import paddle

from . import distributed as dist
from . import sharding
from .checkpoint import CheckpointManager, check_output_folder, resolve_resume, resume
from .cpu import settings as cpu_settings
from .config import ConfigError
from .errors import USER_ERROR_EXIT_CODE, UserError, exit_on_user_error
from .ema import ModelEMA
from .hooks import FamilyHooks
from .logger import FILE_ONLY, ScalarWriter, get_logger, run_finished
from .metrics_log import MetricsLog
from .optim import build_optimizer, build_scheduler, scaled_lrs, total_epochs
from .trainer import (NonFiniteLossError, NonFiniteOutputError, TrainState, describe_count, evaluate,
                      train_one_epoch)
from .weights import load_weights



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
    parser.add_argument('-overwrite', action='store_true',
                        help='allow a new run in an -output folder holding another run\'s checkpoints '
                             '(config OVERWRITE; nothing is deleted up front, see README)')
    parser.add_argument('-amp', action='store_true', help='mixed precision (AMP_LEVEL, AMP_DTYPE)')
    parser.add_argument('-nprocs', type=int, default=None,
                        help='processes to spawn when not under paddle.distributed.launch '
                             '(default: visible GPUs, or 1 on CPU)')
    parser.add_argument('-opts', nargs='+', default=None, help='config overrides: KEY VALUE ...')
    hooks.add_arguments(parser)
    return parser


def main(get_config, build_model, distributed=False, hooks=None, argv=None):
    """Parse flags, assemble the config, and train or evaluate (see module docstring).

    A `UserError` raised anywhere in the run (flags, config, data, weights), in
    this process or in a spawned one, ends the program with its message as the
    last line on stderr and exit status 2, without a traceback.  Under
    `paddle.distributed.launch` each rank ends so; the launcher then stops the
    other ranks, exits non-zero and shows the failed rank's last log lines,
    which end with the message.
    """
    try:
        return execute(get_config, build_model, distributed, hooks, argv)
    except UserError as error:
        exit_on_user_error(error, hard=distributed and dist.launched_by_paddle())


def execute(get_config, build_model, distributed=False, hooks=None, argv=None):
    """What `main` does, with a `UserError` raised to the caller instead of ending the process
    (for programs and tests that drive the launcher)."""
    hooks = hooks or FamilyHooks()
    parser = build_parser(hooks)
    args = parser.parse_args(argv)
    if distributed and dist.launched_by_paddle():
        dist.die_quietly_when_stopped()   # again: `main` may be called without prepare_process
    return _main(get_config, build_model, distributed, hooks, args)


def _require_cfg(args):
    """Refuse to train or evaluate without -cfg: the family defaults are no model anyone trained."""
    if getattr(args, 'cfg', None):
        return
    configs = sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(sys.argv[0])), 'configs', '*.yaml')))
    example = os.path.relpath(configs[0]) if configs else 'configs/<variant>.yaml'
    raise ConfigError(f'-cfg is required: the YAML of the model variant to '
                      f'{"evaluate" if getattr(args, "eval", False) else "train"} (e.g. -cfg {example}); '
                      f'without it the family\'s bare defaults would be used')


def _main(get_config, build_model, distributed, hooks, args):
    _require_cfg(args)
    config = get_config(args=args)
    if distributed and not dist.launched_by_paddle():
        nprocs = args.nprocs
        if nprocs is None:
            cuda = paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
            nprocs = paddle.device.cuda.device_count() if cuda else 1
        if nprocs > 1:
            _spawn(config, build_model, hooks, args, nprocs)
            return None
    return run(config, build_model, hooks, args, distributed)


def _spawn(config, build_model, hooks, args, nprocs):
    """`run` in `nprocs` processes (paddle.distributed.spawn).  A rank's UserError comes back here
    as that UserError's message: Paddle would report it as "Process N terminated with exit code 2"
    after terminating the other ranks, so each rank leaves its message in a file for this process."""
    with tempfile.TemporaryDirectory(prefix='paddlevit_errors_') as message_dir:
        try:
            paddle.distributed.spawn(_spawned_run, args=(config, build_model, hooks, args, message_dir),
                                     nprocs=nprocs)
        except Exception:
            messages = sorted(glob.glob(os.path.join(message_dir, 'rank*.txt')))
            if not messages:
                raise
            with open(messages[0], encoding='utf-8') as f:
                raise UserError(f.read()) from None


def _spawned_run(config, build_model, hooks, args, message_dir):
    """One spawned rank: `run`, and on a UserError its message to `message_dir`, exit status 2."""
    dist.die_quietly_when_stopped()
    try:
        return run(config, build_model, hooks, args, True)
    except UserError as error:
        rank = int(os.environ.get('PADDLE_TRAINER_ID', '0'))
        with open(os.path.join(message_dir, f'rank{rank:05d}.txt'), 'w', encoding='utf-8') as f:
            f.write(str(error))
        sys.stdout.flush()
        sys.stderr.flush()
        # os._exit, not SystemExit: the interpreter's shutdown would wait for Paddle's
        # process-group threads, which never end, and spawn would wait for this rank forever
        os._exit(USER_ERROR_EXIT_CODE)


def _seed_everything(seed):
    paddle.seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _epoch_seed(config, epoch, rank):
    """Seed for what runs between epochs; each training step then reseeds the global generators
    from (SEED, rank, epoch, step) itself (engine.seeding), so resume is exact with loader workers."""
    return config.SEED + 100003 * epoch + 1009 * rank


def _amp_settings(config, on_gpu):
    enable = bool(config.AMP)
    return {'enable': enable, 'level': config.AMP_LEVEL, 'dtype': config.AMP_DTYPE}, \
        enable and on_gpu and config.AMP_DTYPE == 'float16'


def run(config, build_model, hooks, args, distributed):
    """Train or evaluate in this process (one rank of a group when distributed)."""
    from . import data, losses   # imported here: workers must not pay for them at spawn

    device = dist.device()
    if not config.EVAL:   # -eval never wraps; refused before the group is joined (no gloo/NCCL wait)
        sharding.check(config, dist.launched_world_size(distributed), device)
    rank, world = dist.init(distributed)
    resume_prefix = None
    if not config.EVAL:   # -eval writes only its log: never blocked
        resume_prefix = resolve_resume(config.MODEL.RESUME) if config.MODEL.RESUME else None
        check_output_folder(config.SAVE, resume_prefix, config.OVERWRITE)
    paddle.set_device(device)
    cpu_settings.configure()   # threads, allocator, Paddle flags: on the CPU only
    logger = get_logger(config.SAVE, rank)
    logger.info(f'command: {" ".join(sys.argv)}', extra=FILE_ONLY)
    logger.info(f'process {rank}/{world} on {device}, '
                f'paddle {paddle.__version__}, CPU threads {cpu_settings.threads or os.environ.get("OMP_NUM_THREADS")}')
    if rank == 0:   # the console gets a short header; the log file the whole config
        logger.info(f'config:\n{config}', extra=FILE_ONLY)
        logger.info(f'full config and command: {os.path.join(config.SAVE, "log.txt")}')
    _seed_everything(config.SEED + rank)

    model = build_model(config)
    if config.TRAIN.RECOMPUTE and not config.EVAL:
        if not hasattr(model, 'set_grad_checkpointing'):
            raise ConfigError(f'{config.MODEL.TYPE} models do not support TRAIN.RECOMPUTE (gradient '
                              f'checkpointing); the ViT, PiT, PerViT, SPViT and VVT families do')
        model.set_grad_checkpointing(True)
        logger.info('TRAIN.RECOMPUTE: transformer blocks recompute their activations in the backward pass')
    params = sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient)
    logger.info(f'model {config.MODEL.NAME} ({config.MODEL.TYPE}): {params:,} trainable parameters')
    if config.MODEL.PRETRAINED:
        # -eval keeps the head: one of another class count is an error, not a random head
        load_weights(model, config.MODEL.PRETRAINED, what='pretrained', resize=True, drop_head=not config.EVAL,
                     log=logger.info)

    amp, use_scaler = _amp_settings(config, device.startswith('gpu'))
    val_dataset = hooks.build_dataset(config, 'val') or data.build_dataset(config, 'val', log=logger.info)
    if rank == 0 and getattr(val_dataset, 'classes', None):   # class folders: name the indices
        data.write_labels(os.path.join(config.SAVE, 'labels.txt'), val_dataset.classes)
        logger.info(f'class names (line i = class i): {os.path.join(config.SAVE, "labels.txt")}')
    val_loader = data.build_dataloader(config, val_dataset, 'val', distributed=world > 1)
    logger.info(f'validation: {len(val_dataset)} images, eval transform: {data.describe_eval_transform(config)}')
    if config.AMP and not device.startswith('gpu'):
        logger.info(f'AMP ({config.AMP_DTYPE}) has no effect on {device}: computing in float32')

    if config.EVAL:
        if not config.MODEL.PRETRAINED:
            logger.info('WARNING: -eval without -pretrained evaluates random weights')
        start = time.time()
        loss, top1, top5, count, skipped = scored = evaluate(model, val_loader, amp)
        logger.info(f'Validation Loss: {loss:.4f}, Validation Acc@1: {top1 / 100:.4f}, '
                    f'Validation Acc@5: {top5 / 100:.4f} ({describe_count(scored)}, {time.time() - start:.1f}s)')
        hooks.after_eval(model, config, args, logger)
        run_finished()
        return {'loss': loss, 'acc1': top1, 'acc5': top5, 'count': count, 'skipped': skipped}

    train_dataset = hooks.build_dataset(config, 'train') or data.build_dataset(config, 'train', log=logger.info)
    train_loader = data.build_dataloader(config, train_dataset, 'train', distributed=world > 1)
    steps_per_epoch = -(-len(train_loader) // max(1, config.TRAIN.ACCUM_ITER))
    scheduler = build_scheduler(config, steps_per_epoch, world)
    optimizer = build_optimizer(config, model, scheduler)
    if config.AMP and config.AMP_LEVEL == 'O2' and device.startswith('gpu'):
        model, optimizer = paddle.amp.decorate(models=model, optimizers=optimizer, level='O2',
                                               dtype=config.AMP_DTYPE, master_weight=True)
    scaler = paddle.amp.GradScaler(enable=use_scaler, init_loss_scaling=2.**16)
    ema = ModelEMA(model, config.TRAIN.MODEL_EMA_DECAY, warmup=config.TRAIN.MODEL_EMA_WARMUP) \
        if config.TRAIN.MODEL_EMA else None
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

    checkpoints = CheckpointManager(config.SAVE, config.MODEL.NAME, config.SAVE_FREQ, config.SAVE_KEEP,
                                    log=logger.info if rank == 0 else None)
    start_epoch, best_acc = config.TRAIN.LAST_EPOCH, 0.0
    if resume_prefix:
        prefix = resume_prefix
        stage3_state = []   # p_g_os: the full optimizer state is cut into slices after wrapping
        start_epoch, extra = resume(prefix, model, optimizer, scheduler, scaler if use_scaler else None, ema,
                                    load_optimizer=stage3_state.append if config.TRAIN.SHARDING == 'p_g_os' else None)
        best_acc = extra.get('best_acc', 0.0)
        checkpoints.last_good = prefix
        logger.info(f'resumed from {prefix}: epoch {start_epoch} done, next lr {scheduler():.6e}, '
                    f'best Acc@1 so far {best_acc / 100:.4f}')
        later = checkpoints.later_checkpoints(start_epoch)
        if later and rank == 0:
            logger.info(f'NOTE: {config.SAVE} holds checkpoints of later epochs ({", ".join(map(os.path.basename, later))}) '
                        f'from the run resumed here; retention leaves them alone and this run replaces each '
                        f'when it saves that epoch')
    elif start_epoch:
        scheduler.step(start_epoch * steps_per_epoch)

    base_lr, start_lr, end_lr = scaled_lrs(config, world)
    num_epochs = total_epochs(config)
    logger.info(f'training: {len(train_dataset)} images, {steps_per_epoch} steps/epoch, '
                f'global batch {config.DATA.BATCH_SIZE * world * config.TRAIN.ACCUM_ITER}, '
                f'lr {base_lr:.3e} (warmup from {start_lr:.3e}, min {end_lr:.3e}; '
                f'LR_SCALING {config.TRAIN.LR_SCALING}), {config.TRAIN.NUM_EPOCHS} epochs'
                f'{f" + {config.TRAIN.COOLDOWN_EPOCHS} cooldown at the min lr" if config.TRAIN.COOLDOWN_EPOCHS else ""}, '
                f'AMP {amp if config.AMP else "off"}')
    if config.TRAIN.FINETUNE_EVAL_MODE:
        logger.info('TRAIN.FINETUNE_EVAL_MODE: training with every layer in eval mode (no dropout, '
                    'attention dropout or drop path; BatchNorm frozen at its running statistics)')
        if not (config.MODEL.PRETRAINED or config.MODEL.RESUME):
            logger.info('WARNING: TRAIN.FINETUNE_EVAL_MODE is meant for fine-tuning, but neither '
                        '-pretrained nor -resume is given: this trains from random weights without '
                        'dropout or drop path')
    state = TrainState(optimizer, scheduler, criterion, scaler, amp, ema, batch_mix,
                       config.TRAIN.ACCUM_ITER, distill, seed_key=(config.SEED, rank),
                       finetune_eval_mode=config.TRAIN.FINETUNE_EVAL_MODE)
    level = config.TRAIN.SHARDING
    if level != 'off':   # `model` stays the plain layer: evaluated and saved as is
        train_model, optimizer, scaler = sharding.wrap(model, optimizer, scaler, level)
        state.optimizer, state.scaler = optimizer, scaler
        if resume_prefix and level == 'p_g_os':
            layout = sharding.slice_layout(train_model, model)
            optimizer.set_state_dict(sharding.framework_state(
                model, sharding.shard_state(stage3_state[0], layout, rank), layout))
        logger.info(f'TRAIN.SHARDING {level}: ZeRO stage {sharding.LEVELS[level]} over {world} processes')
    else:
        train_model = paddle.DataParallel(model) if world > 1 else model
    state.validate_freq = config.VALIDATE_FREQ
    writer = ScalarWriter(config.SAVE, rank)
    metrics = MetricsLog(config.SAVE, resume_prefix, start_epoch, writer=rank == 0)
    result = {}
    best_saved = bool(resume_prefix)   # a new run's first validation replaces any old Best (-overwrite)
    for epoch in range(start_epoch + 1, num_epochs + 1):
        _seed_everything(_epoch_seed(config, epoch, rank))
        if hasattr(train_loader.batch_sampler, 'set_epoch'):
            train_loader.batch_sampler.set_epoch(epoch)
        start, epoch_lr = time.time(), optimizer.get_lr()
        try:
            train_loss = train_one_epoch(train_model, train_loader, state, epoch, num_epochs,
                                         logger, config.REPORT_FREQ, writer)
        except NonFiniteLossError as e:
            raise NonFiniteLossError(f'{e} {checkpoints.resume_hint()}') from None
        logger.info(f'----- Epoch[{epoch:03d}/{num_epochs:03d}], Train Loss: {train_loss:.4f}, '
                    f'time: {time.time() - start:.1f}s{data.skipped_report(train_dataset)}')
        result = {'epoch': epoch, 'train_loss': train_loss}
        sharding.gather_parameters(train_model, level)   # stage 3: whole weights to check, evaluate, save
        # every rank, every epoch: all stop together, before a diverged epoch is evaluated or saved
        checkpoints.check_finite(epoch, model, ema)
        loss = None
        if epoch % config.VALIDATE_FREQ == 0 or epoch == num_epochs:
            validation_start = time.time()
            try:
                loss, top1, top5, count, skipped = scored = evaluate(model, val_loader, amp)
            except NonFiniteOutputError as e:
                raise checkpoints.diverged(epoch, f'validation: {e}') from None
            sharding.gather_parameters(train_model, level)   # stage 3: the forward hooks released them
            logger.info(f'----- Epoch[{epoch:03d}/{num_epochs:03d}], Validation Loss: {loss:.4f}, '
                        f'Validation Acc@1: {top1 / 100:.4f}, Validation Acc@5: {top5 / 100:.4f} '
                        f'({describe_count(scored)})')
            writer.add_scalar('val/acc1', top1, epoch)
            result.update(val_loss=loss, acc1=top1, acc5=top5)
            row = dict(epoch=epoch, train_loss=train_loss, val_loss=loss, acc1=top1, acc5=top5, lr=epoch_lr,
                       images_scored=count, images_skipped=skipped)
            if ema is not None:
                try:
                    _, ema_top1, ema_top5, _, _ = evaluate(ema.module, val_loader, amp)
                except NonFiniteOutputError as e:
                    raise checkpoints.diverged(epoch, f'EMA validation: {e}') from None
                logger.info(f'----- Epoch[{epoch:03d}/{num_epochs:03d}], EMA Validation '
                            f'Acc@1: {ema_top1 / 100:.4f}, EMA Validation Acc@5: {ema_top5 / 100:.4f}')
                result.update(ema_acc1=ema_top1)
                row.update(ema_acc1=ema_top1)
            state.validation_seconds = time.time() - validation_start
            metrics.add(dict(row, seconds=time.time() - start))
            if (top1 > best_acc or not best_saved) and rank == 0:
                checkpoints.save_best(model, ema, epoch=epoch)
                best_saved = True
                logger.info(f'new best Acc@1 {top1 / 100:.4f}: saved {checkpoints.prefix("Best")}.pdparams')
            best_acc = max(best_acc, top1)
        # sharded: every rank hands in its share of the optimizer state (collective), rank 0 writes it all
        full_state = (sharding.full_optimizer_state(model, optimizer, train_model, level)
                      if level != 'off' else None)
        if rank == 0:
            prefix = checkpoints.save(epoch, model, optimizer, scheduler, scaler if use_scaler else None, ema,
                                      extra={'best_acc': best_acc}, val_loss=loss, optimizer_state=full_state)
            logger.info(f'saved {prefix}.pdparams / .pdopt')
    writer.close()
    run_finished()
    result['best_acc1'] = best_acc
    return result
