"""Attacks, triggers and caption-set builders, found by name (timm's ``@register_model`` idea).

A sweep or a config names an attack ("backdoor"), a trigger ("checkerboard") or a caption
source ("search") as a string; this module maps the string to the code, and
``poisonclip list`` shows what exists. Built-in entries live in their own modules and are
imported on first lookup, so importing the registry stays cheap.
"""

from __future__ import annotations

import fnmatch
import importlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from poisonclip.errors import UserError

# Modules whose import registers the built-in entries.
_BUILTIN_MODULES = (
    "poisonclip.attacks.captions",
    "poisonclip.attacks.backdoor",
    "poisonclip.attacks.targeted",
)


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    obj: Any
    description: str


class Registry:
    """Name -> object for one kind of thing; names are unique within a kind."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, obj: Any | None = None, description: str | None = None) -> Any:
        """``@REG.register("name")`` on a function/class, or ``REG.register("name", obj)``."""

        def add(o: Any) -> Any:
            if name in self._entries and self._entries[name].obj is not o:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            lines = (o.__doc__ or "").strip().splitlines()
            text = description or (lines[0] if lines else "")
            self._entries[name] = Entry(self.kind, name, o, text)
            return o

        return add if obj is None else add(obj)

    def get(self, name: str) -> Any:
        _load_builtins()
        try:
            return self._entries[name].obj
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise UserError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self, pattern: str = "*") -> list[str]:
        _load_builtins()
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def entries(self, pattern: str = "*") -> Iterator[Entry]:
        for n in self.names(pattern):
            yield self._entries[n]


ATTACKS = Registry("attack")
TRIGGERS = Registry("trigger")
CAPTION_SETS = Registry("caption set")
REGISTRIES: dict[str, Registry] = {"attacks": ATTACKS, "triggers": TRIGGERS, "captions": CAPTION_SETS}


def register_attack(name: str) -> Callable[[Any], Any]:
    return ATTACKS.register(name)


def register_trigger(name: str) -> Callable[[Any], Any]:
    return TRIGGERS.register(name)


def register_caption_set(name: str) -> Callable[[Any], Any]:
    return CAPTION_SETS.register(name)


def list_registered(kind: str | None = None, pattern: str = "*") -> list[Entry]:
    """Every registered entry of ``kind`` ("attacks", "triggers", "captions") or of all kinds."""
    if kind is not None and kind not in REGISTRIES:
        raise UserError(f"unknown kind {kind!r}; choose one of {', '.join(REGISTRIES)}")
    kinds = [kind] if kind else list(REGISTRIES)
    return [e for k in kinds for e in REGISTRIES[k].entries(pattern)]


_loaded = False


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _BUILTIN_MODULES:
        importlib.import_module(mod)


def _register_triggers() -> None:
    # triggers.py is the one trigger implementation (shared with evaluation); it stays free
    # of registry imports, so its entry is added here.
    from poisonclip.attacks import triggers

    TRIGGERS.register("checkerboard", triggers.apply,
                      "Checkerboard patch of one-pixel black/white cells (Gu et al. 2017), "
                      "size given at 224px; corner or random placement.")


_register_triggers()
