"""Near duplicates by perceptual hash (imagehash's DCT ``phash``), the cheap near-duplicate
filter of dataset-cleaning pipelines: faint noise barely moves an image's low frequencies, so
the evasion's noisy copies keep (nearly) the same hash."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from poisonclip.detect.registry import DetectInput, register_detector

CHUNK = 512   # rows per block of the all-pairs distance products (memory: 4 * CHUNK * n bytes)


def phash_bits(inputs: DetectInput, hash_size: int = 8) -> np.ndarray:
    """(n, hash_size**2) bool: each image's perceptual hash as bits."""
    import imagehash

    bits = [imagehash.phash(inputs.pil(i), hash_size=hash_size).hash.reshape(-1) for i in range(len(inputs))]
    return np.asarray(bits, dtype=bool).reshape(len(inputs), hash_size * hash_size)


def hamming_blocks(bits: np.ndarray, chunk: int = CHUNK) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, block of Hamming distances from those rows to every hash), block by block."""
    b = bits.astype(np.int32)
    nb = 1 - b
    for start in range(0, len(b), chunk):
        rows = b[start:start + chunk]
        yield start, rows @ nb.T + (1 - rows) @ b.T


def neighbour_counts(bits: np.ndarray, max_distance: int) -> np.ndarray:
    """For each hash, how many *other* hashes lie within ``max_distance`` bits of it."""
    out = np.zeros(len(bits), dtype=np.float64)
    for start, d in hamming_blocks(bits):
        out[start:start + len(d)] = (d <= max_distance).sum(axis=1) - 1   # minus itself
    return out


@register_detector("phash", "how many other images lie within a few bits of its perceptual hash (imagehash)",
                   hash_size=8, max_distance=6)
def phash(inputs: DetectInput, hash_size: int, max_distance: int) -> np.ndarray:
    return neighbour_counts(phash_bits(inputs, hash_size), max_distance)
