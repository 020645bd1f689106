"""The model-based detectors on a real (tiny) trained model: a clean reference model trained
on the embedded corpus embeds a targeted poisoned copy of it, with and without the evasion."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from poisonclip import contracts as C
from poisonclip.attacks.api import TargetedConfig, poison
from poisonclip.cli import app
from poisonclip.data.corpus import write_corpus
from poisonclip.data.synthetic import SynthConfig
from poisonclip.detect.api import DetectConfig, detect
from poisonclip.train.run import TrainConfig, train

pytestmark = pytest.mark.e2e

MODEL_DETECTORS = ("embedding-neighbours", "image-caption-similarity")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("detect-e2e")
    corpus = root / "corpus"
    write_corpus(SynthConfig(n_train=600, n_test=100, n_probe=0, resolution=32, seed=1), corpus, formats=("csv",))
    # One thread: on shared CI cores two threads can stall each other (see docs/training.md).
    train(TrainConfig(data=str(corpus), out=str(root / "ref"), model="poisonclip-test", epochs=10, batch_size=64,
                      lr=2e-3, warmup=5, seed=0, gpus=0, threads=1))
    sets = {}
    for name, kw in (("plain", {}), ("evasion", {"noise_sigma": 2.0, "perturb_captions": True})):
        sets[name] = Path(poison(TargetedConfig(data=str(corpus / "train.tsv"), out=str(root / name),
                                                random_targets=3, n_poisons=8,
                                                target_source=str(corpus / "test.tsv"), **kw)).out)
    return root, sets


@pytest.mark.parametrize("which", ["plain", "evasion"])
def test_model_detectors_find_targeted_poisons(world, which):
    root, sets = world
    res = detect(DetectConfig(data=sets[which], out=root / f"det-{which}", methods=MODEL_DETECTORS,
                              model=root / "ref"))
    s = res.summary
    assert s.model == str(root / "ref") and s.model_checkpoint_sha256
    near = s.scoring["embedding-neighbours"]
    assert near.n_poisons == 24 and near.auroc >= 0.9, near.auroc   # copies embed on top of each other
    # A poison pairs its image with another label's captions. Far above chance: the AUROC of
    # random scores has a standard deviation of ~0.06 with 24 poisons among 600.
    assert s.scoring["image-caption-similarity"].auroc >= 0.7, s.scoring["image-caption-similarity"].auroc


def test_cli_with_a_model(world):
    root, sets = world
    out = root / "cli"
    r = CliRunner().invoke(app, ["detect", str(sets["evasion"]), "--method", "embedding-neighbours",
                                 "--method", "exact-pixels", "--model", str(root / "ref"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    s = C.read_detection_summary(out)
    assert abs(s.scoring["exact-pixels"].auroc - 0.5) < 0.05     # the evasion defeats exact de-duplication
    assert s.scoring["embedding-neighbours"].auroc >= 0.9         # but not embedding neighbours
    r = CliRunner().invoke(app, ["detect", str(sets["plain"]), "--method", "phash", "--model",
                                 str(root / "nope"), "--out", str(root / "x")])
    assert r.exit_code == 2 and "run.json" in r.output
