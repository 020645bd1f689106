"""Errors that mean "the user asked for something wrong", as opposed to bugs.

The CLI turns a UserError into one line on stderr and exit code 2; anything else is a
bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in what the user asked for (missing file, wrong column, bad value)."""
