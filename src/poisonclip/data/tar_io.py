"""Reading tar shards that nobody curated: bounded time, bounded memory, nothing on disk.

Every shard read in poisonclip goes through here. The rules:

* Uncompressed tar only (what img2dataset writes). A gzip/bzip2/xz/zstd/lz4 file is a
  ``UserError`` before any byte is decompressed: a whole shard in the wrong format is a
  decision to fix once (decompress it), not a broken row to skip, and refusing it up front
  is what keeps a 65 KB "shard" from inflating to gigabytes.
* Headers are parsed by the standard library's :mod:`tarfile` (mode ``"r:"``, seeking past
  member data, never extracting, links and devices ignored). Its header data reads (pax and
  GNU long-name records) are capped at ``MAX_HEADER_BYTES``; every member must have a
  non-negative size inside the file, and each header must lie past the one before, so a
  crafted header cannot make the scan loop or allocate.
* A member larger than ``max_member`` (``MAX_MEMBER_BYTES``) is never read; its sample is
  skipped and counted as ``member_too_large``.
* A shard that is truncated or corrupt part-way keeps the samples before the damage and
  counts one ``truncated_tar``; the sample being assembled is lost.

``shard_captions`` has a fast path for caption search (a plain-ustar header scan about ten
times quicker than :mod:`tarfile`): it handles only the plain case, and anything else in a
shard (pax or GNU records, odd types, a bad checksum, a non-octal size, truncation) makes
it hand the whole shard to the :mod:`tarfile` reader, so both give the same answer.
"""

from __future__ import annotations

import mmap
import os
import struct
import tarfile
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

from poisonclip.data.sample import IMAGE_EXTS, MAX_FILE_BYTES, SkipReport
from poisonclip.errors import UserError

MAX_MEMBER_BYTES = MAX_FILE_BYTES  # one image or caption; LAION's largest images are a few MB
# pax / GNU long-name data: real ones are well under 4 KiB; small also because Python < 3.11.10
# parses pax records in time quadratic in their size (CVE-2024-6232): 8 KiB costs < 0.1 s.
MAX_HEADER_BYTES = 8 << 10
_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_IMAGE_EXT_SET = frozenset(IMAGE_EXTS)

# Signatures of compressed files; checked only when the first block is not a tar header.
_COMPRESSED = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"),
               (b"\x28\xb5\x2f\xfd", "zstd"), (b"\x04\x22\x4d\x18", "lz4"))


class Member(NamedTuple):
    name: str
    offset: int  # of the data
    size: int


class Group(NamedTuple):
    key: str                        # base name up to the first dot (WebDataset's key)
    files: dict[str, bytes | None]  # ext -> data (None: present but not read)


class _Corrupt(Exception):
    """The shard is unusable from here on (one ``truncated_tar``)."""


class _HeaderTooLarge(Exception):
    pass


class _CappedReads:
    """The shard as :mod:`tarfile` sees it: any single read over ``cap`` bytes is refused.

    tarfile reads member data only when asked (we never ask: data is read by offset), so
    the reads it makes itself are headers and pax / long-name records, all small.
    """

    def __init__(self, f, cap: int):
        self._f, self._cap = f, cap
        self.name = getattr(f, "name", None)

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > self._cap:
            raise _HeaderTooLarge
        return self._f.read(n)

    def seek(self, *args) -> int:
        return self._f.seek(*args)

    def tell(self) -> int:
        return self._f.tell()


_OCTAL_DIGITS = b"01234567"


def _octal(field: bytes) -> int | None:
    """A tar numeric field in plain octal (NUL/space padded), else None (signs, base-256...)."""
    digits = field.split(b"\0", 1)[0].strip(b" ")
    if not digits or digits.translate(None, _OCTAL_DIGITS):
        return None
    return int(digits, 8)


def _header_ok(block: bytes) -> bool:
    """Does this 512-byte block carry a valid tar header checksum?"""
    if len(block) < _BLOCK:
        return False
    want = _octal(block[148:156])
    return want is not None and want == sum(block) - sum(block[148:156]) + 256


def check_not_compressed(path: Path, head: bytes) -> None:
    """``UserError`` for a compressed file posing as a shard (nothing is decompressed)."""
    if _header_ok(head[:_BLOCK]):
        return
    for magic, kind in _COMPRESSED:
        if head.startswith(magic):
            raise UserError(f"{path}: a {kind}-compressed file; poisonclip reads uncompressed .tar shards "
                            "only (what img2dataset writes): decompress it first")


def _open(path: Path):
    try:
        f = open(path, "rb")
    except OSError as e:
        raise UserError(f"{path}: cannot read shard ({e.strerror})") from None
    try:
        check_not_compressed(path, f.read(_BLOCK))
        f.seek(0)
    except BaseException:
        f.close()
        raise
    return f


def _members(f, size: int) -> Iterator[Member]:
    """Regular-file members of the tar in ``f`` (``size`` bytes), checked as the module says.

    Raises ``_Corrupt`` where the shard stops making sense, ``_HeaderTooLarge`` for an
    oversized header record.
    """
    try:
        tf = tarfile.open(fileobj=_CappedReads(f, MAX_HEADER_BYTES), mode="r:")
    except tarfile.TarError as e:
        raise _Corrupt(str(e)) from None
    end = 0  # where the next header must be (just past the last member's data)
    with tf:
        while True:
            try:
                m = tf.next()
            except (tarfile.TarError, EOFError, ValueError, OverflowError) as e:
                raise _Corrupt(str(e)) from None
            tf.members.clear()  # tarfile keeps every header; we stream
            if m is None:
                break
            if m.size < 0 or m.offset < end or m.offset_data + m.size > size:
                raise _Corrupt(f"member {m.name!r}: size {m.size} at {m.offset_data} in a {size}-byte file")
            end = m.offset_data + -(-m.size // _BLOCK) * _BLOCK
            if m.type in _REGULAR:
                yield Member(m.name, m.offset_data, m.size)
    # tarfile ends quietly at any unreadable header after the first, and at the end of the
    # file: only the end-of-archive zeros mean nothing was lost.
    f.seek(end)
    if not _is_end(f.read(_BLOCK)):
        raise _Corrupt(f"no end-of-archive block at byte {end}")


def _is_end(block: bytes) -> bool:
    """Is this (up to 512 bytes at the end of the members) the end-of-archive marker?
    Zeros cut short still count: every member before them is whole."""
    return bool(block) and not block.strip(b"\0")


def _split(name: str) -> tuple[str, str, str]:
    """(group key with folders, base key, ext) by WebDataset's rule: the key is the path up
    to the first dot of the file name."""
    d, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), stem, ext.lower()


def _name_problem(stem: str) -> str | None:
    if not stem:
        return "empty_key"
    try:
        stem.encode("utf-8")
    except UnicodeEncodeError:  # tarfile decodes names with surrogateescape
        return "key_not_utf8"
    return None


def iter_groups(path: str | os.PathLike, report: SkipReport,
                want: Callable[[str, str], bool] | None = None,
                max_member: int = MAX_MEMBER_BYTES) -> Iterator[Group]:
    """(key, {ext: data}) per sample: consecutive members sharing a key, as WebDataset groups.

    Data is read only where ``want(key, ext)`` is true (all when ``want`` is None); other
    members appear with ``None`` so callers still see which files a sample has. A sample
    with a member over ``max_member`` bytes is skipped (``member_too_large``), one whose key
    is empty or not UTF-8 likewise (``empty_key``, ``key_not_utf8``).
    """
    path = Path(path)
    with _open(path) as f:
        size = os.fstat(f.fileno()).st_size
        gkey, base, files, bad = None, "", {}, None

        def done() -> Iterator[Group]:
            if gkey is None:
                return
            if bad is not None:
                report.skip(bad)
            else:
                yield Group(base, files)

        try:
            for m in _members(f, size):
                k, stem, ext = _split(m.name)
                if k != gkey:
                    yield from done()
                    gkey, base, files, bad = k, stem, {}, _name_problem(stem)
                if m.size > max_member:
                    bad = bad or "member_too_large"
                if bad is None and (want is None or want(stem, ext)):
                    f.seek(m.offset)
                    data = f.read(m.size)
                    if len(data) != m.size:
                        raise _Corrupt("short read")
                    files[ext] = data
                else:
                    files[ext] = None
        except _Corrupt:
            report.skip("truncated_tar")  # the sample being assembled is lost
            return
        except _HeaderTooLarge:  # a pax / long-name record no real writer makes
            report.skip("truncated_tar")
            return
        yield from done()


def scan_groups(path: str | os.PathLike, report: SkipReport, exts: frozenset[str] | None = None,
                only_key: str | None = None) -> Iterator[Group]:
    """``iter_groups`` reading data only for ``exts`` (None: all) and, when ``only_key`` is
    given, only for that sample: a header scan where the caller needs few bytes."""
    def want(key: str, ext: str) -> bool:
        return (exts is None or ext in exts) and (only_key is None or key == only_key)

    return iter_groups(path, report, want)


# --------------------------------------------------------------------------- captions, fast

# name (0:100), size (124:136), type flag (156), magic+version (257:265) of a ustar header
_HEADER = struct.Struct("100s24x12s20xc100x8s")
_USTAR = (b"ustar\x0000", b"ustar  \x00")


class _Unusual(Exception):
    """Not a plain ustar shard: let the tarfile reader decide."""


def _fast_members(mm, size: int) -> Iterator[tuple[str, int, int]]:
    """(name, data offset, size) for a shard of plain ustar file members only."""
    off = 0
    unpack = _HEADER.unpack_from
    while off + _BLOCK <= size:
        name, field, typ, magic = unpack(mm, off)
        if name[0] == 0 and mm[off:off + _BLOCK] == _ZERO_BLOCK:
            return
        if magic not in _USTAR or typ not in (b"0", b"\0") or not _header_ok(mm[off:off + _BLOCK]):
            raise _Unusual
        n = _octal(field)  # octal digits only: no sign, no base-256
        if n is None:
            raise _Unusual
        data_off = off + _BLOCK
        if data_off + n > size:
            raise _Unusual
        text = name.split(b"\0", 1)[0].decode("utf-8")
        if magic == _USTAR[0] and mm[off + 345] != 0:  # POSIX path prefix
            text = mm[off + 345:off + 500].split(b"\0", 1)[0].decode("utf-8") + "/" + text
        yield text, data_off, n
        off = data_off + -(-n // _BLOCK) * _BLOCK  # always > the previous off
    if not _is_end(mm[off:off + _BLOCK]):
        raise _Unusual  # truncated: the tarfile reader counts it


def _fast_captions(mm, size: int, max_member: int) -> list[list]:
    """[txt or None, has image, problem or None] per sample, or ``_Unusual``."""
    samples: list[list] = []
    key, cur = None, None
    images = _IMAGE_EXT_SET
    for name, data_off, n in _fast_members(mm, size):
        k, stem, ext = _split(name)
        if k != key:
            if not stem:
                raise _Unusual
            key, cur = k, [None, False, None]
            samples.append(cur)
        if n > max_member:
            cur[2] = "member_too_large"
        elif ext == "txt":
            cur[0] = mm[data_off:data_off + n]
        elif ext in images:
            cur[1] = True
    return samples


def _slow_captions(path: Path, report: SkipReport, max_member: int) -> list[list]:
    return [[g.files.get("txt"), any(e in _IMAGE_EXT_SET for e in g.files), None]
            for g in iter_groups(path, report, lambda _k, ext: ext == "txt", max_member)]


def shard_captions(path: str | os.PathLike, report: SkipReport,
                   max_member: int = MAX_MEMBER_BYTES) -> list[bytes]:
    """The ``.txt`` bytes of every sample in one shard that has an image and a caption.

    Skips are counted as ``iter_groups`` + ``wds_io.read_shards`` count them.
    """
    path = Path(path)
    with _open(path) as f:
        size = os.fstat(f.fileno()).st_size
        samples = None
        if size:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                try:
                    samples = _fast_captions(mm, size, max_member)
                except (_Unusual, UnicodeDecodeError, IndexError):
                    samples = None
    if samples is None:
        samples = _slow_captions(path, report, max_member)
    out: list[bytes] = []
    for txt, has_img, problem in samples:
        if problem:
            report.skip(problem)
        elif not has_img:
            report.skip("missing_image")
        elif txt is None:
            report.skip("missing_caption")
        else:
            out.append(txt)
    return out
