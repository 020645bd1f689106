"""Write the embedded synthetic corpus through the same writers as any real dataset.

The rest of the pipeline then cannot tell it from a user's scrape: a CSV for open_clip, the
same samples as WebDataset shards, a labelled test split, a labelled probe-training split
(``probe.tsv``, written when ``n_probe > 0``) and the class names.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from poisonclip.data.csv_io import write_csv
from poisonclip.data.evalset import write_labelled_csv
from poisonclip.data.synthetic import SynthConfig, generate
from poisonclip.data.wds_io import write_shards
from poisonclip.io_utils import OutputKind, atomic_dir, atomic_write_json, sha256_file

TRAIN_CSV = "train.tsv"
TEST_CSV = "test.tsv"
PROBE_CSV = "probe.tsv"
PROBE_IMAGES = "probe_images"
SHARDS_DIR = "shards"
INFO_FILE = "corpus.json"
# What `--overwrite` may replace: a folder holding a valid corpus.json (written last).
CORPUS_KIND = OutputKind("synthetic corpus (`poisonclip data synth`)", ((INFO_FILE, ("generator", "n_train")),))


@dataclass(frozen=True)
class CorpusPaths:
    root: Path

    @property
    def train_csv(self) -> Path:
        return self.root / TRAIN_CSV

    @property
    def shards(self) -> Path:
        return self.root / SHARDS_DIR

    @property
    def test_csv(self) -> Path:
        return self.root / TEST_CSV

    @property
    def probe_csv(self) -> Path | None:
        """The labelled probe-training split, if the corpus has one."""
        p = self.root / PROBE_CSV
        return p if p.is_file() else None

    @property
    def classnames(self) -> Path:
        return self.root / "classnames.txt"


def write_corpus(cfg: SynthConfig, out: str | os.PathLike, formats: tuple[str, ...] = ("csv", "webdataset"),
                 shard_size: int = 10_000, overwrite: bool = False) -> CorpusPaths:
    """Generate the corpus and write it atomically into ``out`` (all or nothing)."""
    corpus = generate(cfg)
    # Absolute image paths under the final folder: open_clip_train reads them from any directory.
    root = os.path.abspath(out)
    with atomic_dir(out, overwrite=overwrite, kind=CORPUS_KIND) as tmp:
        files = {}
        if "csv" in formats:
            files[TRAIN_CSV] = write_csv(corpus.train, tmp, name=TRAIN_CSV, extra_columns=("label",), path_root=root)
        if "webdataset" in formats:
            write_shards(corpus.train, tmp / SHARDS_DIR, shard_size=shard_size)
        files[TEST_CSV] = write_labelled_csv(corpus.test, corpus.classnames, tmp, name=TEST_CSV, path_root=root)
        if corpus.probe:
            files[PROBE_CSV] = write_labelled_csv(corpus.probe, corpus.classnames, tmp, name=PROBE_CSV,
                                                  image_dir=PROBE_IMAGES, path_root=root)
        atomic_write_json(tmp / INFO_FILE, {
            "generator": "poisonclip.data.synthetic",
            "config": dataclasses.asdict(cfg),
            "classnames": corpus.classnames,
            "n_train": len(corpus.train),
            "n_test": len(corpus.test),
            "n_probe": len(corpus.probe),
            "formats": list(formats),
            "sha256": {name: sha256_file(p) for name, p in sorted(files.items())},
        })
    return CorpusPaths(Path(out))
