"""One sample of a dataset by its key, reading only that sample's image (a target image named
by key: a table is streamed row by row, shards are scanned by tar header)."""

from __future__ import annotations

import os
from pathlib import Path

from poisonclip.data import dataset_kind
from poisonclip.data.csv_io import CsvFormat, check_row, csv_key, iter_rows, row_sample
from poisonclip.data.sample import IMAGE_EXTS, CorruptSample, Sample, SkipReport
from poisonclip.data.tar_io import scan_groups
from poisonclip.data.wds_io import expand_shards, group_sample
from poisonclip.errors import UserError


def find_sample(source: str | os.PathLike, key: str, fmt: CsvFormat = CsvFormat(),
                report: SkipReport | None = None) -> Sample | None:
    """The sample with ``key`` (first match), reading only that sample's image. Skips met on
    the way are folded into ``report`` with ``SkipReport.merge_max`` (another pass's counts)."""
    own = SkipReport()
    try:
        return _find_sample(source, key, fmt, own)
    finally:
        if report is not None:
            report.merge_max(own)


def _find_sample(source: str | os.PathLike, key: str, fmt: CsvFormat, report: SkipReport) -> Sample | None:
    if dataset_kind(source) == "csv":
        root = Path(source).parent
        for i, row in enumerate(iter_rows(source, fmt, [fmt.img_key])):
            if csv_key(row, i) != key:
                continue
            checked = check_row(row, i, fmt, root, report, need_caption=False)
            p = checked[1] if checked else None
            try:
                if checked is None:
                    raise CorruptSample("missing_image")
                return row_sample(row, i, fmt, *checked)
            except CorruptSample as e:
                raise UserError(f"{source}: image of key {key!r} ({p}) cannot be read ({e.reason})") from None
        return None
    for shard in expand_shards(source):
        for k, files in scan_groups(shard, report, only_key=key):
            if k != key:
                continue
            if not any(e in files for e in IMAGE_EXTS):
                raise UserError(f"{shard}: sample {key!r} has no image")
            return group_sample(k, files, shard, SkipReport(), need_caption=False)
    return None
