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


# --------------------------------------------------------------------------- more triggers
#
# Each is a pure function of the image and its parameters: nothing depends on the call order or
# on a global random state, so the writer (train time) and the evaluator (test time) produce
# the same pixels from the same recorded parameters. Patterns are drawn at the pixel size they
# are used at (the model input), from their own seeded generator.


def _rng(seed: int, purpose: str, *sizes: int) -> np.random.Generator:
    import zlib

    return np.random.default_rng([int(seed), zlib.crc32(purpose.encode("utf-8")), *map(int, sizes)])


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Float pixels rounded half to even and clipped to 0..255 (the one rounding rule here)."""
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def noise_patch(size: int, seed: int) -> np.ndarray:
    """A size x size uint8 RGB patch of uniform random noise, fixed by ``seed`` (and ``size``)."""
    if size <= 0:
        raise ValueError(f"patch size must be positive, got {size}")
    return _rng(seed, "noise-patch", size).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def apply_noise_patch(image: Image.Image, spec: TriggerSpec, trigger_seed: int = 0) -> Image.Image:
    """Return a copy of ``image`` (RGB) with the seed's noise patch pasted at ``spec``."""
    arr = np.array(image.convert("RGB"), dtype=np.uint8)
    h, w = arr.shape[:2]
    if spec.x < 0 or spec.y < 0 or spec.x + spec.size > w or spec.y + spec.size > h:
        raise ValueError(f"patch {spec} does not fit a {w}x{h} image")
    arr[spec.y:spec.y + spec.size, spec.x:spec.x + spec.size] = noise_patch(spec.size, int(trigger_seed))
    return Image.fromarray(arr)


def blended_pattern(height: int, width: int, seed: int, pattern_file: str | None = None) -> np.ndarray:
    """The blended trigger's pattern at ``height`` x ``width`` (uint8 RGB): the image file resized
    (bicubic) to that size, or, without a file, uniform random noise fixed by ``seed`` (Chen et
    al.'s random-pattern key)."""
    if pattern_file:
        return _file_pattern(str(pattern_file), height, width).copy()
    return _rng(seed, "blended", height, width).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _file_pattern(path: str, height: int, width: int) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (width, height):
            im = im.resize((width, height), Image.Resampling.BICUBIC)
        return np.asarray(im, dtype=np.uint8)


def blend(image: Image.Image, spec: TriggerSpec, blend_alpha: float = 0.2, trigger_seed: int = 0,
          blend_pattern: str | None = None) -> Image.Image:
    """``(1 - alpha) * image + alpha * pattern`` over the whole image, rounded to uint8.

    ``spec`` is not used: the blend covers every pixel (a whole-image trigger has no placement).
    """
    if not 0.0 <= blend_alpha <= 1.0:
        raise ValueError(f"blend alpha must be in [0, 1], got {blend_alpha}")
    arr = np.asarray(image.convert("RGB"), dtype=np.float64)
    h, w = arr.shape[:2]
    pattern = blended_pattern(h, w, int(trigger_seed), blend_pattern).astype(np.float64)
    return Image.fromarray(_to_uint8((1.0 - blend_alpha) * arr + blend_alpha * pattern))


def warp_field(height: int, width: int, grid: int, strength: float, seed: int) -> np.ndarray:
    """WaNet's displacement field (Nguyen & Tran 2021) in pixels, shape (2, height, width): dy, dx.

    A ``grid`` x ``grid`` control field of uniform values in [-1, 1], divided by its mean
    absolute value, is upsampled to the image by cubic-spline interpolation through the control
    points (corners aligned; WaNet upsamples bicubically) and scaled by ``strength``: WaNet
    samples at ``identity + s * field / side`` in [-1, 1] coordinates, which is a displacement of
    ``s * field * (side - 1) / (2 * side)`` pixels. The control values depend only on ``seed``
    and ``grid``, so one seed gives the same smooth warp at any image size.
    """
    from scipy.ndimage import map_coordinates

    if grid < 2:
        raise ValueError(f"warp grid must be at least 2 control points a side, got {grid}")
    if strength < 0:
        raise ValueError(f"warp strength must be >= 0, got {strength}")
    ctrl = _rng(seed, "warp", grid).uniform(-1.0, 1.0, size=(2, grid, grid))
    ctrl /= np.mean(np.abs(ctrl))
    yy, xx = np.meshgrid(np.linspace(0, grid - 1, height), np.linspace(0, grid - 1, width), indexing="ij")
    field = np.stack([map_coordinates(c, [yy, xx], order=3, mode="nearest") for c in ctrl])
    scale = np.array([(height - 1) / (2 * height), (width - 1) / (2 * width)])[:, None, None]
    return strength * field * scale


def warp(image: Image.Image, spec: TriggerSpec, warp_grid: int = 4, warp_strength: float = 0.5,
         trigger_seed: int = 0) -> Image.Image:
    """The whole image resampled (bilinear) along the seed's WaNet field; sample positions are
    clamped to the image, as WaNet clamps its grid. ``spec`` is not used (no placement)."""
    from scipy.ndimage import map_coordinates

    arr = np.asarray(image.convert("RGB"), dtype=np.float64)
    h, w = arr.shape[:2]
    dy, dx = warp_field(h, w, int(warp_grid), float(warp_strength), int(trigger_seed))
    yy, xx = np.indices((h, w), dtype=np.float64)
    sy, sx = np.clip(yy + dy, 0, h - 1), np.clip(xx + dx, 0, w - 1)
    out = np.stack([map_coordinates(arr[:, :, c], [sy, sx], order=1, mode="nearest") for c in range(3)], axis=2)
    return Image.fromarray(_to_uint8(out))
