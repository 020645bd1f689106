"""Write the embedded synthetic corpus through the same writers as any real dataset.

The rest of the pipeline then cannot tell it from a user's scrape: a CSV for open_clip, the
same samples as WebDataset shards, a labelled test split, a labelled probe-training split
(``probe.tsv``, written when ``n_probe > 0``) and the class names.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from poisonclip.contracts import (CORPUS_INFO_FILE, PROBE_IMAGES_DIR, PROBE_TABLE, SHARDS_DIR, TEST_TABLE,
                                  TRAIN_TABLE, CorpusInfo, CorpusPaths, write_corpus_info)
from poisonclip.data.csv_io import write_csv
from poisonclip.data.evalset import write_labelled_csv
from poisonclip.data.synthetic import SynthConfig, generate
from poisonclip.data.wds_io import write_shards
from poisonclip.io_utils import OutputKind, atomic_dir, sha256_file

# What `--overwrite` may replace: a folder holding a valid corpus.json (written last).
CORPUS_KIND = OutputKind("synthetic corpus (`poisonclip data synth`)", ((CORPUS_INFO_FILE, ("generator", "n_train")),))


def write_corpus(cfg: SynthConfig, out: str | os.PathLike, formats: tuple[str, ...] = ("csv", "webdataset"),
                 shard_size: int = 10_000, overwrite: bool = False) -> CorpusPaths:
    """Generate the corpus and write it atomically into ``out`` (all or nothing)."""
    corpus = generate(cfg)
    # Absolute image paths under the final folder: open_clip_train reads them from any directory.
    root = os.path.abspath(out)
    with atomic_dir(out, overwrite=overwrite, kind=CORPUS_KIND) as tmp:
        files = {}
        if "csv" in formats:
            files[TRAIN_TABLE] = write_csv(corpus.train, tmp, name=TRAIN_TABLE, extra_columns=("label",), path_root=root)
        if "webdataset" in formats:
            write_shards(corpus.train, tmp / SHARDS_DIR, shard_size=shard_size)
        files[TEST_TABLE] = write_labelled_csv(corpus.test, corpus.classnames, tmp, name=TEST_TABLE, path_root=root)
        if corpus.probe:
            files[PROBE_TABLE] = write_labelled_csv(corpus.probe, corpus.classnames, tmp, name=PROBE_TABLE,
                                                    image_dir=PROBE_IMAGES_DIR, path_root=root)
        write_corpus_info(tmp, CorpusInfo(
            generator="poisonclip.data.synthetic", config=dataclasses.asdict(cfg),
            classnames=tuple(corpus.classnames), n_train=len(corpus.train), n_test=len(corpus.test),
            n_probe=len(corpus.probe), formats=tuple(formats),
            sha256={name: sha256_file(p) for name, p in sorted(files.items())}))
    return CorpusPaths.from_folder(Path(out))
