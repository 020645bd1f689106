"""What `poisonclip data synth` writes trains unchanged with open_clip's own trainer.

Runs ``open_clip_train.main`` (through ``poisonclip.train.launch``, which only registers our
JSON model configs in the trainer's process) for one short epoch on each format.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from poisonclip.data.corpus import write_corpus
from poisonclip.data.synthetic import SynthConfig
from poisonclip.data.wds_io import expand_shards, shard_pattern

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus") / "c"
    write_corpus(SynthConfig(n_train=64, n_test=8, resolution=32, seed=1), root, shard_size=32)
    return root


def _train(cwd: Path, logs: Path, data_args: list[str]) -> Path:
    cmd = [sys.executable, "-m", "poisonclip.train.launch", "--model", "poisonclip-test",
           "--batch-size", "16", "--epochs", "1", "--workers", "0", "--precision", "fp32",
           "--lr", "1e-3", "--warmup", "1", "--seed", "0", "--report-to", "", "--log-every-n-steps", "1",
           "--logs", str(logs), "--name", "run", "--device", "cpu", *data_args]
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    log = (logs / "run" / "out.log").read_text()
    # every one of the 64 samples, in 4 steps of 16 (one log line per step): the trainer read
    # the whole corpus, not just started
    seen = [(int(a), int(b)) for a, b in re.findall(r"Train Epoch: 0 \[\s*(\d+)/(\d+) ", log)]
    assert seen == [(16, 64), (32, 64), (48, 64), (64, 64)], log[-2000:]
    assert (logs / "run" / "checkpoints" / "epoch_1.pt").is_file()
    return logs / "run"


def test_csv_trains_unchanged_from_any_working_directory(corpus, tmp_path):
    # open_clip opens image paths relative to its working directory; the corpus' tables hold
    # absolute paths, so the trainer runs from a folder that is not the table's.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _train(elsewhere, tmp_path / "logs", ["--train-data", str(corpus / "train.tsv"), "--dataset-type", "csv"])


def test_webdataset_trains_unchanged(corpus, tmp_path):
    pattern = shard_pattern(expand_shards(corpus / "shards"))
    _train(tmp_path, tmp_path / "logs", ["--train-data", pattern, "--dataset-type", "webdataset"])
