"""Datasets: one ``Sample`` type; CSV/TSV, WebDataset and labelled-set readers and writers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from poisonclip.data.csv_io import CsvFormat, read_csv, write_csv
from poisonclip.data.sample import CorruptSample, Sample, SkipReport
from poisonclip.data.wds_io import read_shards, write_shards

__all__ = ["CsvFormat", "CorruptSample", "Sample", "SkipReport", "dataset_kind", "read_dataset",
           "read_csv", "write_csv", "read_shards", "write_shards"]


def dataset_kind(source: str | os.PathLike) -> str:
    """'csv' for a .csv/.tsv table, 'webdataset' for shards (folder, .tar, brace pattern)."""
    s = str(source)
    if s.lower().endswith((".csv", ".tsv")):
        return "csv"
    if s.endswith(".tar") or "{" in s or "::" in s or Path(s).is_dir():
        return "webdataset"
    from poisonclip.errors import UserError
    raise UserError(f"{s}: not a dataset; give a .csv/.tsv table, a folder of .tar shards, "
                    "or a shard pattern like data/{00000..00009}.tar")


def read_dataset(source: str | os.PathLike, fmt: CsvFormat = CsvFormat(),
                 report: SkipReport | None = None, verify: bool = True) -> Iterator[Sample]:
    if dataset_kind(source) == "csv":
        return read_csv(source, fmt, report, verify)
    return read_shards(source, report, verify)
