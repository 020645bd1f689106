"""WebDataset tar shards in img2dataset's layout (``key.jpg`` + ``key.txt`` + ``key.json``).

Shards are read (through ``tar_io``, which bounds time and memory on hostile shards) and
written with :mod:`tarfile` directly rather than webdataset's TarWriter/pipeline because we
need two things those do not give: byte-identical shards for the same input (fixed tar
header fields: mtime, owner, mode) and a per-reason count of corrupt samples instead of a
handler that silently drops them. The files we write are what
``webdataset.WebDataset`` and ``open_clip_train --dataset-type webdataset`` read.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import braceexpand

from poisonclip.data.csv_io import KeyNames
from poisonclip.data.sample import IMAGE_EXTS, CorruptSample, Sample, SkipReport, decode_image
from poisonclip.data.tar_io import iter_groups, scan_groups, shard_captions
from poisonclip.errors import UserError
from poisonclip.io_utils import atomic_write_bytes, atomic_write_json

SIZES_FILE = "sizes.json"  # open_clip_train's get_dataset_size reads this


def expand_shards(source: str | os.PathLike) -> list[Path]:
    """Shard paths from a folder (all ``*.tar``, sorted) or a brace pattern; ``::`` joins several."""
    out: list[Path] = []
    for part in str(source).split("::"):
        p = Path(part)
        if p.is_dir():
            found = sorted(p.glob("*.tar"))
            if not found:
                raise UserError(f"{p}: folder holds no .tar shards")
            out.extend(found)
            continue
        paths = [Path(x) for x in braceexpand.braceexpand(part)]
        missing = [str(x) for x in paths if not x.is_file()]
        if missing:
            raise UserError(f"{missing[0]}: no such shard ({len(missing)} of {len(paths)} missing); "
                            "pass a folder of .tar shards or a brace pattern like data/{00000..00009}.tar")
        out.extend(paths)
    return out


def group_sample(key: str, files: dict[str, bytes | None], shard: Path, report: SkipReport,
                 need_caption: bool = True) -> Sample | None:
    """A Sample from one tar group (``tar_io.iter_groups``), without decoding the image;
    None with the reason counted when the group is not a usable sample."""
    ext = next((e for e in IMAGE_EXTS if e in files), None)
    if ext is None:
        report.skip("missing_image")
        return None
    raw = files.get("txt")
    if raw is None and need_caption:
        report.skip("missing_caption")
        return None
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
        except (ValueError, RecursionError):
            report.skip("bad_json")
            return None
    meta = {k: v for k, v in meta.items() if k not in ("key", "caption")}
    meta["shard"] = shard.name
    return Sample(key=key, image=files[ext], caption=caption, meta=meta, ext="jpg" if ext == "jpeg" else ext)


def read_shards(source: str | os.PathLike, report: SkipReport | None = None,
                verify: bool = True) -> Iterator[Sample]:
    """Yield samples from shards; corrupt samples are skipped and counted in ``report``."""
    report = report if report is not None else SkipReport()
    for shard in expand_shards(source):
        for key, files in iter_groups(shard, report):
            s = group_sample(key, files, shard, report)
            if s is None:
                continue
            if verify:
                try:
                    decode_image(s.image)
                except CorruptSample as e:
                    report.skip(e.reason)
                    continue
            yield s


def iter_captions(source: str | os.PathLike, report: SkipReport | None = None) -> Iterator[tuple[str, str]]:
    """(key, caption) of every sample ``read_shards`` would yield, without reading images."""
    report = report if report is not None else SkipReport()
    for shard in expand_shards(source):
        for key, files in iter_groups(shard, report, lambda _k, ext: ext in ("txt", "json")):
            s = group_sample(key, files, shard, report)
            if s is not None:
                yield s.key, s.caption


def count_samples(shards: Iterable[Path], report: SkipReport | None = None) -> int:
    """Samples with an image and a usable caption in ``shards`` (images are not read)."""
    report = report if report is not None else SkipReport()
    n = 0
    for shard in shards:
        for raw in shard_captions(shard, report):
            try:
                ok = bool(raw.decode("utf-8").strip())
            except UnicodeDecodeError:
                report.skip("caption_not_utf8")
                continue
            if ok:
                n += 1
            else:
                report.skip("missing_caption")
    return n


def read_sizes(folder: str | os.PathLike) -> dict[str, int]:
    """``folder/sizes.json`` (samples per shard basename), checked; {} when there is none."""
    p = Path(folder) / SIZES_FILE
    if not p.is_file():
        return {}
    try:
        table = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, OSError, RecursionError):
        raise UserError(f"{p}: not valid JSON; fix or delete it so shard sizes are counted") from None
    if not isinstance(table, dict):
        raise UserError(f"{p}: must be a JSON object of shard name -> sample count; fix or delete it")
    for name, n in table.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise UserError(f"{p}: {name!r} has {n!r}; sample counts must be whole numbers >= 0 "
                            "(fix or delete the file and the shards are counted)")
    return table


def shard_sizes(shards: Sequence[Path], report: SkipReport | None = None) -> list[int]:
    """Samples per shard from each folder's ``sizes.json``; shards it lacks are counted by a
    header scan (no data read)."""
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


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info, io.BytesIO(data)


def shard_bytes(samples: Iterable[Sample], report: SkipReport | None = None) -> tuple[bytes, int]:
    """One tar shard as bytes (deterministic), and how many samples it holds.

    Member names are unique within the shard (``KeyNames``): two keys that sanitise alike
    would otherwise be adjacent members WebDataset merges into one sample.
    """
    buf = io.BytesIO()
    n = 0
    names = KeyNames(report)
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for s in samples:
            key = names.name(s.key)
            if key is None:
                continue
            meta = {"key": s.key, "caption": s.caption, **dict(s.meta)}
            for ext, data in ((s.ext, s.image), ("txt", s.caption.encode("utf-8")),
                              ("json", json.dumps(meta, sort_keys=True, default=str).encode("utf-8"))):
                tf.addfile(*_member(f"{key}.{ext}", data))
            n += 1
    return buf.getvalue(), n


def write_shards(samples: Iterable[Sample], out_dir: str | os.PathLike, shard_size: int = 10_000,
                 prefix: str = "", start: int = 0, extra_sizes: dict[str, int] | None = None,
                 report: SkipReport | None = None) -> list[Path]:
    """Write ``{prefix}{i:05d}.tar`` shards and a ``sizes.json`` like img2dataset's.

    Each shard is written atomically; ``sizes.json`` is written last, so its presence means
    the set is complete. ``extra_sizes`` adds entries for shards that live elsewhere but are
    trained together with these (open_clip looks sizes up next to the first shard). A
    repeated or empty key within a shard is skipped and counted in ``report``.
    """
    if shard_size <= 0:
        raise ValueError("shard_size must be positive")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, sizes = [], dict(extra_sizes or {})
    batch: list[Sample] = []

    def flush() -> None:
        name = f"{prefix}{start + len(written):05d}.tar"
        data, n = shard_bytes(batch, report)
        written.append(atomic_write_bytes(out_dir / name, data))
        sizes[name] = n
        batch.clear()

    for s in samples:
        batch.append(s)
        if len(batch) == shard_size:
            flush()
    if batch or not written:
        flush()
    atomic_write_json(out_dir / SIZES_FILE, sizes)
    return written


def shard_pattern(paths: list[Path]) -> str:
    """A brace pattern open_clip accepts for consecutive shards in one folder."""
    if len(paths) == 1:
        return str(paths[0])
    first, last = paths[0], paths[-1]
    stem_a, stem_b = first.stem, last.stem
    i = len(stem_a.rstrip("0123456789"))
    return str(first.parent / f"{stem_a[:i]}{{{stem_a[i:]}..{stem_b[i:]}}}.tar")
