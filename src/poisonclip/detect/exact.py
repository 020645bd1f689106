"""Exact duplicates: the de-duplication web-scale pipelines run first.

The targeted attack writes one image many times; without evasion every copy has the same
bytes and the same pixels. The evasion's faint per-copy noise (``noise_sigma``) changes both,
which is the paper's point: exact de-duplication is not a defence.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Hashable, Sequence

import numpy as np

from poisonclip.detect.registry import DetectInput, register_detector


def duplicate_counts(ids: Sequence[Hashable]) -> np.ndarray:
    """For each item, how many *other* items share its id."""
    counts = Counter(ids)
    return np.array([counts[i] - 1 for i in ids], dtype=np.float64)


@register_detector("exact-bytes", "how many other samples have byte-identical images (sha256 of the file)")
def exact_bytes(inputs: DetectInput) -> np.ndarray:
    return duplicate_counts([hashlib.sha256(b).hexdigest() for b in inputs.images])


def pixel_digest(inputs: DetectInput, i: int) -> str:
    """sha256 of the decoded RGB pixels and their shape: equal for re-encodings of one image."""
    arr = np.asarray(inputs.pil(i), dtype=np.uint8)
    return hashlib.sha256(repr(arr.shape).encode() + arr.tobytes()).hexdigest()


@register_detector("exact-pixels", "how many other samples have identical decoded pixels (any encoding)")
def exact_pixels(inputs: DetectInput) -> np.ndarray:
    return duplicate_counts([pixel_digest(inputs, i) for i in range(len(inputs))])
