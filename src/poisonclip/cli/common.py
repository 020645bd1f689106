"""Shared CLI machinery: the Typer subclass that turns user mistakes into exit code 2."""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import Any, Callable, Mapping

import typer
from rich.console import Console

from poisonclip.errors import SettingError, UserError

console = Console(stderr=False)
err_console = Console(stderr=True)


# Bidirectional-text controls (Cf): they reorder what the terminal shows ("Trojan source").
_BIDI = {"\u061c", "\u200e", "\u200f", *map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A))}


def safe_text(text: object) -> str:
    """``text`` with every control character written as an escape (``\\x1b``, ``\\r``, ``\\n``).

    Captions, keys, labels and file names come from scraped data; printed raw, an escape
    sequence in one of them would clear the screen, move the cursor or rewrite earlier lines
    of the terminal. Use this on anything dataset-derived before it is printed.
    """
    text = str(text)
    if text.isprintable():
        return text
    out = []
    for c in text:
        if c in _BIDI or unicodedata.category(c) in ("Cc", "Zl", "Zp"):
            out.append(c.encode("unicode_escape").decode("ascii"))
        else:
            out.append(c)
    return "".join(out)


def fail(message: str) -> typer.Exit:
    """Print one plain line on stderr (never wrapped by rich) and return Exit(2) to raise."""
    typer.echo(f"error: {safe_text(message)}", err=True)
    return typer.Exit(code=2)


_NESTED = re.compile(r"(\w+)\[(\d+)\]\.(.+)")
_MENTION = re.compile(r"`([a-z][a-z0-9_]*(?:\[\d+\]\.[a-z][a-z0-9_]*)?)`")   # a setting named in a message


def flag_for(setting: str, flags: Mapping[str, str] | None = None) -> str:
    """The command-line flag of a library setting: ``patch_size`` -> ``--patch-size``, unless
    ``flags`` names it otherwise (``target_label`` -> ``--label``); a setting of one item of a
    list (``targets[1].n_poisons``) -> that item's flag, ``--n-poisons (target 1)``."""
    flags = flags or {}
    m = _NESTED.fullmatch(setting)
    if m and setting not in flags:
        outer, index, inner = m.groups()
        return f"{flag_for(inner, flags)} ({outer[:-1] if outer.endswith('s') else outer} {index})"
    return flags.get(setting, "--" + setting.replace("_", "-"))


def user_message(e: UserError, flags: Mapping[str, str] | None = None) -> str:
    """A library error as the command line says it: the setting it is about (``SettingError``)
    and every setting it mentions in backticks (`` `resume` ``) named by its flag."""
    text = f"{flag_for(e.setting, flags)}: {e.problem}" if isinstance(e, SettingError) else str(e)
    return _MENTION.sub(lambda m: flag_for(m.group(1), flags), text)


class App(typer.Typer):
    """Typer app whose commands report ``UserError`` as one line and exit code 2.

    A ``SettingError`` names the library's setting (``patch_size``); it is reported with the
    command's flag for it (``--patch-size``), by ``flag_for`` and the ``flags`` a command is
    registered with (``app.command(flags={"target_label": "--label"})``) or the app was made
    with. Anything else is a bug in poisonclip and keeps its traceback.
    """

    def __init__(self, *, flags: Mapping[str, str] | None = None, **kwargs: Any):
        kwargs.setdefault("no_args_is_help", True)
        kwargs.setdefault("pretty_exceptions_show_locals", False)
        super().__init__(**kwargs)
        self.flags = dict(flags or {})

    def command(self, *args: Any, flags: Mapping[str, str] | None = None,
                **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        register = super().command(*args, **kwargs)
        names = {**self.flags, **(flags or {})}

        def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(func)
            def guarded(*a: Any, **kw: Any) -> Any:
                try:
                    return func(*a, **kw)
                except UserError as e:
                    raise fail(user_message(e, names)) from None

            register(guarded)
            return func

        return decorator
