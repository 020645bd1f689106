"""A one-trial sweep of CI size, for tests that follow a setting through every stage."""

from __future__ import annotations

from pathlib import Path


def run_tiny_sweep(tmp_path, name: str, poison: dict) -> Path:
    """One trial of the CI-sized sweep (300 synthetic pairs, the test model, 1 epoch) with the
    given poison section, run through the real CLI; returns the sweep folder. Its numbers
    mean nothing; tests use it to follow settings through every stage."""
    import yaml
    from typer.testing import CliRunner

    from poisonclip.cli import app

    spec = tmp_path / f"{name}.yaml"
    spec.write_text(yaml.safe_dump({
        "name": name,
        "corpus": {"n_train": 300, "n_test": 100, "n_probe": 0, "resolution": 32, "seed": 0},
        "poison": poison,
        "train": {"model": "poisonclip-test", "epochs": 1, "batch_size": 50, "warmup": 2, "gpus": 0},
        "eval": {"templates": "simple", "probe": False},
        "grid": {"seed": [0]},
    }))
    out = tmp_path / "sweep"
    r = CliRunner().invoke(app, ["sweep", "run", str(spec), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "1 trials run" in r.output and "0 failed" in r.output
    return out
