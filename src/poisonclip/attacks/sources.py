"""Reading what an attack needs from a dataset, at a cost that fits Conceptual-Captions scale.

An attack never loads a dataset: it streams captions (caption search), looks one sample up by
key (a target image), counts shard sizes (from ``sizes.json``), or draws a few source images
(backdoor). Each of those is here, with memory bounded by what is kept, not by the dataset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from poisonclip.data import dataset_kind
from poisonclip.data.csv_io import CsvFormat, check_row, clean_text, csv_columns, csv_key, csv_separator, iter_rows
from poisonclip.data.sample import IMAGE_EXTS, CorruptSample, Sample, SkipReport, decode_image, read_image_file
from poisonclip.data.tar_io import iter_groups, shard_captions
from poisonclip.data.wds_io import expand_shards, group_sample, read_sizes
from poisonclip.errors import UserError

CLASSNAMES_FILE = "classnames.txt"
# pyarrow cannot parse a row longer than one block: as long as the csv module's field limit
# (``csv_io``), so both readers agree on which rows are too long.
_CSV_BLOCK = 1 << 24


# --------------------------------------------------------------------------- tar groups

def scan_groups(path: Path, report: SkipReport, exts: frozenset[str] | None = None,
                only_key: str | None = None) -> Iterator[tuple[str, dict[str, bytes | None]]]:
    """(key, {ext: data}) per sample of one shard (``tar_io.iter_groups``); data is read only
    for ``exts`` (None: all) and, when ``only_key`` is given, only for that sample."""
    def want(key: str, ext: str) -> bool:
        return (exts is None or ext in exts) and (only_key is None or key == only_key)

    return iter_groups(path, report, want)


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

        def unreadable(e: Exception) -> UserError:
            return UserError(f"{source}: cannot read the table ({str(e).splitlines()[0]})")

        # Read as bytes: one caption that is not UTF-8 costs its row, not the table.
        try:
            batches = iter(pcsv.open_csv(
                str(source),
                read_options=pcsv.ReadOptions(block_size=_CSV_BLOCK, use_threads=True),
                parse_options=pcsv.ParseOptions(delimiter=csv_separator(source, fmt), newlines_in_values=True,
                                                invalid_row_handler=bad_row),
                convert_options=pcsv.ConvertOptions(include_columns=[fmt.caption_key],
                                                    column_types={fmt.caption_key: pa.binary()},
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
            if len(col):
                yield _decode_captions(col, report)
        return
    for shard in expand_shards(source):
        raw = shard_captions(shard, report)
        for i in range(0, len(raw), batch_size):
            yield _decode_captions(raw[i:i + batch_size], report)


def _decode_captions(raw, report: SkipReport):
    """UTF-8-checked, non-blank captions as a pyarrow string array (checks run in C).

    ``raw``: a list of bytes or a pyarrow binary array (nulls count as missing).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = raw if isinstance(raw, pa.Array) else pa.array(raw, pa.binary())
    n_null = arr.null_count
    if n_null:
        report.skip("missing_caption", n_null)
        arr = arr.drop_null()
    try:
        arr = arr.cast(pa.string())
    except pa.ArrowInvalid:  # some caption is not UTF-8: find and count it the slow way
        good = []
        for b in arr.to_pylist():
            try:
                good.append(b.decode("utf-8"))
            except UnicodeDecodeError:
                report.skip("caption_not_utf8")
        arr = pa.array(good, pa.string())
    ok = pc.invert(pc.equal(pc.utf8_trim_whitespace(arr), ""))
    n_bad = len(arr) - (pc.sum(ok).as_py() or 0)
    if n_bad:
        report.skip("missing_caption", n_bad)
        arr = pc.filter(arr, ok)
    return arr


# --------------------------------------------------------------------------- shard sizes

def shard_sizes(shards: Sequence[Path], report: SkipReport | None = None) -> list[int]:
    """Samples per shard from each folder's ``sizes.json``; shards it lacks are counted."""
    report = report if report is not None else SkipReport()
    tables: dict[Path, dict[str, int]] = {}
    out = []
    for shard in shards:
        folder = shard.parent
        if folder not in tables:
            tables[folder] = read_sizes(folder)
        n = tables[folder].get(shard.name)
        if n is None:
            n = sum(1 for _ in scan_groups(shard, report, exts=frozenset()))
        out.append(n)
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
                if p is None:
                    raise CorruptSample("missing_image")
                data = read_image_file(p)
            except CorruptSample as e:
                raise UserError(f"{source}: image of key {key!r} ({p}) cannot be read ({e.reason})") from None
            meta = {k: clean_text(v) for k, v in row.items() if k not in (fmt.img_key, fmt.caption_key, "key")}
            meta["source_path"] = str(p)
            ext = p.suffix.lower().lstrip(".")
            return Sample(key, data, clean_text(row.get(fmt.caption_key) or ""), meta,
                          ext if ext in IMAGE_EXTS else "jpg")
        return None
    for shard in expand_shards(source):
        for k, files in scan_groups(shard, report, only_key=key):
            if k != key:
                continue
            if _image_ext(files) is None:
                raise UserError(f"{shard}: sample {key!r} has no image")
            return group_sample(k, files, shard, SkipReport(), need_caption=False)
    return None


# --------------------------------------------------------------------------- source images

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
                 report: SkipReport | None = None, need_caption: bool = True) -> SourceDraw:
    """Draw ``n`` different readable images whose label is not in ``excluded``.

    Reservoir sampling (Algorithm R) over the eligible samples keeps memory at ``n`` images.
    CSV tables are streamed whole. WebDataset shards are visited in a seeded random order
    and the visit stops once ``pool_factor * n`` eligible samples were seen, so time and
    memory grow with the number of poisons, not with the dataset; ``pool_factor <= 0``
    visits every shard (uniform over the whole dataset). Images are decoded only when they
    enter the reservoir; unreadable ones are skipped and counted.
    """
    draw = _draw(source, n, rng, excluded, label_key, fmt, pool_factor, need_caption)
    if report is not None:
        # The caller's report may already hold a caption search over the same rows: per
        # reason, keep the larger count, so a row met by both passes counts once.
        report.merge_max(draw.skipped)
    return draw


def _draw(source: str | os.PathLike, n: int, rng: np.random.Generator, excluded: frozenset[str],
          label_key: str, fmt: CsvFormat, pool_factor: float, need_caption: bool) -> SourceDraw:
    report = SkipReport()
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
            checked = check_row(row, i, fmt, root, report, need_caption)
            if checked is None:
                continue

            def load(row=row, i=i, checked=checked) -> Sample | None:
                caption, p = checked
                try:
                    data = read_image_file(p)
                except CorruptSample as e:
                    report.skip(e.reason)
                    return None
                ext = p.suffix.lower().lstrip(".")
                meta = {k: clean_text(v) for k, v in row.items() if k not in (fmt.img_key, fmt.caption_key, "key")}
                meta["source_path"] = str(p)
                return Sample(csv_key(row, i), data, clean_text(caption), meta, ext if ext in IMAGE_EXTS else "jpg")

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
