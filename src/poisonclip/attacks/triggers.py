"""Backdoor triggers as pure functions, shared by poisoning (train time) and evaluation.

Train-time and test-time patches must be pixel-identical, so both sides call ``apply``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np
from PIL import Image

REFERENCE_RESOLUTION = 224  # the paper states patch sizes for 224x224 images


class Placement(str, Enum):
    corner = "corner"   # upper-left, the paper's consistent placement
    random = "random"   # uniformly random position per image


def patch_pixels(size_at_224: int, image_size: tuple[int, int]) -> int:
    """Patch side in pixels for an image of ``image_size`` (w, h).

    Sizes are given at 224x224 and scale with the shorter side, so a 16px patch covers the
    same fraction of a 32px or a 1024px image. Never below one pixel.
    """
    if size_at_224 <= 0:
        raise ValueError(f"patch size must be positive, got {size_at_224}")
    short = min(image_size)
    return max(1, int(round(size_at_224 * short / REFERENCE_RESOLUTION)))


@dataclass(frozen=True)
class TriggerSpec:
    """Where one patch goes on one image: enough to reproduce it exactly."""

    size: int   # side in pixels at this image's resolution
    x: int      # left
    y: int      # top


def place(image_size: tuple[int, int], size: int, placement: Placement | str,
          rng: np.random.Generator | None = None) -> TriggerSpec:
    """Choose the patch position; ``rng`` is required for random placement."""
    w, h = image_size
    if size > w or size > h:
        raise ValueError(f"patch of {size}px does not fit a {w}x{h} image")
    placement = Placement(placement)
    if placement is Placement.corner:
        return TriggerSpec(size, 0, 0)
    if rng is None:
        raise ValueError("random placement needs an explicit numpy Generator")
    return TriggerSpec(size, int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1)))


def checkerboard(size: int) -> np.ndarray:
    """A size x size uint8 RGB checkerboard of one-pixel black and white cells, white first."""
    yy, xx = np.indices((size, size))
    cells = ((xx + yy) % 2 == 0).astype(np.uint8) * 255
    return np.repeat(cells[:, :, None], 3, axis=2)


def apply(image: Image.Image, spec: TriggerSpec) -> Image.Image:
    """Return a copy of ``image`` (as RGB) with the checkerboard pasted at ``spec``."""
    arr = np.array(image.convert("RGB"), dtype=np.uint8)
    h, w = arr.shape[:2]
    if spec.x < 0 or spec.y < 0 or spec.x + spec.size > w or spec.y + spec.size > h:
        raise ValueError(f"patch {spec} does not fit a {w}x{h} image")
    arr[spec.y:spec.y + spec.size, spec.x:spec.x + spec.size] = checkerboard(spec.size)
    return Image.fromarray(arr)
