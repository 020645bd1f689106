"""Fine-tuning threat model: `poisonclip train --init` starts open_clip_train from a local
checkpoint written by a tiny training, not from random weights; nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from poisonclip.cli import app
from poisonclip.data.corpus import write_corpus
from poisonclip.data.synthetic import SynthConfig
from poisonclip.io_utils import sha256_file
from poisonclip.train.run import TrainConfig, train
from tests.cli_errors import one_line_error

pytestmark = pytest.mark.e2e

runner = CliRunner()
MODEL = "poisonclip-test"
ARGS = ["--model", MODEL, "--epochs", "1", "--batch-size", "64", "--warmup", "1", "--gpus", "0", "--threads", "1"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> tuple[Path, Path]:
    """A corpus and a run trained on it from scratch (the checkpoint to fine-tune)."""
    root = tmp_path_factory.mktemp("ft")
    write_corpus(SynthConfig(n_train=128, n_test=8, resolution=32, seed=2), root / "c", shard_size=128)
    res = train(TrainConfig(data=str(root / "c"), out=str(root / "pre"), model=MODEL, epochs=1, batch_size=64,
                            warmup=1, gpus=0, threads=1, seed=0))
    return root / "c", res.run_dir


def _weights(path: Path) -> dict[str, torch.Tensor]:
    sd = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k.removeprefix("module."): v for k, v in sd.items()}


def test_fine_tuning_starts_from_the_given_checkpoint(pretrained, tmp_path):
    corpus, pre = pretrained
    ckpt = pre / "checkpoints" / "epoch_1.pt"
    # a learning rate so small that one epoch leaves the weights where they started: the
    # fine-tuned model equals the checkpoint it was initialised from, not a fresh random one
    r = runner.invoke(app, ["train", str(corpus), "--out", str(tmp_path / "ft"), *ARGS, "--lr", "1e-12",
                            "--seed", "5", "--init", str(pre)])
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "ft" / "run.json").read_text())
    assert info["init"] == str(ckpt.resolve()) and info["init_sha256"] == sha256_file(ckpt)
    cmd = json.loads((tmp_path / "ft" / "config.json").read_text())["command"]
    assert cmd[cmd.index("--pretrained") + 1] == str(ckpt.resolve())
    start, tuned = _weights(ckpt), _weights(Path(info["checkpoint"]))
    assert set(start) == set(tuned)
    assert all(torch.allclose(start[k].float(), tuned[k].float(), atol=1e-6) for k in start)

    # the same settings without --init train from seed 5's random weights: far from the checkpoint
    r = runner.invoke(app, ["train", str(corpus), "--out", str(tmp_path / "scratch"), *ARGS, "--lr", "1e-12",
                            "--seed", "5"])
    assert r.exit_code == 0, r.output
    scratch_info = json.loads((tmp_path / "scratch" / "run.json").read_text())
    assert "init" not in scratch_info
    scratch = _weights(Path(scratch_info["checkpoint"]))
    assert any(not torch.allclose(start[k].float(), scratch[k].float(), atol=1e-3) for k in start)


def test_a_checkpoint_file_fine_tunes_and_learns(pretrained, tmp_path):
    corpus, pre = pretrained
    ckpt = pre / "checkpoints" / "epoch_1.pt"
    r = runner.invoke(app, ["train", str(corpus), "--out", str(tmp_path / "ft"), *ARGS, "--lr", "1e-3",
                            "--init", str(ckpt)])
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "ft" / "run.json").read_text())
    assert info["init"] == str(ckpt.resolve()) and info["steps"] == 2
    tuned = _weights(Path(info["checkpoint"]))
    assert any(not torch.equal(v, tuned[k]) for k, v in _weights(ckpt).items())   # it did train


def test_bad_init_is_one_line_and_exit_2(pretrained, tmp_path):
    corpus, pre = pretrained
    base = ["train", str(corpus), *ARGS]
    one_line_error(runner.invoke(app, [*base, "--out", str(tmp_path / "a"), "--init", str(tmp_path / "none.pt")]),
                   "--init", "not found")
    one_line_error(runner.invoke(app, [*base, "--out", str(tmp_path / "b"), "--init", str(tmp_path)]),
                   "--init", "run.json")
    other = tmp_path / "other.pt"
    import open_clip
    from poisonclip.train.models import register_models

    register_models()
    torch.save({"state_dict": open_clip.create_model("poisonclip-tiny-rn").state_dict()}, other)
    one_line_error(runner.invoke(app, [*base, "--out", str(tmp_path / "c"), "--init", str(other)]),
                   str(other), "does not fit model 'poisonclip-test'")
    # a run folder of another model names the model to use
    r = runner.invoke(app, ["train", str(corpus), "--out", str(tmp_path / "d"), *ARGS[2:], "--model",
                            "poisonclip-tiny-rn", "--init", str(pre)])
    one_line_error(r, "--init", "trained model 'poisonclip-test'")
    assert not any((tmp_path / n).exists() for n in "abcd")
