"""The shared training/evaluation engine of every model family.

Importing it first sets the process environment Paddle reads once at import
(see `engine.runtime`), so entry points import `engine` before `paddle`.
"""
from . import logger, runtime

logger.silence_known_noise()   # before Paddle's import: its import warns
runtime.configure_environment()
