"""The shared training/evaluation engine of every model family.

Importing it first sets the process environment Paddle reads once at import
(see `engine.runtime`), so entry points import `engine` before `paddle`.
"""
from . import runtime

runtime.configure_environment()
