"""WebDataset tar shards in img2dataset's layout (``key.jpg`` + ``key.txt`` + ``key.json``).

Shards are read and written with :mod:`tarfile` directly rather than webdataset's
TarWriter/pipeline because we need two things those do not give: byte-identical shards for
the same input (fixed tar header fields: mtime, owner, mode) and a per-reason count of
corrupt samples instead of a handler that silently drops them. The files we write are what
``webdataset.WebDataset`` and ``open_clip_train --dataset-type webdataset`` read.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Iterable, Iterator

import braceexpand

from poisonclip.data.csv_io import safe_key
from poisonclip.data.sample import IMAGE_EXTS, CorruptSample, Sample, SkipReport, decode_image
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


def _split_name(name: str) -> tuple[str, str]:
    # WebDataset's rule: the key is everything before the first dot of the base name.
    d, base = os.path.split(name)
    stem, dot, ext = base.partition(".")
    return (os.path.join(d, stem) if d else stem), ext.lower()


def _tar_groups(path: Path, report: SkipReport) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield (key, {ext: bytes}) for consecutive members sharing a key."""
    key, group = None, {}
    try:
        with tarfile.open(path, mode="r|*") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                k, ext = _split_name(m.name)
                f = tf.extractfile(m)
                data = f.read() if f is not None else b""
                if len(data) != m.size:
                    raise tarfile.ReadError("unexpected end of data")
                if k != key:
                    if key is not None:
                        yield key, group
                    key, group = k, {}
                group[ext] = data
    except (tarfile.TarError, EOFError, OSError, ValueError):
        # Truncated or corrupt shard: the sample being assembled is lost; say so.
        report.skip("truncated_tar")
        return
    if key is not None:
        yield key, group


def read_shards(source: str | os.PathLike, report: SkipReport | None = None,
                verify: bool = True) -> Iterator[Sample]:
    """Yield samples from shards; corrupt samples are skipped and counted in ``report``."""
    report = report if report is not None else SkipReport()
    for shard in expand_shards(source):
        for key, files in _tar_groups(shard, report):
            ext = next((e for e in IMAGE_EXTS if e in files), None)
            if ext is None:
                report.skip("missing_image")
                continue
            if "txt" not in files:
                report.skip("missing_caption")
                continue
            try:
                caption = files["txt"].decode("utf-8")
            except UnicodeDecodeError:
                report.skip("caption_not_utf8")
                continue
            if not caption.strip():
                report.skip("missing_caption")
                continue
            meta = {}
            if "json" in files:
                try:
                    meta = json.loads(files["json"].decode("utf-8"))
                    if not isinstance(meta, dict):
                        raise ValueError
                except ValueError:
                    report.skip("bad_json")
                    continue
            if verify:
                try:
                    decode_image(files[ext])
                except CorruptSample as e:
                    report.skip(e.reason)
                    continue
            meta = {k: v for k, v in meta.items() if k not in ("key", "caption")}
            meta["shard"] = shard.name
            yield Sample(key=os.path.basename(key), image=files[ext], caption=caption,
                         meta=meta, ext="jpg" if ext == "jpeg" else ext)


def iter_captions(source: str | os.PathLike, report: SkipReport | None = None) -> Iterator[tuple[str, str]]:
    """(key, caption) pairs without touching the images; the fast path for caption search."""
    report = report if report is not None else SkipReport()
    for shard in expand_shards(source):
        for key, files in _tar_groups(shard, report):
            if "txt" not in files:
                report.skip("missing_caption")
                continue
            try:
                yield os.path.basename(key), files["txt"].decode("utf-8")
            except UnicodeDecodeError:
                report.skip("caption_not_utf8")


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info, io.BytesIO(data)


def shard_bytes(samples: Iterable[Sample]) -> tuple[bytes, int]:
    """One tar shard as bytes (deterministic), and how many samples it holds."""
    buf = io.BytesIO()
    n = 0
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for s in samples:
            key = safe_key(s.key)
            meta = {"key": s.key, "caption": s.caption, **dict(s.meta)}
            for ext, data in ((s.ext, s.image), ("txt", s.caption.encode("utf-8")),
                              ("json", json.dumps(meta, sort_keys=True, default=str).encode("utf-8"))):
                tf.addfile(*_member(f"{key}.{ext}", data))
            n += 1
    return buf.getvalue(), n


def write_shards(samples: Iterable[Sample], out_dir: str | os.PathLike, shard_size: int = 10_000,
                 prefix: str = "", start: int = 0, extra_sizes: dict[str, int] | None = None) -> list[Path]:
    """Write ``{prefix}{i:05d}.tar`` shards and a ``sizes.json`` like img2dataset's.

    Each shard is written atomically; ``sizes.json`` is written last, so its presence means
    the set is complete. ``extra_sizes`` adds entries for shards that live elsewhere but are
    trained together with these (open_clip looks sizes up next to the first shard).
    """
    if shard_size <= 0:
        raise ValueError("shard_size must be positive")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, sizes = [], dict(extra_sizes or {})
    batch: list[Sample] = []

    def flush() -> None:
        name = f"{prefix}{start + len(written):05d}.tar"
        data, n = shard_bytes(batch)
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
