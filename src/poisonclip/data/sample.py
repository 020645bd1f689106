"""The one record every reader yields and every writer takes."""

from __future__ import annotations

import io
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping

from PIL import Image

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")

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


def decode_image(data: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x the pixel limit; refuse those too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                return im.convert("RGB")
    except Image.DecompressionBombWarning as e:
        raise CorruptSample("decompression_bomb", str(e)) from None
    except Image.DecompressionBombError as e:
        raise CorruptSample("decompression_bomb", str(e)) from None
    except Exception as e:  # Pillow raises many types for truncated/garbage data
        raise CorruptSample("corrupt_image", f"{type(e).__name__}: {e}") from None


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

    def skip(self, reason: str) -> None:
        self[reason] += 1

    def summary(self) -> str:
        if not self:
            return "no samples skipped"
        parts = ", ".join(f"{k}={v}" for k, v in sorted(self.items()))
        return f"skipped {sum(self.values())} samples ({parts})"
