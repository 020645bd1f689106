"""Shared fixtures: small real datasets built in a temporary folder."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from poisonclip.data.sample import Sample


def make_samples(n: int, size: int = 16, seed: int = 0, ext: str = "png") -> list[Sample]:
    """n distinct random images with simple captions and a label in meta."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        arr = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        out.append(Sample.from_pil(f"s{i:04d}", Image.fromarray(arr), f"a photo of thing {i}",
                                   meta={"label": i % 3}, ext=ext))
    return out


@pytest.fixture
def samples() -> list[Sample]:
    return make_samples(12)
