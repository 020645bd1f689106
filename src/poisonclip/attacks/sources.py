"""Reading what an attack needs from a dataset, at a cost that fits Conceptual-Captions scale.

An attack never loads a dataset: it streams captions (caption search), looks one sample up by
key (a target image), counts shard sizes (from ``sizes.json``), or draws a few source images
(backdoor). Each of those is here, with memory bounded by what is kept, not by the dataset.
"""

from __future__ import annotations

import csv
import json
import mmap
import os
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from poisonclip.data import dataset_kind
from poisonclip.data.csv_io import CsvFormat, iter_rows
from poisonclip.data.sample import IMAGE_EXTS, CorruptSample, Sample, SkipReport, decode_image
from poisonclip.data.wds_io import SIZES_FILE, expand_shards
from poisonclip.errors import UserError

CLASSNAMES_FILE = "classnames.txt"
_ZERO_BLOCK = bytes(512)
# name (0:100), size (124:136), type flag (156), magic (257:262) of a tar header
_HEADER = struct.Struct("100s24x12s20xc100x5s")
_IMAGE_EXT_SET = frozenset(IMAGE_EXTS)


# --------------------------------------------------------------------------- CSV helpers

def csv_separator(path: str | os.PathLike, fmt: CsvFormat) -> str:
    """The separator ``csv_io.read_csv`` would use (explicit, tab for .tsv, else sniffed)."""
    if fmt.sep is not None:
        return fmt.sep
    path = Path(path)
    if path.suffix.lower() == ".tsv":
        return "\t"
    return "\t" if "\t" in _header_line(path) else ","


def _header_line(path: str | os.PathLike) -> str:
    # binary readline: a text-mode readline decodes a whole buffer, past the header
    with open(path, "rb") as f:
        line = f.readline()
    try:
        return line.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise UserError(f"{path}: header is not UTF-8 text; is this really a CSV file?") from None


def csv_columns(path: str | os.PathLike, fmt: CsvFormat, required: Sequence[str] | None = None) -> list[str]:
    """The table's header, after ``iter_rows``'s checks (file exists, columns present)."""
    rows = iter_rows(path, fmt, required)
    try:
        next(rows)
    except StopIteration:
        pass
    finally:
        rows.close()
    return next(csv.reader([_header_line(path)], delimiter=csv_separator(path, fmt)))


# --------------------------------------------------------------------------- fast tar scan

class _CorruptTar(Exception):
    pass


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for large sizes
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _checksum_ok(h: bytes) -> bool:
    try:
        want = _octal(h[148:156])
    except ValueError:
        return False
    return want == sum(h[:148]) + 256 + sum(h[156:])


def _pax_fields(data: bytes) -> dict[str, str]:
    out, i = {}, 0
    while i < len(data):
        sp = data.index(b" ", i)
        length = int(data[i:sp])
        k, _, v = data[sp + 1:i + length - 1].partition(b"=")
        out[k.decode("utf-8")] = v.decode("utf-8")
        i += length
    return out


def _members(mm: mmap.mmap) -> Iterator[tuple[str, int, int]]:
    """(name, data offset, size) of each regular file in a tar held in ``mm``.

    Written by hand because :mod:`tarfile` parses every header in Python and reads every
    member (about 100 us per sample here); captions-only scans need names and sizes, which
    this reads from the 512-byte headers while skipping image data (a few us per sample).
    Handles ustar, GNU long names and pax path/size records; anything odd is a _CorruptTar.
    """
    off, end = 0, len(mm)
    long_name: str | None = None
    pax: dict[str, str] = {}
    unpack = _HEADER.unpack_from
    while off + 512 <= end:
        name, field, typ, magic = unpack(mm, off)
        if name[0] == 0 and mm[off:off + 512] == _ZERO_BLOCK:
            return
        if magic != b"ustar" and not _checksum_ok(mm[off:off + 512]):
            raise _CorruptTar("bad header")
        size = int.from_bytes(field[1:], "big") if field[0] & 0x80 else int(field.strip(b"\0 ") or b"0", 8)
        data_off = off + 512
        if pax and "size" in pax:
            size = int(pax["size"])
        off = data_off + ((size + 511) & ~511)
        if data_off + size > end:
            raise _CorruptTar("truncated")
        if typ == b"0" or typ == b"\0" or typ == b"7":  # regular file (old NUL form, contiguous)
            if pax and "path" in pax:
                text = pax["path"]
            elif long_name is not None:
                text = long_name
            else:
                text = name.split(b"\0", 1)[0].decode("utf-8")
                hdr = data_off - 512
                # POSIX ustar keeps a path prefix at 345; GNU ("ustar  ") keeps times there
                if mm[hdr + 345] != 0 and mm[hdr + 257:hdr + 263] == b"ustar\x00":
                    text = mm[hdr + 345:hdr + 500].split(b"\0", 1)[0].decode("utf-8") + "/" + text
            yield text, data_off, size
        elif typ == b"x":  # pax header for the next member
            pax = _pax_fields(mm[data_off:data_off + size])
            continue
        elif typ == b"L":  # GNU long name for the next member
            long_name = mm[data_off:data_off + size].split(b"\0", 1)[0].decode("utf-8")
            continue
        long_name, pax = None, {}
    if off < end and mm[off:end].strip(b"\0"):
        raise _CorruptTar("trailing data")


def scan_groups(path: Path, report: SkipReport, exts: frozenset[str] | None = None,
                only_key: str | None = None) -> Iterator[tuple[str, dict[str, bytes | None]]]:
    """(key, {ext: data}) per sample, by WebDataset's grouping rule (key = path up to the
    first dot of the file name); data is read only for ``exts`` (None: all) and, when
    ``only_key`` is given, only for that sample.

    Members not read appear with ``None`` so callers still see which files a sample has.
    A corrupt or truncated shard ends its scan and counts one ``truncated_tar`` skip, the
    same rule as ``wds_io.read_shards``.
    """
    with _mapped_shard(path, report) as mm:
        if mm is None:
            return
        key, base_key, group = None, "", {}
        try:
            for name, data_off, size in _members(mm):
                d, _, base = name.rpartition("/")
                stem, _, ext = base.partition(".")
                k = f"{d}/{stem}" if d else stem
                if k != key:
                    if key is not None:
                        yield base_key, group
                    key, base_key, group = k, stem, {}
                ext = ext.lower()
                read = (exts is None or ext in exts) and (only_key is None or stem == only_key)
                group[ext] = mm[data_off:data_off + size] if read else None
        except (_CorruptTar, ValueError, UnicodeDecodeError, IndexError):
            report.skip("truncated_tar")
            return
        if key is not None:
            yield base_key, group


@contextmanager
def _mapped_shard(path: Path, report: SkipReport) -> Iterator[mmap.mmap | None]:
    """The shard memory-mapped for the header scan; None (one ``truncated_tar``) if empty."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise UserError(f"{path}: cannot read shard ({e.strerror})") from None
    with f:
        if os.fstat(f.fileno()).st_size == 0:
            report.skip("truncated_tar")
            yield None
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            yield mm


def _image_ext(files: dict) -> str | None:
    return next((e for e in IMAGE_EXTS if e in files), None)


# --------------------------------------------------------------------------- captions

def iter_caption_batches(source: str | os.PathLike, fmt: CsvFormat = CsvFormat(),
                         report: SkipReport | None = None, batch_size: int = 1 << 16):
    """Stream every non-empty training caption as pyarrow string arrays.

    CSV: pyarrow's multi-threaded streaming CSV reader, caption column only (the same
    quoting rules as the pandas reader open_clip uses). WebDataset: the ``.txt`` member of
    every sample that has an image, found by the tar header scan (``_members``).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    report = report if report is not None else SkipReport()
    if dataset_kind(source) == "csv":
        import pyarrow.csv as pcsv

        csv_columns(source, fmt)  # the file and its columns exist, else a UserError

        def bad_row(row) -> str:
            report.skip("bad_row")
            return "skip"

        def unreadable(e: Exception) -> UserError:  # e.g. bytes that are not UTF-8
            return UserError(f"{source}: cannot read the table ({str(e).splitlines()[0]})")

        try:
            batches = iter(pcsv.open_csv(
                str(source),
                read_options=pcsv.ReadOptions(block_size=1 << 20, use_threads=True),
                parse_options=pcsv.ParseOptions(delimiter=csv_separator(source, fmt), newlines_in_values=True,
                                                invalid_row_handler=bad_row),
                convert_options=pcsv.ConvertOptions(include_columns=[fmt.caption_key],
                                                    column_types={fmt.caption_key: pa.string()},
                                                    strings_can_be_null=False)))
        except pa.ArrowInvalid as e:
            raise unreadable(e) from None
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except pa.ArrowInvalid as e:
                raise unreadable(e) from None
            col = batch.column(0)
            ok = pc.and_(pc.is_valid(col), pc.invert(pc.equal(pc.utf8_trim_whitespace(col), "")))
            if not len(col):
                continue
            n_bad = len(col) - (pc.sum(ok).as_py() or 0)
            if n_bad:
                report["missing_caption"] += n_bad
            yield pc.filter(col, ok) if n_bad else col
        return
    for shard in expand_shards(source):
        raw = _shard_captions(shard, report)
        for i in range(0, len(raw), batch_size):
            yield _decode_captions(raw[i:i + batch_size], report)


def _shard_captions(path: Path, report: SkipReport) -> list[bytes]:
    """The ``.txt`` bytes of every sample in one shard that also has an image.

    The captions-only hot loop over ``_members`` (no per-sample dicts): this is what makes
    searching millions of WebDataset captions take seconds.
    """
    out: list[bytes] = []
    with _mapped_shard(path, report) as mm:
        if mm is None:
            return out
        # one entry per sample: [txt or None, has image]; keys only mark sample boundaries
        samples: list[list] = []
        key, cur = None, None
        images = _IMAGE_EXT_SET
        try:
            for name, data_off, size in _members(mm):
                stem, _, ext = name.partition(".") if "/" not in name else _split_path(name)
                if stem != key:
                    key, cur = stem, [None, False]
                    samples.append(cur)
                if ext == "txt" or ext == "TXT":
                    cur[0] = mm[data_off:data_off + size]
                elif ext.lower() in images:
                    cur[1] = True
        except (_CorruptTar, ValueError, UnicodeDecodeError, IndexError):
            report.skip("truncated_tar")
            if samples:
                samples.pop()  # the sample being assembled is lost
    for txt, has_img in samples:
        if not has_img:
            report.skip("missing_image")
        elif txt is None:
            report.skip("missing_caption")
        else:
            out.append(txt)
    return out


def _split_path(name: str) -> tuple[str, str, str]:
    """(key with folders, ".", ext) for a member name inside folders."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return f"{head}/{stem}", dot, ext


def _decode_captions(raw: list[bytes], report: SkipReport):
    """UTF-8-checked, non-blank captions as a pyarrow string array (checks run in C)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        arr = pa.array(raw, pa.binary()).cast(pa.string())
    except pa.ArrowInvalid:  # some caption is not UTF-8: find and count it the slow way
        good = []
        for b in raw:
            try:
                good.append(b.decode("utf-8"))
            except UnicodeDecodeError:
                report.skip("caption_not_utf8")
        arr = pa.array(good, pa.string())
    ok = pc.invert(pc.equal(pc.utf8_trim_whitespace(arr), ""))
    n_bad = len(arr) - (pc.sum(ok).as_py() or 0)
    if n_bad:
        report["missing_caption"] += n_bad
        arr = pc.filter(arr, ok)
    return arr


# --------------------------------------------------------------------------- shard sizes

def shard_sizes(shards: Sequence[Path], report: SkipReport | None = None) -> list[int]:
    """Samples per shard from each folder's ``sizes.json``; shards it lacks are counted."""
    report = report if report is not None else SkipReport()
    tables: dict[Path, dict] = {}
    out = []
    for shard in shards:
        folder = shard.parent
        if folder not in tables:
            p = folder / SIZES_FILE
            try:
                tables[folder] = json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}
            except (ValueError, OSError):
                raise UserError(f"{p}: not valid JSON; fix or delete it so shard sizes are counted") from None
        n = tables[folder].get(shard.name)
        if n is None:
            n = sum(1 for _ in scan_groups(shard, report, exts=frozenset()))
        out.append(int(n))
    return out


# --------------------------------------------------------------------------- lookups

def find_classnames(source: str | os.PathLike) -> Path | None:
    """``classnames.txt`` beside a table, or beside / one folder above the shards."""
    if dataset_kind(source) == "csv":
        candidates = [Path(source).parent / CLASSNAMES_FILE]
    else:
        first = expand_shards(source)[0].parent
        candidates = [first / CLASSNAMES_FILE, first.parent / CLASSNAMES_FILE]
    return next((c for c in candidates if c.is_file()), None)


def resolve_classnames(explicit: str | None, disabled: bool, data: str,
                       labels: Sequence[str]) -> tuple[list[str] | None, str | None]:
    """The class list (explicit file, else ``classnames.txt`` near the data) and its path.

    Every label in ``labels`` must be in it: a label outside the list could be neither
    excluded from the backdoor sources nor measured by the zero-shot evaluation.
    """
    from poisonclip.data.evalset import read_classnames

    if disabled:
        return None, None
    path = Path(explicit) if explicit else find_classnames(data)
    if path is None:
        return None, None
    names = read_classnames(path)
    for label in labels:
        if label not in names:
            shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise UserError(f"{path}: label {label!r} is not in the class list ({len(names)} classes: {shown}); "
                            "use a listed label, another --classnames file, or --no-classnames")
    return names, str(path.resolve())


def csv_key(row: dict[str, str], index: int) -> str:
    """The key ``csv_io.read_csv`` gives a row: its ``key`` column, else the row number."""
    return row.get("key") or f"{index:09d}"


def find_sample(source: str | os.PathLike, key: str, fmt: CsvFormat = CsvFormat(),
                report: SkipReport | None = None) -> Sample | None:
    """The sample with ``key`` (first match), reading only that sample's image."""
    report = report if report is not None else SkipReport()
    if dataset_kind(source) == "csv":
        root = Path(source).parent
        for i, row in enumerate(iter_rows(source, fmt, [fmt.img_key])):
            if csv_key(row, i) != key:
                continue
            rel = row.get(fmt.img_key) or ""
            p = Path(rel) if os.path.isabs(rel) else root / rel
            try:
                data = p.read_bytes()
            except OSError:
                raise UserError(f"{source}: image of key {key!r} ({p}) cannot be read") from None
            meta = {k: v for k, v in row.items() if k not in (fmt.img_key, fmt.caption_key, "key")}
            meta["source_path"] = str(p)
            ext = p.suffix.lower().lstrip(".")
            return Sample(key, data, row.get(fmt.caption_key) or "", meta, ext if ext in IMAGE_EXTS else "jpg")
        return None
    for shard in expand_shards(source):
        for k, files in scan_groups(shard, report, only_key=key):
            if k != key:
                continue
            if _image_ext(files) is None:
                raise UserError(f"{shard}: sample {key!r} has no image")
            return _group_sample(k, files, shard, SkipReport(), need_caption=False)
    return None


def _group_sample(key: str, files: dict, shard: Path, report: SkipReport,
                  need_caption: bool = True) -> Sample | None:
    """A Sample from one tar group, by ``wds_io.read_shards``'s rules (without decoding)."""
    ext = _image_ext(files)
    if ext is None:
        report.skip("missing_image")
        return None
    raw = files.get("txt")
    try:
        caption = raw.decode("utf-8") if raw is not None else ""
    except UnicodeDecodeError:
        report.skip("caption_not_utf8")
        return None
    if need_caption and not caption.strip():
        report.skip("missing_caption")
        return None
    meta: dict = {}
    if files.get("json") is not None:
        try:
            meta = json.loads(files["json"].decode("utf-8"))
            if not isinstance(meta, dict):
                raise ValueError
        except (ValueError, UnicodeDecodeError):
            report.skip("bad_json")
            return None
    meta = {k: v for k, v in meta.items() if k not in ("key", "caption")}
    meta["shard"] = shard.name
    return Sample(key=key, image=files[ext], caption=caption, meta=meta, ext="jpg" if ext == "jpeg" else ext)


# --------------------------------------------------------------------------- source images

@dataclass(frozen=True)
class SourceDraw:
    samples: list[Sample]        # in draw order
    n_eligible_seen: int         # candidates that passed the label filter
    n_excluded: int              # candidates of an excluded label
    n_shards_read: int | None    # WebDataset only
    n_shards: int | None


def draw_sources(source: str | os.PathLike, n: int, rng: np.random.Generator,
                 excluded: frozenset[str] = frozenset(), label_key: str = "label",
                 fmt: CsvFormat = CsvFormat(), pool_factor: float = 4.0,
                 report: SkipReport | None = None, need_caption: bool = True) -> SourceDraw:
    """Draw ``n`` different readable images whose label is not in ``excluded``.

    Reservoir sampling (Algorithm R) over the eligible samples keeps memory at ``n`` images.
    CSV tables are streamed whole. WebDataset shards are visited in a seeded random order
    and the visit stops once ``pool_factor * n`` eligible samples were seen, so time and
    memory grow with the number of poisons, not with the dataset; ``pool_factor <= 0``
    visits every shard (uniform over the whole dataset). Images are decoded only when they
    enter the reservoir; unreadable ones are skipped and counted.
    """
    report = report if report is not None else SkipReport()
    reservoir: list[Sample] = []
    seen = n_excl = 0

    def offer(label: object, load: Callable[[], Sample | None]) -> None:
        nonlocal seen, n_excl
        if label is not None and str(label) in excluded:
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
            caption = row.get(fmt.caption_key) or ""
            if need_caption and not caption.strip():
                report.skip("missing_caption")
                continue

            def load(row=row, i=i, caption=caption) -> Sample | None:
                rel = row.get(fmt.img_key) or ""
                p = Path(rel) if os.path.isabs(rel) else root / rel
                try:
                    data = p.read_bytes()
                except OSError:
                    report.skip("missing_image")
                    return None
                ext = p.suffix.lower().lstrip(".")
                meta = {k: v for k, v in row.items() if k not in (fmt.img_key, fmt.caption_key, "key")}
                meta["source_path"] = str(p)
                return Sample(csv_key(row, i), data, caption, meta, ext if ext in IMAGE_EXTS else "jpg")

            offer(row.get(label_key), load)
        return SourceDraw(reservoir, seen, n_excl, None, None)

    shards = expand_shards(source)
    order = rng.permutation(len(shards))
    target = pool_factor * n if pool_factor > 0 else float("inf")
    n_read = 0
    for idx in order:
        if seen >= target and len(reservoir) >= n:
            break
        n_read += 1
        for key, files in scan_groups(shards[idx], report):
            s = _group_sample(key, files, shards[idx], report, need_caption)
            if s is not None:
                offer(s.meta.get(label_key), lambda s=s: s)
    return SourceDraw(reservoir, seen, n_excl, n_read, len(shards))
