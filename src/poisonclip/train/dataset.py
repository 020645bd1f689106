"""Turn "the dataset the user pointed at" into the exact arguments open_clip_train needs.

Accepted: a CSV/TSV table, WebDataset shards (folder, ``.tar``, brace pattern, ``a::b``),
a poisoned-dataset folder (``poison.json``, written by ``poisonclip poison``) or a corpus
folder (``train.tsv``, written by ``poisonclip data synth``). Everything open_clip would only
discover after minutes of start-up (missing file, wrong column, no sample count, fewer
samples than one batch) is checked here first and reported as a one-line ``UserError``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from poisonclip.contracts import POISON_INFO_FILE, TRAIN_TABLE, read_poison_info
from poisonclip.data.csv_io import CsvFormat, check_row, csv_columns, csv_separator, iter_rows
from poisonclip.data.sample import CorruptSample, SkipReport, check_image_file
from poisonclip.data.wds_io import count_samples, expand_shards, read_sizes
from poisonclip.errors import UserError
from poisonclip.io_utils import atomic_write_bytes, sha256_file


@dataclass(frozen=True)
class TrainData:
    source: str  # what the user gave, made absolute
    origin: str  # "table" | "shards" | "poisoned" | "corpus"
    dataset_type: str  # open_clip --dataset-type: "csv" | "webdataset"
    train_data: str  # open_clip --train-data
    num_samples: int
    cwd: str  # where open_clip must run (a CSV's relative image paths resolve against it)
    csv_sep: str = "\t"
    img_key: str = "filepath"
    caption_key: str = "title"
    sha256: str | None = None  # table bytes (CSV) or the list of shard hashes (WebDataset)
    poison_json: str | None = None
    poison_json_sha256: str | None = None
    num_shards: int = 0  # WebDataset only
    skipped: dict[str, int] = field(default_factory=dict)  # samples not counted, per reason (data/sample.py)
    # CSV rows (0-based) open_clip cannot use: training reads a checked copy without them
    # (``write_checked_table``) instead of stopping at the first mid-epoch.
    drop_rows: tuple[int, ...] = ()
    checked_from: str | None = None  # the user's table, when train_data is its checked copy

    def open_clip_args(self) -> list[str]:
        args = ["--train-data", self.train_data, "--dataset-type", self.dataset_type,
                "--train-num-samples", str(self.num_samples)]
        if self.dataset_type == "csv":
            args += ["--csv-separator", self.csv_sep, "--csv-img-key", self.img_key,
                     "--csv-caption-key", self.caption_key]
        return args


def resolve(source: str | os.PathLike, fmt: CsvFormat = CsvFormat(), hash_data: bool = True) -> TrainData:
    """Inspect ``source`` and return what open_clip_train needs to train on it."""
    raw = str(source)
    p = Path(raw).expanduser()
    if p.is_dir() and (p / POISON_INFO_FILE).is_file():
        return _poisoned(p.resolve(), hash_data)
    if p.is_dir() and (p / TRAIN_TABLE).is_file():
        return _table(p.resolve() / TRAIN_TABLE, fmt, hash_data, origin="corpus", source=p.resolve())
    if raw.lower().endswith((".csv", ".tsv")):
        if not p.is_file():
            raise UserError(f"{raw}: no such file; pass an existing CSV/TSV table")
        return _table(p.resolve(), fmt, hash_data)
    if p.is_dir() or raw.endswith(".tar") or "{" in raw or "::" in raw:
        return _shards(raw, hash_data)
    if not p.exists():
        raise UserError(f"{raw}: no such file or folder; give a CSV/TSV table, a folder of .tar "
                        f"shards, a poisoned dataset folder ({POISON_INFO_FILE}) or a corpus folder ({TRAIN_TABLE})")
    raise UserError(f"{raw}: not a dataset; give a .csv/.tsv table, .tar shards, a poisoned dataset "
                    f"folder ({POISON_INFO_FILE}) or a corpus folder ({TRAIN_TABLE})")


def _table(path: Path, fmt: CsvFormat, hash_data: bool, origin: str = "table",
           source: Path | None = None, check: bool = True) -> TrainData:
    """A table open_clip reads whole with pandas and then opens image by image: a row it
    cannot use stops training mid-epoch, so with ``check`` every row is checked as
    ``poisonclip poison`` checks clean rows; unusable rows are counted per reason and listed
    in ``drop_rows``, and training reads a checked copy without them. Tables written by
    ``poisonclip poison`` were checked when written (``check=False``)."""
    sep = csv_separator(path, fmt)
    fmt = CsvFormat(fmt.img_key, fmt.caption_key, sep)
    report = SkipReport()
    n, first, drop = 0, None, []
    for i, row in enumerate(iter_rows(path, fmt)):
        if check:
            checked = check_row(row, i, fmt, path.parent, report)
            if checked is not None:
                try:
                    check_image_file(checked[1])
                except CorruptSample as e:
                    report.skip(e.reason)
                    checked = None
            if checked is None:
                drop.append(i)
                continue
        if first is None:
            first = row
        n += 1
    if first is None:
        counts = f" ({', '.join(f'{k}={v}' for k, v in sorted(report.items()))} skipped)" if report else ""
        raise UserError(f"{path}: the table has no usable rows{counts}")
    rel = first.get(fmt.img_key) or ""
    img = Path(rel) if os.path.isabs(rel) else path.parent / rel
    if not img.is_file():
        raise UserError(f"{path}: image of row 1 not found ({rel}); relative paths must be "
                        "relative to the table's folder")
    return TrainData(source=str(source or path), origin=origin, dataset_type="csv",
                     train_data=str(path), num_samples=n, cwd=str(path.parent), csv_sep=sep,
                     img_key=fmt.img_key, caption_key=fmt.caption_key,
                     sha256=sha256_file(path) if hash_data else None,
                     skipped=dict(sorted(report.items())), drop_rows=tuple(drop))


CHECKED_TABLE = "train-checked.tsv"


def use_checked_copy(data: TrainData, folder: Path) -> TrainData:
    """``data`` as training reads it: unchanged, or (when rows must be dropped) pointing at
    the checked copy ``folder/train-checked.tsv`` that ``write_checked_table`` writes."""
    if not data.drop_rows:
        return data
    return replace(data, train_data=str(folder / CHECKED_TABLE), cwd=str(folder), checked_from=data.train_data)


def write_checked_table(data: TrainData) -> Path:
    """Write the checked copy: the user's rows without ``drop_rows``, image paths made
    absolute (so open_clip runs from any folder), atomically. The user's table is untouched."""
    assert data.checked_from is not None, "call use_checked_copy first"
    src, dst = Path(data.checked_from), Path(data.train_data)
    fmt = CsvFormat(data.img_key, data.caption_key, data.csv_sep)
    drop = set(data.drop_rows)
    header = csv_columns(src, fmt)
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=data.csv_sep, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    w.writerow(header)
    for i, row in enumerate(iter_rows(src, fmt)):
        if i in drop:
            continue
        rel = row[data.img_key]
        row = {**row, data.img_key: rel if os.path.isabs(rel) else str(src.parent / rel)}
        w.writerow([row.get(c) or "" for c in header])
    # Kept rows have UTF-8 captions and paths; stray bytes in other columns become U+FFFD.
    return atomic_write_bytes(dst, buf.getvalue().encode("utf-8", "replace"))


def _absolute_spec(spec: str) -> str:
    return "::".join(str(Path(part).expanduser().absolute()) for part in spec.split("::"))


def _count_shards(shards: list[Path], report: SkipReport) -> int:
    """Samples in ``shards``: from sizes.json when it covers them all (as open_clip reads
    it: next to the first shard, keyed by base name), else by reading the captions (skips
    counted in ``report``). A malformed sizes.json is a ``UserError``."""
    sizes = read_sizes(shards[0].parent)
    if all(s.name in sizes for s in shards):
        return sum(sizes[s.name] for s in shards)
    return count_samples(shards, report)


def _shards_sha(shards: list[Path]) -> str:
    h = hashlib.sha256()
    for s in shards:
        h.update(f"{s.name} {sha256_file(s)}\n".encode())
    return h.hexdigest()


def _shards(raw: str, hash_data: bool) -> TrainData:
    shards = expand_shards(raw)
    p = Path(raw).expanduser()
    # A folder becomes an explicit list; patterns are passed on as given (made absolute).
    spec = "::".join(str(s.absolute()) for s in shards) if p.is_dir() else _absolute_spec(raw)
    report = SkipReport()
    n = _count_shards(shards, report)
    if n == 0:
        raise UserError(f"{raw}: the shards hold no samples")
    return TrainData(source=str(p.absolute()) if p.is_dir() else spec, origin="shards",
                     dataset_type="webdataset", train_data=spec, num_samples=n,
                     cwd=str(shards[0].parent), sha256=_shards_sha(shards) if hash_data else None,
                     num_shards=len(shards), skipped=dict(sorted(report.items())))


def _poisoned(folder: Path, hash_data: bool) -> TrainData:
    info = read_poison_info(folder)
    pj = folder / POISON_INFO_FILE
    if info.dataset_type == "csv":
        fmt = CsvFormat(info.csv_img_key, info.csv_caption_key, info.csv_sep)
        table = Path(info.train_data)
        if not table.is_absolute():
            table = folder / table
        if not table.is_file():
            raise UserError(f"{pj}: train_data {info.train_data} does not exist")
        base = _table(table, fmt, hash_data, origin="poisoned", source=folder, check=False)
    else:
        base = _shards(info.train_data, hash_data)
    skipped = {**base.skipped, **info.skipped}  # plus the clean rows `poisonclip poison` left out
    return TrainData(**{**base.__dict__, "source": str(folder), "origin": "poisoned",
                        "poison_json": str(pj), "poison_json_sha256": info.sha256,
                        "skipped": dict(sorted(skipped.items()))})
