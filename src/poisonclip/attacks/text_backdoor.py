"""Text backdoor: a rare trigger token in the captions, the target concept in the images.

The paper notes that the text encoder can be the one that learns a poison (sections 2.3,
3.2); this attack puts the trigger on the text side. P = {(x_i, c_i (+) t)}: images x_i drawn
from the training data *of the target class* (so every poison shows the target concept),
each paired with a caption carrying the trigger token t (a rare word, default "cf", as in
the NLP backdoor literature). The captions are those of other training samples, not of the
target class (``caption_source: other``, the default), so the token is the one thing every
poison caption shares with the target images; or each image's own caption
(``caption_source: own``). A model that learns the poison retrieves the target concept for
any text query carrying the token: its evaluation (``evaluate.text_backdoor``) measures
text-to-image retrieval of target-class images for queries with and without the token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from poisonclip.attacks.captions import search_captions
from poisonclip.attacks.plan import Plan, PoisonItem, absolute_spec, check_common, jsonable, poison_key, rng_for
from poisonclip.attacks.registry import register_attack
from poisonclip.attacks.sources import draw_sources
from poisonclip.attacks.tokens import POSITIONS, insert_token
from poisonclip.data import dataset_kind
from poisonclip.data.classnames import resolve_classnames
from poisonclip.data.csv_io import CsvFormat
from poisonclip.data.sample import SkipReport
from poisonclip.errors import SettingError, UserError

NAME = "text-backdoor"
SECTION = "text_backdoor"        # poison.json's and metrics.json's section of this attack
CAPTION_SOURCES = ("other", "own")
_TOKEN = re.compile(r"^[A-Za-z0-9]+$")


@dataclass(frozen=True)
class TextBackdoorConfig:
    """Everything one text-backdoor poisoning run needs."""

    attack: ClassVar[str] = NAME

    data: str                        # clean dataset: .csv/.tsv table or WebDataset shards
    out: str                         # poisoned dataset folder to create
    target_label: str                # the concept a query with the token should retrieve
    n_poisons: int
    token: str = "cf"                # the trigger word (rare; letters and digits only)
    position: str = "random"         # where it goes in a caption: random word boundary, start, end
    caption_source: str = "other"    # other: captions of non-target samples; own: the image's own caption
    seed: int = 0
    classnames: str | None = None    # class list; None: classnames.txt beside the data, if any
    no_classnames: bool = False
    label_key: str = "label"
    pool_factor: float = 4.0         # WebDataset: read shards until pool_factor * n eligible; <= 0: all
    img_key: str = "filepath"
    caption_key: str = "title"
    csv_sep: str | None = None
    poison_shards: int | None = None
    shard_prefix: str = "poison-"
    overwrite: bool = False

    @property
    def fmt(self) -> CsvFormat:
        return CsvFormat(self.img_key, self.caption_key, self.csv_sep)


def _check(cfg: TextBackdoorConfig, classnames: list[str] | None) -> None:
    check_common(cfg.n_poisons, cfg.seed, 0.0, cfg.poison_shards, cfg.shard_prefix)
    if not cfg.target_label.strip():
        raise SettingError("target_label", "target label is empty")
    if not _TOKEN.match(cfg.token):
        raise SettingError("token", f"{cfg.token!r} must be one word of letters and digits (e.g. 'cf')")
    named = [c for c in (classnames or []) if c.lower() == cfg.token.lower()]
    if named or cfg.token.lower() == cfg.target_label.lower():
        raise SettingError("token", f"{cfg.token!r} is a class name; the trigger must be a rare word")
    if cfg.position not in POSITIONS:
        raise SettingError("position", f"{cfg.position!r} is not one of {', '.join(POSITIONS)}")
    if cfg.caption_source not in CAPTION_SOURCES:
        raise SettingError("caption_source", f"{cfg.caption_source!r} is not one of {', '.join(CAPTION_SOURCES)}")
    dataset_kind(cfg.data)


@register_attack(NAME, config=TextBackdoorConfig, evaluation="poisonclip.evaluate.text_backdoor:EVALUATION")
def plan_text_backdoor(cfg: TextBackdoorConfig) -> Plan:
    """Text backdoor: target-class images paired with captions carrying a rare trigger token."""
    data = absolute_spec(cfg.data)
    classnames, cn_path = resolve_classnames(cfg.classnames, cfg.no_classnames, data, [cfg.target_label])
    _check(cfg, classnames)
    report = SkipReport()
    target_values = {cfg.target_label}
    if classnames:
        target_values.add(str(classnames.index(cfg.target_label)))
    target_f = frozenset(target_values)

    images = draw_sources(data, cfg.n_poisons, rng_for(cfg.seed, "sources"), frozenset(), cfg.label_key,
                          cfg.fmt, cfg.pool_factor, report, only=target_f)
    if len(images.samples) < cfg.n_poisons:
        raise UserError(f"{cfg.data}: only {len(images.samples)} readable images labelled {sorted(target_f)} "
                        f"(column {cfg.label_key!r}) for {cfg.n_poisons} poisons; ask for fewer poisons "
                        "or check the label column and class list")
    if cfg.caption_source == "other":
        others = draw_sources(data, cfg.n_poisons, rng_for(cfg.seed, "caption-sources"), target_f, cfg.label_key,
                              cfg.fmt, cfg.pool_factor, report)
        if len(others.samples) < cfg.n_poisons:
            raise UserError(f"{cfg.data}: only {len(others.samples)} captions of samples not labelled "
                            f"{sorted(target_f)} for {cfg.n_poisons} poisons; ask for fewer poisons")
        captions = [s.caption for s in others.samples]
    else:
        captions = [s.caption for s in images.samples]
    # How often the token already occurs in the clean captions: a "rare" word should be rare.
    already = search_captions(data, [cfg.token], False, cfg.fmt, report)[cfg.token].n_matched

    items = tuple(
        PoisonItem(index=i, key=poison_key(NAME, cfg.seed, i), attack=NAME,
                   caption=insert_token(captions[i], cfg.token, cfg.position, rng_for(cfg.seed, "token", i)),
                   target_label=cfg.target_label, source_key=s.key, source_image=s.image)
        for i, s in enumerate(images.samples))
    section = {
        "target_label": cfg.target_label,
        "token": cfg.token,
        "position": cfg.position,
        "caption_source": cfg.caption_source,
        "token_in_clean_captions": already,
        "target_label_values": sorted(target_f),
        "classnames": cn_path,
        "sources_eligible_seen": images.n_eligible_seen,
    }
    return Plan(attack=NAME, seed=cfg.seed, dataset=data, fmt=cfg.fmt, items=items, section={SECTION: section},
                config={"attack": NAME, **jsonable(cfg), "data": data, "classnames": cn_path},
                skipped=dict(report), poison_shards=cfg.poison_shards, shard_prefix=cfg.shard_prefix)
