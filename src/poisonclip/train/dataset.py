"""Turn "the dataset the user pointed at" into the exact arguments open_clip_train needs.

Accepted: a CSV/TSV table, WebDataset shards (folder, ``.tar``, brace pattern, ``a::b``),
a poisoned-dataset folder (``poison.json``, written by ``poisonclip poison``) or a corpus
folder (``train.tsv``, written by ``poisonclip data synth``). Everything open_clip would only
discover after minutes of start-up (missing file, wrong column, no sample count, fewer
samples than one batch) is checked here first and reported as a one-line ``UserError``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from poisonclip.data.csv_io import CsvFormat, iter_rows
from poisonclip.data.wds_io import SIZES_FILE, expand_shards, iter_captions
from poisonclip.errors import UserError
from poisonclip.io_utils import sha256_file

POISON_FILE = "poison.json"
CORPUS_TABLE = "train.tsv"


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
    if p.is_dir() and (p / POISON_FILE).is_file():
        return _poisoned(p.resolve(), hash_data)
    if p.is_dir() and (p / CORPUS_TABLE).is_file():
        return _table(p.resolve() / CORPUS_TABLE, fmt, hash_data, origin="corpus", source=p.resolve())
    if raw.lower().endswith((".csv", ".tsv")):
        if not p.is_file():
            raise UserError(f"{raw}: no such file; pass an existing CSV/TSV table")
        return _table(p.resolve(), fmt, hash_data)
    if p.is_dir() or raw.endswith(".tar") or "{" in raw or "::" in raw:
        return _shards(raw, hash_data)
    if not p.exists():
        raise UserError(f"{raw}: no such file or folder; give a CSV/TSV table, a folder of .tar "
                        f"shards, a poisoned dataset folder ({POISON_FILE}) or a corpus folder ({CORPUS_TABLE})")
    raise UserError(f"{raw}: not a dataset; give a .csv/.tsv table, .tar shards, a poisoned dataset "
                    f"folder ({POISON_FILE}) or a corpus folder ({CORPUS_TABLE})")


def _separator(path: Path, fmt: CsvFormat) -> str:
    # The same rule as poisonclip.data.csv_io reads with; open_clip needs it spelled out.
    if fmt.sep is not None:
        return fmt.sep
    if path.suffix.lower() == ".tsv":
        return "\t"
    with open(path, encoding="utf-8", errors="replace") as f:
        return "\t" if "\t" in f.readline() else ","


def _table(path: Path, fmt: CsvFormat, hash_data: bool, origin: str = "table",
           source: Path | None = None) -> TrainData:
    sep = _separator(path, fmt)
    rows = iter_rows(path, CsvFormat(fmt.img_key, fmt.caption_key, sep))
    n, first = 0, None
    for row in rows:
        if first is None:
            first = row
        n += 1
    if first is None:
        raise UserError(f"{path}: the table has a header but no rows")
    rel = first.get(fmt.img_key) or ""
    img = Path(rel) if os.path.isabs(rel) else path.parent / rel
    if not img.is_file():
        raise UserError(f"{path}: image of row 1 not found ({rel}); relative paths must be "
                        "relative to the table's folder")
    return TrainData(source=str(source or path), origin=origin, dataset_type="csv",
                     train_data=str(path), num_samples=n, cwd=str(path.parent), csv_sep=sep,
                     img_key=fmt.img_key, caption_key=fmt.caption_key,
                     sha256=sha256_file(path) if hash_data else None)


def _absolute_spec(spec: str) -> str:
    return "::".join(str(Path(part).expanduser().absolute()) for part in spec.split("::"))


def _count_shards(shards: list[Path]) -> int:
    """Samples in ``shards``: from sizes.json when it covers them all (as open_clip reads
    it: next to the first shard, keyed by base name), else by reading the captions."""
    sizes_file = shards[0].parent / SIZES_FILE
    if sizes_file.is_file():
        try:
            sizes = json.loads(sizes_file.read_text())
            return sum(int(sizes[s.name]) for s in shards)
        except (ValueError, KeyError, TypeError):
            pass
    return sum(1 for _ in iter_captions("::".join(str(s) for s in shards)))


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
    n = _count_shards(shards)
    if n == 0:
        raise UserError(f"{raw}: the shards hold no samples")
    return TrainData(source=str(p.absolute()) if p.is_dir() else spec, origin="shards",
                     dataset_type="webdataset", train_data=spec, num_samples=n,
                     cwd=str(shards[0].parent), sha256=_shards_sha(shards) if hash_data else None,
                     num_shards=len(shards))


_POISON_FIELDS = ("dataset_type", "train_data", "num_samples")


def _poisoned(folder: Path, hash_data: bool) -> TrainData:
    pj = folder / POISON_FILE
    try:
        info = json.loads(pj.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{pj}: not readable JSON ({e}); rewrite it with `poisonclip poison`") from None
    missing = [k for k in _POISON_FIELDS if k not in info]
    if missing:
        raise UserError(f"{pj}: missing field(s) {missing}; rewrite it with `poisonclip poison`")
    kind = info["dataset_type"]
    if kind == "csv":
        fmt = CsvFormat(info.get("csv_img_key", "filepath"), info.get("csv_caption_key", "title"),
                        info.get("csv_sep", "\t"))
        table = Path(info["train_data"])
        if not table.is_absolute():
            table = folder / table
        if not table.is_file():
            raise UserError(f"{pj}: train_data {info['train_data']} does not exist")
        base = _table(table, fmt, hash_data, origin="poisoned", source=folder)
    elif kind == "webdataset":
        base = _shards(info["train_data"], hash_data)
    else:
        raise UserError(f"{pj}: dataset_type must be 'csv' or 'webdataset', not {kind!r}")
    return TrainData(**{**base.__dict__, "source": str(folder), "origin": "poisoned",
                        "poison_json": str(pj), "poison_json_sha256": sha256_file(pj)})
