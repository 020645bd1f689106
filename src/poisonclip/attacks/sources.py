"""Drawing the clean source images a backdoor patches (and random targets): a seeded reservoir
sample over a dataset, at a cost that fits Conceptual-Captions scale. Reading the data is
``poisonclip.data``'s job; this module only decides which samples are drawn.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from poisonclip.data import dataset_kind
from poisonclip.data.csv_io import CsvFormat, check_row, iter_rows, row_sample
from poisonclip.data.sample import CorruptSample, Sample, SkipReport, decode_image
from poisonclip.data.tar_io import scan_groups
from poisonclip.data.wds_io import expand_shards, group_sample

@dataclass(frozen=True)
class SourceDraw:
    samples: list[Sample]        # in draw order
    n_eligible_seen: int         # candidates that passed the label filter
    n_excluded: int              # candidates of an excluded label
    n_shards_read: int | None    # WebDataset only
    n_shards: int | None
    skipped: dict[str, int] = field(default_factory=dict)  # what this draw skipped, per reason


def draw_sources(source: str | os.PathLike, n: int, rng: np.random.Generator,
                 excluded: frozenset[str] = frozenset(), label_key: str = "label",
                 fmt: CsvFormat = CsvFormat(), pool_factor: float = 4.0,
                 report: SkipReport | None = None, need_caption: bool = True,
                 only: frozenset[str] | None = None) -> SourceDraw:
    """Draw ``n`` different readable images whose label is not in ``excluded`` (and, with
    ``only``, is one of ``only``: a text backdoor's images of the target class; a sample
    without a label then counts as excluded).

    Reservoir sampling (Algorithm R) over the eligible samples keeps memory at ``n`` images.
    CSV tables are streamed whole. WebDataset shards are visited in a seeded random order
    and the visit stops once ``pool_factor * n`` eligible samples were seen, so time and
    memory grow with the number of poisons, not with the dataset; ``pool_factor <= 0``
    visits every shard (uniform over the whole dataset). Images are decoded only when they
    enter the reservoir; unreadable ones are skipped and counted.
    """
    draw = _draw(source, n, rng, excluded, label_key, fmt, pool_factor, need_caption, only)
    if report is not None:
        # The caller's report may already hold a caption search over the same rows: per
        # reason, keep the larger count, so a row met by both passes counts once.
        report.merge_max(draw.skipped)
    return draw


def _draw(source: str | os.PathLike, n: int, rng: np.random.Generator, excluded: frozenset[str],
          label_key: str, fmt: CsvFormat, pool_factor: float, need_caption: bool,
          only: frozenset[str] | None = None) -> SourceDraw:
    report = SkipReport()
    reservoir: list[Sample] = []
    seen = n_excl = 0

    def offer(label: object, load: Callable[[], Sample | None]) -> None:
        nonlocal seen, n_excl
        if (label is not None and str(label) in excluded) or \
                (only is not None and (label is None or str(label) not in only)):
            n_excl += 1
            return
        seen += 1
        if len(reservoir) < n:
            slot = len(reservoir)
        else:
            slot = int(rng.integers(0, seen))
            if slot >= n:
                return
        s = load()
        if s is None:
            seen -= 1
            return
        try:
            decode_image(s.image)
        except CorruptSample as e:
            report.skip(e.reason)
            seen -= 1
            return
        if slot == len(reservoir):
            reservoir.append(s)
        else:
            reservoir[slot] = s

    if dataset_kind(source) == "csv":
        root = Path(source).parent
        required = [fmt.img_key, fmt.caption_key] if need_caption else [fmt.img_key]
        for i, row in enumerate(iter_rows(source, fmt, required)):
            checked = check_row(row, i, fmt, root, report, need_caption)
            if checked is None:
                continue

            def load(row=row, i=i, checked=checked) -> Sample | None:
                try:
                    return row_sample(row, i, fmt, *checked)
                except CorruptSample as e:
                    report.skip(e.reason)
                    return None

            offer(row.get(label_key), load)
        return SourceDraw(reservoir, seen, n_excl, None, None, dict(report))

    shards = expand_shards(source)
    order = rng.permutation(len(shards))
    target = pool_factor * n if pool_factor > 0 else float("inf")
    n_read = 0
    for idx in order:
        if seen >= target and len(reservoir) >= n:
            break
        n_read += 1
        for key, files in scan_groups(shards[idx], report):
            s = group_sample(key, files, shards[idx], report, need_caption)
            if s is not None:
                offer(s.meta.get(label_key), lambda s=s: s)
    return SourceDraw(reservoir, seen, n_excl, n_read, len(shards), dict(report))
