"""Attacks, triggers and caption-set builders, found by name (timm's ``@register_model`` idea).

A sweep or a config names an attack ("backdoor"), a trigger ("checkerboard") or a caption
source ("search") as a string; this module maps the string to the code, and
``poisonclip list`` shows what exists. Built-in entries live in their own modules and are
imported on first lookup, so importing the registry stays cheap.

What each kind registers, and who finds it here:

* an attack (``register_attack``): an ``Attack`` -- its config class, the conversion of plain
  settings (a sweep's YAML) to that config, its planner (config -> ``Plan``, which
  ``attacks.api.poison`` writes), and its evaluation (``poisonclip.evaluate.hooks.AttackEvaluation``:
  what the evaluator measures for a poison folder of this attack, and the results-table
  columns that come of it). The sweep stages, ``poisonclip poison`` and the evaluator look
  attacks up here only.
* a trigger (``register_trigger``): ``paste(image, where, **params) -> image``, the patch drawn
  at a ``triggers.TriggerSpec`` (or, for a whole-image trigger, the whole image changed), with
  the backdoor settings its ``TriggerTraits`` name as keyword arguments; ``stamp_trigger``
  sizes and places it the one way the writer and the evaluator share. The evaluator reaches
  triggers through this module only.
* a caption set (``register_caption_set``): ``build(label, dataset=, plurals=, fmt=, report=)
  -> CaptionSet``; any registered name is a valid ``caption_source``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

from poisonclip.errors import UserError

# Modules whose import registers the built-in entries.
_BUILTIN_MODULES = (
    "poisonclip.attacks.captions",
    "poisonclip.attacks.backdoor",
    "poisonclip.attacks.targeted",
    "poisonclip.attacks.text_backdoor",
)


@dataclass(frozen=True)
class Attack:
    """One attack as the whole pipeline sees it, registered once under its name.

    ``evaluation`` is the object the evaluator calls for a poison folder of this attack (a
    ``poisonclip.evaluate.hooks.AttackEvaluation``), or ``"module:attribute"`` naming it: the
    built-in attacks name theirs, because the evaluator is a later stage than poisoning and
    the attack modules may not import it; it is loaded when first used.
    """

    name: str
    config: type                                 # frozen config dataclass; its ClassVar ``attack`` is ``name``
    plan: Callable[[Any], Any]                   # config -> Plan (the poisons to write)
    evaluation: Any = None
    from_settings: Callable[..., Any] | None = None  # (settings mapping, **fixed) -> config; default: by field types

    def config_from(self, settings: Mapping[str, Any], **fixed: Any) -> Any:
        """Plain settings (YAML, JSON) -> this attack's config; ``fixed`` are set by the caller."""
        if self.from_settings is not None:
            return self.from_settings(settings, **fixed)
        from poisonclip.attacks.settings import config_from_mapping

        return config_from_mapping(self.config, settings, **fixed)

    def has_setting(self, name: str) -> bool:
        """The config has a field ``name`` (how the sweep knows which corpus files to hand over)."""
        return name in {f.name for f in dataclasses.fields(self.config)}

    def evaluator(self) -> Any:
        """The evaluation hook, imported on first use when it is named by a string."""
        ev = self.evaluation
        if isinstance(ev, str):
            module, _, attr = ev.partition(":")
            ev = getattr(importlib.import_module(module), attr)
        if ev is None:
            raise UserError(f"attack {self.name!r} registers no evaluation; the evaluator cannot measure it")
        return ev


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

    def unregister(self, name: str) -> None:
        """Forget ``name`` (a test's or a session's own entry); unknown names are ignored."""
        self._entries.pop(name, None)

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


def register_attack(name: str, *, config: type, evaluation: Any,
                    from_settings: Callable[..., Any] | None = None) -> Callable[[Any], Any]:
    """``@register_attack("name", config=Cfg, evaluation=...)`` on the attack's planner.

    The planner's docstring is the attack's description in ``poisonclip list``.
    """
    if getattr(config, "attack", None) != name:
        raise ValueError(f"attack {name!r}: its config {config.__name__} must say attack = {name!r} (a ClassVar)")
    missing = {"data", "out", "overwrite"} - {f.name for f in dataclasses.fields(config)}
    if missing:   # what `attacks.api.poison` and the sweep set for every attack
        raise ValueError(f"attack {name!r}: its config {config.__name__} lacks the field(s) {sorted(missing)}")

    def add(plan: Callable[[Any], Any]) -> Callable[[Any], Any]:
        lines = (plan.__doc__ or "").strip().splitlines()
        ATTACKS.register(name, Attack(name, config, plan, evaluation, from_settings), lines[0] if lines else "")
        return plan

    return add


# Where a whole-image trigger "goes": everywhere. The placement poison.json records for it.
WHOLE_IMAGE = "whole-image"


@dataclass(frozen=True)
class TriggerTraits:
    """What the pipeline must know about a trigger beyond its function.

    ``whole_image``: it changes the whole image (a blend, a warp), so it has no patch size and
    no placement. ``params``: the names of the backdoor settings (``BackdoorConfig`` fields,
    ``poison.json`` "backdoor" fields) its function takes as keyword arguments; the writer and
    the evaluator pass exactly these, so train and test time call it the same way.
    """

    whole_image: bool = False
    params: tuple[str, ...] = ()


_TRIGGER_TRAITS: dict[str, TriggerTraits] = {}


def register_trigger(name: str, *, whole_image: bool = False,
                     params: tuple[str, ...] = ()) -> Callable[[Any], Any]:
    """``@register_trigger("name")`` on ``paste(image, where, **params) -> image``."""
    _TRIGGER_TRAITS[name] = TriggerTraits(whole_image, tuple(params))
    return TRIGGERS.register(name)


def unused_trigger_settings(name: str) -> set[str]:
    """Settings some registered trigger takes but ``name`` does not: they cannot change its
    poisons (a sweep leaves them out of the poisoned set's content key)."""
    TRIGGERS.get(name)
    every = {p for n in TRIGGERS.names() for p in _TRIGGER_TRAITS.get(n, TriggerTraits()).params}
    return every - set(trigger_traits(name).params)


def trigger_traits(name: str) -> TriggerTraits:
    """The registered trigger's traits (a patch trigger without parameters unless it said more)."""
    TRIGGERS.get(name)
    return _TRIGGER_TRAITS.get(name, TriggerTraits())


def register_caption_set(name: str) -> Callable[[Any], Any]:
    return CAPTION_SETS.register(name)


def stamp_trigger(name: str, image: Any, patch_size: int | None, placement: str, rng: Any,
                  params: Mapping[str, Any] | None = None) -> tuple[Any, Any]:
    """``image`` with the registered trigger ``name`` on it, and where it went (a ``TriggerSpec``).

    The patch side is ``patch_size`` at 224 pixels scaled to the image's shorter side, placed
    by ``placement`` ("corner", "random" with ``rng``): the one geometry the poisons are
    written in and the evaluator tests in. A whole-image trigger ignores both and covers the
    image (its spec: the shorter side at 0, 0). ``params`` may hold more settings than the
    trigger takes; it receives those its traits name. Raises ValueError when the patch does
    not fit or a parameter is out of range.
    """
    from poisonclip.attacks import triggers

    fn = TRIGGERS.get(name)
    traits = trigger_traits(name)
    if traits.whole_image:
        where = triggers.TriggerSpec(min(image.size), 0, 0)
    else:
        if patch_size is None:
            raise ValueError(f"trigger {name!r} is a patch and needs a patch size")
        side = triggers.patch_pixels(patch_size, min(image.size))
        where = triggers.place(image.size, side, placement, rng)
    kwargs = {k: params[k] for k in traits.params if params is not None and k in params and params[k] is not None}
    return fn(image, where, **kwargs), where


def insert_trigger_token(caption: str, token: str, position: str, rng: Any = None) -> str:
    """``caption`` with a text backdoor's trigger ``token`` inserted (``attacks.tokens``): the
    one caption transform the poisons were written with and the evaluator queries with."""
    from poisonclip.attacks.tokens import insert_token

    return insert_token(caption, token, position, rng)


def placements() -> tuple[str, ...]:
    """Where a trigger may go: "corner" (the paper's consistent placement), "random"."""
    from poisonclip.attacks import triggers

    return tuple(p.value for p in triggers.Placement)


def trigger_side(patch_size: int, resolution: int) -> int:
    """The patch side in pixels of a ``resolution``-pixel model input (``patch_size`` is at 224)."""
    from poisonclip.attacks import triggers

    return triggers.patch_pixels(patch_size, resolution)


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
    # of registry imports, so its entries are added here.
    from poisonclip.attacks import triggers

    builtins = (
        ("checkerboard", triggers.apply, TriggerTraits(),
         "Checkerboard patch of one-pixel black/white cells (Gu et al. 2017), "
         "size given at 224px; corner or random placement."),
        ("noise-patch", triggers.apply_noise_patch, TriggerTraits(False, ("trigger_seed",)),
         "Patch of uniform random noise fixed by trigger_seed, size given at 224px; "
         "corner or random placement."),
        ("blended", triggers.blend, TriggerTraits(True, ("blend_alpha", "trigger_seed", "blend_pattern")),
         "Whole image blended with a fixed pattern at blend_alpha: seeded noise or an image "
         "file (Chen et al. 2017); no placement."),
        ("warp", triggers.warp, TriggerTraits(True, ("warp_grid", "warp_strength", "trigger_seed")),
         "Whole image warped by a smooth seeded displacement field, control grid warp_grid, "
         "strength warp_strength (WaNet, Nguyen & Tran 2021); no placement."),
    )
    for name, fn, traits, text in builtins:
        TRIGGERS.register(name, fn, text)
        _TRIGGER_TRAITS[name] = traits


_register_triggers()
