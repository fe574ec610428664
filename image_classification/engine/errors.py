"""The one base class of errors a user can fix without touching the code.

A `UserError` is raised for a bad flag, config value, list file, image or
weights file.  Its message alone must tell the user what is wrong and what is
allowed (file, line, key, value): the entry points print it without a
traceback and exit with status 2, as argparse does for a bad flag.  Anything
else that escapes is a bug in this repository and keeps its traceback.
"""
import os
import sys

__all__ = ['UserError', 'USER_ERROR_EXIT_CODE', 'exit_on_user_error', 'cli']

USER_ERROR_EXIT_CODE = 2


class UserError(Exception):
    """An error in what the user handed us (flag, config, data, weights), not in the code."""


def exit_on_user_error(error, prog=None, hard=False):
    """End the process for `error`: its message as the last line on stderr, exit status 2.

    stdout is flushed first, so the message follows everything the run printed
    (a config dump, a progress log) instead of being buried in it.  `hard`
    (a rank of a process group) leaves with os._exit: a normal interpreter
    shutdown may wait forever on Paddle's process-group threads.
    """
    prog = prog or os.path.basename(sys.argv[0] or 'python')
    sys.stdout.flush()
    sys.stderr.write(f'{prog}: error: {error}\n')
    sys.stderr.flush()
    if hard:
        os._exit(USER_ERROR_EXIT_CODE)
    raise SystemExit(USER_ERROR_EXIT_CODE)


def cli(main, *args, **kwargs):
    """`main(*args, **kwargs)` for a command-line entry point: a UserError from anywhere in it
    ends the process with its message and status 2, without a traceback (see `exit_on_user_error`);
    any other exception is a bug and keeps its traceback."""
    try:
        return main(*args, **kwargs)
    except UserError as error:
        exit_on_user_error(error)
