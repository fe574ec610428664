"""The shared training/evaluation engine of every model family.

Importing it (or any of its modules, or a model) changes nothing in the process: no
environment variable, Paddle flag, thread count or allocator setting.  Two explicit calls do:

- `prepare_process()`, the first statement of an entry point (main_*.py, tools/*.py), before
  Paddle is imported: quiet logs and the variables Paddle's libraries read when they load;
- `engine.cpu.settings.configure()`, when a CPU run starts (the launcher's `run`,
  `paddlevit.create_model` on the CPU, the tools): threads, allocator, Paddle flags.
"""


def prepare_process():
    """Set up this process before `import paddle`: filter Paddle's known warnings
    (`engine.logger.silence_known_noise`; its import warns) and set the environment its
    libraries read once, when they load (`engine.cpu.settings.set_process_environment`)."""
    from . import logger
    from .cpu import settings
    logger.silence_known_noise()
    settings.set_process_environment()
