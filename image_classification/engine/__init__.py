"""The shared training/evaluation engine of every model family.

Importing it (or any of its modules, or a model) changes nothing in the process: no
environment variable, Paddle flag, thread count or allocator setting.  Two explicit calls do:

- `prepare_process()`, the first statement of an entry point (main_*.py, tools/*.py), before
  Paddle is imported: quiet logs and the variables Paddle's libraries read when they load;
- `engine.cpu.settings.configure()`, when a CPU run starts (the launcher's `run`,
  `paddlevit.create_model` on the CPU, the tools): threads, allocator, Paddle flags.
"""
import os


def prepare_process():
    """Set up this process before `import paddle`: filter Paddle's known warnings
    (`engine.logger.silence_known_noise`; its import warns) and set the environment its
    libraries read once, when they load (`engine.cpu.settings.set_process_environment`).
    In a rank of `paddle.distributed.launch` it then imports paddle and lets SIGTERM end the
    rank silently (`engine.distributed.die_quietly_when_stopped`).  A PADDLEVIT_KERNEL_ISA the
    kernels cannot be built for ends the process here, with its message and status 2."""
    from . import errors, logger
    from .cpu import settings
    logger.silence_known_noise()
    settings.set_process_environment()
    try:
        settings.kernel_isa()
    except settings.KernelIsaError as error:
        errors.exit_on_user_error(error)
    if 'PADDLE_TRAINER_ID' in os.environ:   # a rank of paddle.distributed.launch: paddle is imported now
        from . import distributed            # (it installs its signal handlers) to quiet a rank the
        if distributed.launched_by_paddle():  # launcher stops, as early as that can be done
            distributed.die_quietly_when_stopped()
