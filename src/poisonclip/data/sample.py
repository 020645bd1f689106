"""The one record every reader yields and every writer takes."""

from __future__ import annotations

import io
import os
import stat
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping

from PIL import Image

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
# The only formats Pillow may parse in scraped data: what web-scale datasets hold after
# img2dataset. Every other Pillow plugin (TIFF, BMP, EPS, which starts Ghostscript where it
# is installed, ...) is never reached with untrusted bytes.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP")

# The one set of reasons every reader counts skipped samples under (docs/untrusted-input.md).
SKIP_REASONS: dict[str, str] = {
    "missing_caption": "the caption is missing or blank",
    "caption_not_utf8": "the caption's bytes are not UTF-8",
    "path_not_utf8": "the image path's bytes are not UTF-8",
    "bad_row": "a table row with more or fewer fields than the header",
    "missing_image": "no image (no such file, or no image member in the sample)",
    "corrupt_image": "the image does not decode as JPEG, PNG or WebP",
    "unsupported_format": "the image is in another format (GIF, BMP, TIFF, EPS, ...)",
    "decompression_bomb": f"the image has more than {89_478_485:,} pixels",
    "bad_json": "the sample's .json member is not a JSON object",
    "empty_key": "the sample's key (tar member name up to the first dot) is empty",
    "key_not_utf8": "the sample's key is not UTF-8",
    "duplicate_key": "a second sample with a key already written",
    "member_too_large": "a tar member or image file is larger than the cap (64 MiB by default)",
    "truncated_tar": "the shard is truncated or corrupt from here on (the rest is lost)",
}

# Bytes one sample's file (image, caption, metadata) may have; nothing larger is read.
MAX_FILE_BYTES = 64 << 20

# Leading bytes of image formats we refuse, to tell "another format" from "garbage".
_OTHER_FORMATS = (b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*", b"%!PS", b"\xc5\xd0\xd3\xc6",
                  b"%PDF", b"\x00\x00\x01\x00", b"8BPS", b"\x00\x00\x00\x0cjP  ", b"\xff\x4f\xff\x51",
                  b"icns", b"DDS ", b"qoif")

# Scraped data is untrusted: refuse images whose pixel count could exhaust memory.
# 89.5M pixels is Pillow's own warning threshold; above 2x it Pillow raises.
Image.MAX_IMAGE_PIXELS = 89_478_485


@dataclass(frozen=True)
class Sample:
    """An image-caption pair.

    ``image`` holds the encoded bytes exactly as stored (``ext`` says which codec), so clean
    samples pass through readers and writers without a lossy decode/encode round trip.
    """

    key: str
    image: bytes
    caption: str
    meta: Mapping[str, Any] = field(default_factory=dict)
    ext: str = "png"

    def decode(self) -> Image.Image:
        """Decode to RGB, raising ``CorruptSample`` for anything Pillow refuses."""
        return decode_image(self.image)

    @classmethod
    def from_pil(cls, key: str, image: Image.Image, caption: str,
                 meta: Mapping[str, Any] | None = None, ext: str = "png") -> "Sample":
        return cls(key=key, image=encode_image(image, ext), caption=caption,
                   meta=dict(meta or {}), ext=ext)


class CorruptSample(Exception):
    """One sample inside a dataset cannot be used; ``reason`` is the counter key."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _is_other_format(head: bytes) -> bool:
    return head.startswith(_OTHER_FORMATS) or (head[4:12] in (b"ftypheic", b"ftypavif", b"ftypmif1"))


def _open_image(fp, head: bytes, load: bool) -> Image.Image:
    """Open (and with ``load`` decode) an image of an allowed format, or ``CorruptSample``."""
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x the pixel limit; refuse those too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp, formats=IMAGE_FORMATS) as im:
                if not load:
                    return im
                im.load()
                return im.convert("RGB")
    except Image.DecompressionBombWarning as e:
        raise CorruptSample("decompression_bomb", str(e)) from None
    except Image.DecompressionBombError as e:
        raise CorruptSample("decompression_bomb", str(e)) from None
    except Image.UnidentifiedImageError as e:
        if _is_other_format(head):
            raise CorruptSample("unsupported_format", f"not JPEG, PNG or WebP ({head[:8]!r})") from None
        raise CorruptSample("corrupt_image", f"{type(e).__name__}: {e}") from None
    except Exception as e:  # Pillow raises many types for truncated/garbage data
        raise CorruptSample("corrupt_image", f"{type(e).__name__}: {e}") from None


def decode_image(data: bytes) -> Image.Image:
    """Decode JPEG/PNG/WebP bytes to RGB; ``CorruptSample`` (with its reason) for anything else."""
    return _open_image(io.BytesIO(data), data[:16], load=True)


def _open_file(path: str | os.PathLike, max_bytes: int):
    """A regular file of at most ``max_bytes`` opened for reading, else ``CorruptSample``.

    Checked before opening: a table may name a FIFO (open would block), a device such as
    /dev/zero (a read would never end) or a folder.
    """
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise CorruptSample("missing_image", f"{path}: not a regular file")
        if st.st_size > max_bytes:
            raise CorruptSample("member_too_large", f"{path}: {st.st_size} bytes")
        return open(path, "rb")
    except OSError:
        raise CorruptSample("missing_image", str(path)) from None


def read_image_file(path: str | os.PathLike, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of an image file named by a table (``CorruptSample`` as ``_open_file`` says)."""
    with _open_file(path, max_bytes) as f:
        try:
            return f.read(max_bytes + 1)[:max_bytes]
        except OSError:
            raise CorruptSample("missing_image", str(path)) from None


def check_image_file(path: str | os.PathLike, max_bytes: int = MAX_FILE_BYTES) -> None:
    """A cheap check of an image file: a regular file under the size cap whose header opens
    as JPEG, PNG or WebP within the pixel limit (pixels are not decoded). ``CorruptSample``
    otherwise, with the reason ``decode_image`` would give for a wrong header."""
    with _open_file(path, max_bytes) as f:
        try:
            head = f.read(16)
            f.seek(0)
        except OSError:
            raise CorruptSample("missing_image", str(path)) from None
        _open_image(f, head, load=False)


def encode_image(image: Image.Image, ext: str = "png") -> bytes:
    """Encode deterministically (no timestamps or random metadata in the bytes)."""
    buf = io.BytesIO()
    fmt = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[ext.lower()]
    kwargs: dict[str, Any] = {}
    if fmt == "JPEG":
        kwargs = {"quality": 95, "subsampling": 0}
    elif fmt == "PNG":
        kwargs = {"optimize": False, "compress_level": 6}
    elif fmt == "WEBP":
        kwargs = {"lossless": True}
    image.convert("RGB").save(buf, format=fmt, **kwargs)
    return buf.getvalue()


class SkipReport(Counter):
    """Counts of skipped samples per reason; readers add to it, commands print it."""

    def skip(self, reason: str, n: int = 1) -> None:
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; add it to SKIP_REASONS")
        self[reason] += n

    def merge_max(self, other: Mapping[str, int]) -> None:
        """Fold in another pass over the same data: per reason, keep the larger count, so a
        sample that two passes both skipped (caption search, then source drawing) counts once."""
        for reason, n in other.items():
            self[reason] = max(self[reason], n)

    def summary(self) -> str:
        if not self:
            return "no samples skipped"
        parts = ", ".join(f"{k}={v}" for k, v in sorted(self.items()))
        return f"skipped {sum(self.values())} samples ({parts})"
