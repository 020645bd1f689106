"""`poisonclip train` / `poisonclip models`: refusals are one line with exit code 2."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from poisonclip.cli import app
from poisonclip.data.csv_io import write_csv
from tests.conftest import make_samples
from tests.cli_errors import one_line_error

runner = CliRunner()


def test_missing_dataset(tmp_path):
    line = one_line_error(runner.invoke(app, ["train", str(tmp_path / "none"), "--out", str(tmp_path / "r")]))
    assert "no such file" in line
    assert not (tmp_path / "r").exists()


def test_unknown_model_lists_known_ones(tmp_path):
    t = write_csv(make_samples(4), tmp_path / "d")
    line = one_line_error(runner.invoke(app, ["train", str(t), "--out", str(tmp_path / "r"), "--model", "resnet9000"]))
    assert "resnet9000" in line and "poisonclip-tiny-rn" in line and "RN50" in line


def test_gpus_without_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    t = write_csv(make_samples(4), tmp_path / "d")
    line = one_line_error(runner.invoke(app, ["train", str(t), "--out", str(tmp_path / "r"), "--gpus", "2"]))
    assert "--gpus: 2 asked for" in line and "no CUDA GPU" in line and "set --gpus to 0" in line


def test_existing_run_folder_needs_resume_or_overwrite(tmp_path):
    t = write_csv(make_samples(4), tmp_path / "d")
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.json").write_text("{}")
    line = one_line_error(runner.invoke(app, ["train", str(t), "--out", str(tmp_path / "r"), "--batch-size", "2",
                                               "--model", "poisonclip-test"]))
    assert "--resume" in line and "--overwrite" in line


def test_dry_run_prints_the_command_and_trains_nothing(tmp_path):
    t = write_csv(make_samples(8), tmp_path / "d")
    r = runner.invoke(app, ["train", str(t), "--out", str(tmp_path / "r"), "--batch-size", "4", "--cpu-procs", "2",
                            "--model", "poisonclip-test", "--dry-run", "--", "--grad-clip-norm", "1.0"])
    assert r.exit_code == 0, r.output
    assert "torch.distributed.run" in r.output and "poisonclip.train.launch" in r.output
    assert "--batch-size 2" in r.output and "--grad-clip-norm 1.0" in r.output
    assert not (tmp_path / "r").exists()


def test_models_lists_counts():
    r = runner.invoke(app, ["models"])
    assert r.exit_code == 0, r.output
    for name in ("poisonclip-small", "poisonclip-medium", "poisonclip-large", "RN50"):
        assert name in r.output
    assert "102.01" in r.output  # RN50, in millions
