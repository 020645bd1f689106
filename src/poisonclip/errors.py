"""Errors that mean "the user asked for something wrong", as opposed to bugs.

The CLI turns a UserError into one line on stderr and exit code 2; anything else is a
bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in what the user asked for (missing file, wrong column, bad value)."""


class SettingError(UserError):
    """A bad value of one setting, named as the config spells it (``patch_size``).

    The library does not know how the user gave the value: the CLI rewrites the name into
    its flag (``--patch-size``), a sweep into the spec's key (``poison.patch_size``). Other
    settings a message mentions are written in backticks (`` `resume` ``), which the CLI also
    turns into flags.
    """

    def __init__(self, setting: str, problem: str):
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem
