"""The attack stage as a library: a frozen config in, a poisoned dataset folder out.

    from poisonclip.attacks.api import BackdoorConfig, poison
    result = poison(BackdoorConfig(data="corpus/train.tsv", out="poisoned", target_label="star",
                                   n_poisons=50))
    result.train_data   # pass to open_clip_train --train-data

The attack is looked up by the config's ``attack`` name in the registry, plans the poisons
(``plan``), and the writer turns the plan and the clean data into the folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Union

from poisonclip import contracts
from poisonclip.attacks.backdoor import BackdoorConfig
from poisonclip.attacks.captions import CaptionSet, CaptionSource, build_caption_set, size_captions
from poisonclip.attacks.plan import Plan, rng_for
from poisonclip.attacks.registry import ATTACKS
from poisonclip.attacks.targeted import TargetedConfig, TargetSpec
from poisonclip.attacks.writer import PoisonResult, _check_out, write_poisoned
from poisonclip.data.csv_io import CsvFormat
from poisonclip.errors import UserError

__all__ = ["AttackConfig", "BackdoorConfig", "CaptionSetConfig", "PoisonResult", "TargetSpec",
           "TargetedConfig", "caption_set", "plan", "poison", "read_poison_info"]

AttackConfig = Union[BackdoorConfig, TargetedConfig]


def plan(cfg: AttackConfig) -> Plan:
    """Decide every poison (images, captions, trigger settings) without writing anything."""
    return ATTACKS.get(cfg.attack)(cfg)


def poison(cfg: AttackConfig) -> PoisonResult:
    """Plan the attack and write the poisoned dataset folder ``cfg.out`` atomically."""
    out = _check_out(cfg.out, cfg.overwrite, cfg.data, getattr(cfg, "target_source", None))  # before any expensive work
    return write_poisoned(plan(cfg), out, overwrite=cfg.overwrite)


@dataclass(frozen=True)
class CaptionSetConfig:
    label: str
    source: CaptionSource = CaptionSource.search
    data: str | None = None        # dataset to search (search only)
    plurals: bool = True
    n: int | None = None           # also size the set to n captions
    seed: int = 0
    img_key: str = "filepath"
    caption_key: str = "title"
    csv_sep: str | None = None


def caption_set(cfg: CaptionSetConfig) -> tuple[CaptionSet, list[str] | None]:
    """The caption set for a label, and (if ``n``) the n captions an attack would use.

    Attacks size with the stream ``rng_for(seed, "captions")`` (backdoor), so the preview
    shows the backdoor's exact captions for the same seed.
    """
    if cfg.source is CaptionSource.search and not cfg.data:
        raise UserError("caption search needs the dataset to search: give DATA")
    cs = build_caption_set(cfg.source, cfg.label, cfg.data, cfg.plurals,
                           CsvFormat(cfg.img_key, cfg.caption_key, cfg.csv_sep))
    cs.require_nonempty()
    sized = size_captions(cs.captions, cfg.n, rng_for(cfg.seed, "captions")) if cfg.n is not None else None
    return cs, sized


def read_poison_info(folder: str | os.PathLike) -> dict:
    """``poison.json`` as a plain mapping, read and checked by ``contracts.read_poison_info``.

    Kept for ``evaluate/api.py`` until it takes the typed record ``contracts.PoisonInfo``
    itself; new code reads the record.
    """
    return contracts.read_poison_info(folder).to_json()
