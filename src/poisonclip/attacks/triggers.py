"""Backdoor triggers as pure functions, shared by poisoning (train time) and evaluation.

Train-time and test-time patches must be pixel-identical, so both sides call ``apply``, and
both apply it in the same geometry: the model's input. A patch size is given in pixels of a
224x224 input (the paper's convention) and scaled to the input resolution the model really
has. At evaluation the patch goes on the image after the model's resize and centre crop;
poisons are written already cropped to a centre square at the training resolution, so the
training transform (a resize to that same size) leaves the patch's pixels untouched. Pasted
on the stored photo instead, a corner patch is cropped away from a non-square image and a
one-pixel checkerboard is averaged into grey by any downscaling.
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


def patch_pixels(size_at_224: int, resolution: int) -> int:
    """Patch side in pixels of a ``resolution`` x ``resolution`` model input.

    Sizes are given at 224x224 and scale with the input, so a 16px patch covers the same
    fraction of a 32px or a 336px input. Never below one pixel.
    """
    if size_at_224 <= 0:
        raise ValueError(f"patch size must be positive, got {size_at_224}")
    if resolution <= 0:
        raise ValueError(f"resolution must be positive, got {resolution}")
    return max(1, int(round(size_at_224 * resolution / REFERENCE_RESOLUTION)))


def to_input_geometry(image: Image.Image, resolution: int) -> Image.Image:
    """The centre square of ``image``, resized to ``resolution`` x ``resolution`` (RGB).

    What a training transform sees of a poison: open_clip's RandomResizedCrop at crop scale
    1 and its validation Resize + CenterCrop both reduce to the centre square at the model's
    resolution, so a patch placed on this image reaches the model pixel for pixel. An image
    already of that size is returned unchanged.
    """
    if resolution <= 0:
        raise ValueError(f"resolution must be positive, got {resolution}")
    image = image.convert("RGB")
    w, h = image.size
    side = min(w, h)
    if (w, h) != (side, side):
        left, top = (w - side) // 2, (h - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if side != resolution:
        image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
    return image


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
