"""What an attack decided, before anything is written: the hand-off from planner to writer.

Planners (``targeted.py``, ``backdoor.py``) choose images, captions and trigger settings;
the writer (``writer.py``) renders each item and writes the dataset. Every random choice is
drawn from its own stream keyed by (seed, purpose, index), so a poison's content does not
depend on the order in which items are processed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import zlib
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from poisonclip.data.csv_io import CsvFormat
from poisonclip.errors import SettingError


def rng_for(seed: int, *parts: str | int) -> np.random.Generator:
    """An independent generator for one purpose: ``rng_for(seed, "noise", 17)``."""
    words = [int(seed)] + [zlib.crc32(p.encode("utf-8")) if isinstance(p, str) else int(p) for p in parts]
    return np.random.default_rng(words)


@dataclass(frozen=True)
class PoisonItem:
    """One poisoned sample to render: source image + caption + how to alter the image."""

    index: int
    key: str
    attack: str
    caption: str
    target_label: str
    source_key: str
    source_image: bytes            # encoded bytes of the clean source (x' or a dataset image)
    target_id: str = ""
    patch_size: int | None = None  # trigger side at 224px; None: no trigger
    resolution: int | None = None  # with a trigger: the image is written as its centre square at
    #                                this many pixels (the training input size), patch in those pixels
    placement: str = ""
    trigger: str = ""
    trigger_params: tuple[tuple[str, Any], ...] = ()  # (setting, value) the trigger function takes
    noise_sigma: float = 0.0


@dataclass(frozen=True)
class TargetImage:
    """A targeted-poisoning target x', saved for the evaluator as ``targets/<id>.png``."""

    id: str
    label: str
    png: bytes


@dataclass(frozen=True)
class Plan:
    attack: str
    seed: int
    dataset: str                    # the clean dataset (absolute spec)
    fmt: CsvFormat
    items: tuple[PoisonItem, ...]
    section: Mapping[str, Any]      # poison.json "backdoor" or "targets" entry
    config: Mapping[str, Any]       # resolved config, JSON-ready
    targets: tuple[TargetImage, ...] = ()
    skipped: Mapping[str, int] = field(default_factory=dict)
    poison_shards: int | None = None
    shard_prefix: str = "poison-"


def poison_key(attack: str, seed: int, index: int) -> str:
    return f"{attack}-s{seed}-{index:06d}"


def absolute_spec(spec: str | os.PathLike) -> str:
    """A dataset spec with every path made absolute (``::``-joined parts, braces kept)."""
    return "::".join(os.path.abspath(os.path.expanduser(p)) for p in str(spec).split("::"))


def jsonable(obj: Any) -> Any:
    """A config as plain JSON values (enums by value, paths as strings)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (list, tuple)):
        return [jsonable(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    return obj


def check_common(n_poisons_total: int, seed: int, noise_sigma: float, poison_shards: int | None,
                 shard_prefix: str) -> None:
    """Checks every attack shares; each failure is one line for the user."""
    if n_poisons_total <= 0:
        raise SettingError("n_poisons", f"must be positive, got {n_poisons_total}")
    if seed < 0:
        raise SettingError("seed", f"must be >= 0, got {seed}")
    if noise_sigma < 0:
        raise SettingError("noise_sigma", f"must be >= 0 (pixel units, 0..255), got {noise_sigma}")
    if poison_shards is not None and poison_shards <= 0:
        raise SettingError("poison_shards", f"must be positive, got {poison_shards}")
    if not shard_prefix or any(c in shard_prefix for c in "/\\{}:"):
        raise SettingError("shard_prefix", f"{shard_prefix!r} must be non-empty, without / \\ {{ }} :")


# A poison shard may hold at most this many times the poisons per shard of an even spread over
# as many shards as the clean data has (the writer's default) before it is called bunched.
SHARD_BUNCHING_FACTOR = 2.0


def shard_bunching(n_poisons: int, n_poison_shards: int, n_clean_shards: int) -> str | None:
    """A warning when the poisons are concentrated in too few WebDataset shards, else None.

    open_clip reads each shard's samples together (shards are shuffled, samples only within a
    small buffer), so poisons crowded into a few shards arrive in a few batches of the epoch,
    not spread through it like the clean data: a different, weaker attack than the paper's.
    """
    if n_poisons <= 0 or n_poison_shards <= 0 or n_clean_shards <= 0:
        return None
    even = n_poisons / n_clean_shards
    most = math.ceil(n_poisons / n_poison_shards)
    if most <= SHARD_BUNCHING_FACTOR * max(1.0, even):
        return None
    return (f"poison_shards={n_poison_shards}: up to {most} of the {n_poisons} poisons share one shard, more "
            f"than {SHARD_BUNCHING_FACTOR:g}x the {even:.3g} per shard of a spread over the {n_clean_shards} "
            "clean shards, so they reach training bunched in a few batches; leave poison_shards unset "
            "(one poison shard per clean shard) to spread them like the clean data")
