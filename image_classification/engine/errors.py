"""The one base class of errors a user can fix without touching the code.

A `UserError` is raised for a bad flag, config value, list file, image or
weights file.  Its message alone must tell the user what is wrong and what is
allowed (file, line, key, value): the entry points print it without a
traceback and exit with status 2, as argparse does for a bad flag.  Anything
else that escapes is a bug in this repository and keeps its traceback.
"""

__all__ = ['UserError', 'USER_ERROR_EXIT_CODE']

USER_ERROR_EXIT_CODE = 2


class UserError(Exception):
    """An error in what the user handed us (flag, config, data, weights), not in the code."""
