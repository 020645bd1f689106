"""Small labelled image-caption datasets for the attack tests (CSV and WebDataset, same samples).

Images are random noise, so a trigger or a noise edit shows in every pixel it touches;
captions name their class (sometimes in the plural) so caption search has known answers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from poisonclip.data.csv_io import write_csv
from poisonclip.data.sample import Sample
from poisonclip.data.wds_io import write_shards

CLASSES = ("circle", "square", "star", "moon")
_ADJ = ("red", "big", "tiny", "shiny", "old")


@dataclass(frozen=True)
class Tiny:
    root: Path
    samples: list

    @property
    def csv(self) -> Path:
        return self.root / "train.tsv"

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    @property
    def classnames(self) -> Path:
        return self.root / "classnames.txt"


def caption_for(i: int, label: int) -> str:
    name = CLASSES[label]
    if i % 5 == 0:
        return f"two {_ADJ[i % len(_ADJ)]} {name}s in a row {i}"
    return f"a {_ADJ[i % len(_ADJ)]} {name} on a plain background {i}"


def make_tiny(root: Path, n: int = 60, size: int = 32, seed: int = 0, shard_size: int = 20,
              height: int | None = None) -> Tiny:
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        label = i % len(CLASSES)
        arr = rng.integers(0, 256, size=(height or size, size, 3), dtype=np.uint8)
        samples.append(Sample.from_pil(f"k{i:05d}", Image.fromarray(arr), caption_for(i, label),
                                       meta={"label": label}))
    root.mkdir(parents=True, exist_ok=True)
    write_csv(samples, root, name="train.tsv", extra_columns=("label",))
    write_shards(samples, root / "shards", shard_size=shard_size)
    (root / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    return Tiny(root, samples)


def tree_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}
