"""CSV/TSV image-caption datasets in the layout open_clip's trainer reads.

open_clip (``--dataset-type csv``) reads a table with an image-path column (``filepath``)
and a caption column (``title``), tab-separated by default. We write exactly that, with
paths relative to the table's folder (or absolute, see ``write_csv``), and read tables
written by anyone.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

from poisonclip.contracts import TRAIN_TABLE
from poisonclip.data.sample import (IMAGE_EXTS, CorruptSample, Sample, SkipReport, decode_image,
                                    read_image_file)
from poisonclip.errors import UserError
from poisonclip.io_utils import atomic_write_text

OPEN_CLIP_IMG_KEY = "filepath"
OPEN_CLIP_CAPTION_KEY = "title"

csv.field_size_limit(1 << 24)
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


@dataclass(frozen=True)
class CsvFormat:
    """Column names and separator; defaults are open_clip_train's own defaults."""

    img_key: str = OPEN_CLIP_IMG_KEY
    caption_key: str = OPEN_CLIP_CAPTION_KEY
    sep: str | None = None  # None: tab for .tsv, else sniffed from the header line


def _separator(path: Path, header: str, fmt: CsvFormat) -> str:
    if fmt.sep is not None:
        return fmt.sep
    if path.suffix.lower() == ".tsv":
        return "\t"
    return "\t" if "\t" in header else ","


def header_line(path: str | os.PathLike) -> str:
    """The table's first line (read in binary: a text-mode readline decodes a whole buffer)."""
    try:
        with open(path, "rb") as f:
            line = f.readline()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return line.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise UserError(f"{path}: header is not UTF-8 text; is this really a CSV file?") from None


def csv_separator(path: str | os.PathLike, fmt: CsvFormat = CsvFormat()) -> str:
    """The separator ``iter_rows`` uses: explicit, tab for .tsv, else sniffed from the header."""
    return _separator(Path(path), header_line(path) if fmt.sep is None else "", fmt)


def csv_columns(path: str | os.PathLike, fmt: CsvFormat = CsvFormat(),
                required: Sequence[str] | None = None) -> list[str]:
    """The table's header, after ``iter_rows``'s checks (file exists, columns present)."""
    rows = iter_rows(path, fmt, required)
    try:
        next(rows)
    except StopIteration:
        pass
    finally:
        rows.close()
    return next(csv.reader([header_line(path)], delimiter=csv_separator(path, fmt)))


def csv_key(row: Mapping[str, str | None], index: int) -> str:
    """A row's key: its ``key`` column, else its row number (0 = first row after the header)."""
    return row.get("key") or f"{index:09d}"


def check_row(row: Mapping[str, str | None], index: int, fmt: CsvFormat, root: Path,
              report: SkipReport, need_caption: bool = True) -> tuple[str, Path] | None:
    """(caption, image path) of a usable row, else None with the reason counted.

    Every CSV reader applies these checks in this order, so they count a table alike:
    ``bad_row``, ``missing_caption``, ``caption_not_utf8``, ``key_not_utf8``,
    ``path_not_utf8``, ``missing_image`` (empty path). The image file itself is the
    caller's to check (a cheap header check or a full decode).
    """
    if None in row or any(v is None for v in row.values()):
        report.skip("bad_row")  # more fields than the header (key None) or fewer (value None)
        return None
    caption = row.get(fmt.caption_key) or ""
    if need_caption:
        if not caption.strip():
            report.skip("missing_caption")
            return None
        if not is_utf8(caption):
            report.skip("caption_not_utf8")
            return None
    if not is_utf8(csv_key(row, index)):
        report.skip("key_not_utf8")
        return None
    rel = row.get(fmt.img_key) or ""
    if not is_utf8(rel):
        report.skip("path_not_utf8")
        return None
    if not rel.strip():
        report.skip("missing_image")
        return None
    return caption, (Path(rel) if os.path.isabs(rel) else root / rel)


def clean_text(text: str) -> str:
    """``text`` with bytes that were not UTF-8 (surrogate escapes) replaced by U+FFFD."""
    return text if is_utf8(text) else text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def iter_rows(path: str | os.PathLike, fmt: CsvFormat = CsvFormat(),
              required: Sequence[str] | None = None) -> Iterator[dict[str, str]]:
    """Yield the table's rows as dicts, after checking the file and its columns."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file; pass the path of a CSV/TSV dataset")
    required = list(required if required is not None else (fmt.img_key, fmt.caption_key))
    try:
        # surrogateescape: a bad byte in one caption must cost that row, not the whole file.
        f = open(path, newline="", encoding="utf-8", errors="surrogateescape")
        header = f.readline()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    with f:
        if not is_utf8(header):
            raise UserError(f"{path}: header is not UTF-8 text; is this really a CSV file?")
        if not header.strip():
            raise UserError(f"{path}: the file is empty; expected a header with columns {required}")
        sep = _separator(path, header, fmt)
        columns = next(csv.reader([header], delimiter=sep))
        missing = [c for c in required if c not in columns]
        if missing:
            raise UserError(f"{path}: missing column(s) {missing}; found {columns}. "
                            "Name the right ones with --img-key/--caption-key")
        reader = csv.DictReader(f, fieldnames=columns, delimiter=sep)
        while True:
            try:
                yield next(reader)
            except StopIteration:
                return
            except csv.Error:  # e.g. a field over the 16 MiB limit: the row is lost, not the table
                yield {None: []}  # ``check_row`` counts it as a bad_row


def is_utf8(text: str) -> bool:
    """False when ``text`` holds bytes that were not UTF-8 (decoded with surrogateescape)."""
    return text.isascii() or _ESCAPED_BYTE.search(text) is None


def read_csv(path: str | os.PathLike, fmt: CsvFormat = CsvFormat(),
             report: SkipReport | None = None, verify: bool = True) -> Iterator[Sample]:
    """Yield samples; relative image paths resolve against the table's folder.

    Rows whose image is missing or corrupt, or whose caption is empty, are skipped and
    counted in ``report``. The key is the ``key`` column when present, else the row number.
    """
    path = Path(path)
    report = report if report is not None else SkipReport()
    root = path.parent
    for i, row in enumerate(iter_rows(path, fmt)):
        checked = check_row(row, i, fmt, root, report)
        if checked is None:
            continue
        try:
            s = row_sample(row, i, fmt, *checked)
            if verify:
                decode_image(s.image)
        except CorruptSample as e:
            report.skip(e.reason)
            continue
        yield s


def row_sample(row: Mapping[str, str | None], index: int, fmt: CsvFormat, caption: str, image: Path) -> Sample:
    """The sample of a row ``check_row`` passed (its ``caption`` and ``image`` path): the image
    file's bytes (``CorruptSample`` if unreadable; not decoded), the other columns as meta."""
    data = read_image_file(image)
    ext = image.suffix.lower().lstrip(".")
    meta = {k: clean_text(v) for k, v in row.items() if k not in (fmt.img_key, fmt.caption_key, "key")}
    meta["source_path"] = str(image)
    return Sample(key=csv_key(row, index), image=data, caption=clean_text(caption), meta=meta,
                  ext=ext if ext in IMAGE_EXTS else "jpg")


def safe_key(key: str) -> str:
    """Keys become file names and WebDataset keys: no dots, slashes or spaces."""
    out = "".join(c if (c.isalnum() or c in "-_") else "_" for c in key)
    if not out:
        raise ValueError(f"unusable sample key {key!r}")
    return out


class KeyNames:
    """File-safe names for the keys of one output, never two alike.

    ``safe_key`` maps different keys to one name (``x.1`` and ``x_1`` both give ``x_1``),
    which would pair one sample's caption with another's image. The first key to claim a
    name gets it; a later different key gets the name plus a hash of the key (the same for
    the same input order). A key seen before is a ``duplicate_key``, an empty one an
    ``empty_key``: ``name`` returns None and counts it.
    """

    def __init__(self, report: SkipReport | None = None):
        self.report = report if report is not None else SkipReport()
        self._keys: set[str] = set()
        self._names: set[str] = set()

    def name(self, key: str) -> str | None:
        if not key:
            self.report.skip("empty_key")
            return None
        if key in self._keys:
            self.report.skip("duplicate_key")
            return None
        self._keys.add(key)
        name = base = safe_key(key)
        if name in self._names:
            digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()
            name = f"{base}-{digest[:12]}"
            while name in self._names:  # another key already made this exact name
                name += "_"
        self._names.add(name)
        return name


def write_table(path: str | os.PathLike, rows: Iterable[dict[str, object]],
                columns: Sequence[str], sep: str = "\t") -> Path:
    """Write rows atomically (temp file + rename)."""
    import io

    buf = io.StringIO()
    w = csv.writer(buf, delimiter=sep, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    w.writerow(columns)
    for row in rows:
        w.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
    return atomic_write_text(path, buf.getvalue())


def write_csv(samples: Iterable[Sample], out_dir: str | os.PathLike, name: str = TRAIN_TABLE,
              image_dir: str = "images", extra_columns: Sequence[str] = (),
              sep: str = "\t", report: SkipReport | None = None,
              path_root: str | os.PathLike | None = None) -> Path:
    """Write images under ``out_dir/image_dir`` and a table ``out_dir/name`` that open_clip reads.

    The table is written last, so a crash never leaves a table that points at missing
    images. Extra columns come from each sample's meta (open_clip ignores them). Image file
    names are unique (``KeyNames``); a repeated or empty key is skipped and counted.
    Image paths are relative to the table's folder, or, with ``path_root`` (the folder
    ``out_dir`` will finally be, when it is written elsewhere and renamed), absolute under
    it: open_clip_train opens them relative to its working directory, not to the table.
    """
    out_dir = Path(out_dir)
    (out_dir / image_dir).mkdir(parents=True, exist_ok=True)
    names = KeyNames(report)
    rows = []
    for s in samples:
        stem = names.name(s.key)
        if stem is None:
            continue
        rel = f"{image_dir}/{stem}.{s.ext}"
        (out_dir / rel).write_bytes(s.image)
        where = rel if path_root is None else os.path.join(path_root, image_dir, f"{stem}.{s.ext}")
        row: dict[str, object] = {"key": s.key, OPEN_CLIP_IMG_KEY: where, OPEN_CLIP_CAPTION_KEY: s.caption}
        row.update({c: s.meta.get(c) for c in extra_columns})
        rows.append(row)
    cols = [OPEN_CLIP_IMG_KEY, OPEN_CLIP_CAPTION_KEY, "key", *extra_columns]
    return write_table(out_dir / name, rows, cols, sep=sep)
