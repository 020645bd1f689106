"""The attack stage as a library: a frozen config in, a poisoned dataset folder out.

    from poisonclip.attacks.api import BackdoorConfig, poison
    result = poison(BackdoorConfig(data="corpus/train.tsv", out="poisoned", target_label="star",
                                   n_poisons=50))
    result.train_data   # pass to open_clip_train --train-data

The attack is looked up by the config's ``attack`` name in the registry (any registered
attack, built in or your own), plans the poisons (``plan``), and the writer turns the plan and
the clean data into the folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from poisonclip.attacks.backdoor import BackdoorConfig
from poisonclip.attacks.captions import CaptionSet, build_caption_set, check_caption_source, size_captions
from poisonclip.attacks.plan import Plan, rng_for
from poisonclip.attacks.registry import ATTACKS
from poisonclip.attacks.targeted import TargetedConfig, TargetSpec
from poisonclip.attacks.writer import PoisonResult, _check_out, write_poisoned
from poisonclip.data.csv_io import CsvFormat
from poisonclip.errors import SettingError

__all__ = ["AttackConfig", "BackdoorConfig", "CaptionSetConfig", "PoisonResult", "TargetSpec",
           "TargetedConfig", "caption_set", "plan", "poison"]

AttackConfig = Union[BackdoorConfig, TargetedConfig]


def plan(cfg: AttackConfig) -> Plan:
    """Decide every poison (images, captions, trigger settings) without writing anything."""
    return ATTACKS.get(cfg.attack).plan(cfg)


def poison(cfg: AttackConfig) -> PoisonResult:
    """Plan the attack and write the poisoned dataset folder ``cfg.out`` atomically."""
    out = _check_out(cfg.out, cfg.overwrite, cfg.data, getattr(cfg, "target_source", None))  # before any expensive work
    return write_poisoned(plan(cfg), out, overwrite=cfg.overwrite)


@dataclass(frozen=True)
class CaptionSetConfig:
    label: str
    source: str = "search"         # a registered caption set
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
    check_caption_source("source", cfg.source)
    if cfg.source == "search" and not cfg.data:
        raise SettingError("data", "caption search needs the dataset to search")
    cs = build_caption_set(cfg.source, cfg.label, cfg.data, cfg.plurals,
                           CsvFormat(cfg.img_key, cfg.caption_key, cfg.csv_sep))
    cs.require_nonempty()
    sized = size_captions(cs.captions, cfg.n, rng_for(cfg.seed, "captions")) if cfg.n is not None else None
    return cs, sized
