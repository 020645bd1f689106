"""What `poisonclip poison` writes trains unchanged with open_clip's own trainer.

``open_clip_train.main`` runs as a subprocess, started by a three-line launcher that only
registers ``tests/assets/test-tiny.json`` (open_clip knows models per process), for one
short epoch on CPU. The ``--train-data`` value is taken verbatim from ``poison.json``; for
WebDataset no ``--train-num-samples`` is given, so the trainer must find every shard's size
in the poison folder's ``sizes.json``; for CSV the trainer runs from an unrelated working
directory, so the table's absolute paths are what make it work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from poisonclip.attacks.api import BackdoorConfig, TargetedConfig, TargetSpec, poison
from tests.attack_fixtures import make_tiny

pytestmark = pytest.mark.e2e

MODEL_JSON = Path(__file__).resolve().parents[1] / "assets" / "test-tiny.json"
LAUNCHER = ("import sys, open_clip; open_clip.add_model_config(sys.argv[1]); "
            "from open_clip_train.main import main; main(sys.argv[2:])")


def _train(info: dict, cwd: Path, logs: Path) -> str:
    args = ["--train-data", info["train_data"], "--dataset-type", info["dataset_type"]]
    if info["dataset_type"] == "csv":
        args += ["--csv-separator", info["csv_sep"], "--csv-img-key", info["csv_img_key"],
                 "--csv-caption-key", info["csv_caption_key"]]
    cmd = [sys.executable, "-c", LAUNCHER, str(MODEL_JSON), "--model", MODEL_JSON.stem,
           "--batch-size", "16", "--epochs", "1", "--workers", "0", "--precision", "fp32", "--lr", "1e-3",
           "--warmup", "1", "--seed", "0", "--report-to", "", "--log-every-n-steps", "1",
           "--logs", str(logs), "--name", "run", "--device", "cpu", *args]
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (logs / "run" / "checkpoints" / "epoch_1.pt").is_file()
    return (logs / "run" / "out.log").read_text()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("e2e") / "d", n=48, shard_size=16)


def test_backdoored_csv_trains_with_open_clip(tiny, tmp_path):
    result = poison(BackdoorConfig(data=str(tiny.csv), out=str(tmp_path / "bd"), target_label="star",
                                   n_poisons=16, placement="random"))
    info = json.loads(result.poison_json.read_text())
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    log = _train(info, elsewhere, tmp_path / "logs")
    assert "Train Epoch: 0" in log and f"/{info['num_samples']} " in log  # 48 clean + 16 poisons


def test_poisoned_webdataset_trains_with_open_clip(tiny, tmp_path):
    img = tiny.root / "images" / f"{tiny.samples[0].key}.png"
    result = poison(TargetedConfig(data=str(tiny.shards), out=str(tmp_path / "tp"),
                                   targets=(TargetSpec(str(img), "moon", 10), TargetSpec(str(img), "star", 6,
                                                                                         "search")),
                                   noise_sigma=1.0, perturb_captions=True))
    info = json.loads(result.poison_json.read_text())
    assert info["num_samples"] == 64
    log = _train(info, tmp_path, tmp_path / "logs")
    assert "Train Epoch: 0" in log and "/64 " in log  # sizes.json covered poison and clean shards
