"""The poison manifest: one row per injected sample, the ground truth defenses are scored on.

``manifest.csv`` (comma-separated, header row) sits in the poisoned dataset folder. Each
row says what was injected (key, caption, image sha256), why (attack, target), from what
(source key and source image hash) and how (trigger size and position at the image's own
resolution, noise sigma, seed), and where it was written (``location``). A triggered poison
is written as its source's centre square at ``resolution`` pixels, the input size of the
model it is meant for, and its trigger position is given in those pixels.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from poisonclip.contracts import (MANIFEST_COLUMNS, MANIFEST_FILE, MANIFEST_FLOAT_COLUMNS, MANIFEST_INT_COLUMNS,
                                  MANIFEST_OPTIONAL_COLUMNS)
from poisonclip.data.csv_io import write_table
from poisonclip.errors import UserError


@dataclass(frozen=True)
class ManifestRow:
    """One row; the fields are ``contracts.MANIFEST_COLUMNS``, in that order."""

    key: str
    attack: str                 # "backdoor" | "targeted"
    target_id: str              # targeted: the target's id; backdoor: ""
    target_label: str
    caption: str
    source_key: str             # dataset key of the source image, or the target's file name
    source_sha256: str          # sha256 of the source image bytes as read
    trigger_size: int | None    # patch side in pixels of the written image (= the model input)
    trigger_x: int | None
    trigger_y: int | None
    patch_size: int | None      # patch side at 224px, as configured
    placement: str              # "corner" | "random" | ""
    noise_sigma: float
    seed: int
    sha256: str                 # sha256 of the image bytes written
    location: str               # "poison_images/<key>.png" or the shard name holding it
    resolution: int | None = None  # triggered poisons: the square side the image was written at
    trigger: str = ""              # triggered poisons: the registered trigger's name
    trigger_params: str = ""       # its parameters (blend_alpha, trigger_seed, ...) as a JSON object; "" if none


COLUMNS: tuple[str, ...] = MANIFEST_COLUMNS


def write_manifest(path: str | os.PathLike, rows: Iterable[ManifestRow]) -> Path:
    return write_table(path, (dataclasses.asdict(r) for r in rows), COLUMNS, sep=",")


def read_manifest(path: str | os.PathLike) -> list[ManifestRow]:
    """Rows of a manifest written by ``write_manifest`` (e.g. to score a defense)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_FILE
    try:
        f = open(path, newline="", encoding="utf-8")
    except OSError as e:
        raise UserError(f"{path}: cannot read manifest ({e.strerror})") from None
    with f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or []) and c not in MANIFEST_OPTIONAL_COLUMNS]
        if missing:
            raise UserError(f"{path}: not a poison manifest (missing columns {missing})")
        out = []
        for row in reader:
            vals: dict = {}
            for c in COLUMNS:
                v = row.get(c) or ""
                if c in MANIFEST_INT_COLUMNS:
                    vals[c] = int(v) if v != "" else None
                elif c in MANIFEST_FLOAT_COLUMNS:
                    vals[c] = float(v)
                else:
                    vals[c] = v
            out.append(ManifestRow(**vals))
    return out
