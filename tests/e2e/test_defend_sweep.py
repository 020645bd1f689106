"""Attacks x defenses through the sweep engine at CI size: one backdoor, each defense of
`poisonclip defend` as a value of ``train.defense``, run by `poisonclip sweep run` and
tabulated by `poisonclip report`. The numbers mean nothing (one epoch); the test follows
each defense through the engine's stages and into the table."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from poisonclip import contracts as C
from poisonclip.cli import app

pytestmark = pytest.mark.e2e

POISON = {"target_label": "star", "n_poisons": 15, "patch_size": 64, "placement": "corner"}
SETTINGS = {"none": None, "filter": {"method": "shared-patch", "drop_fraction": 0.05},
            "roclip": {"pool_size": 100}, "cleanclip": {"subset": 100, "epochs": 1, "batch_size": 50, "warmup": 1}}


def test_a_sweep_trains_and_tabulates_every_defense(tmp_path):
    grid = []
    for name, settings in SETTINGS.items():
        sub = {"poison.attack": ["backdoor"], "train.defense": [name], "seed": [0]}
        if settings:
            sub["base"] = {"train": {"defense_settings": settings}}
        grid.append(sub)
    spec = tmp_path / "defenses.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "defenses-ci", "baseline": False,
        "corpus": {"n_train": 300, "n_test": 100, "n_probe": 0, "resolution": 32, "seed": 0},
        "poison": POISON,
        "train": {"model": "poisonclip-test", "epochs": 2, "batch_size": 50, "warmup": 2, "gpus": 0, "threads": 1},
        "eval": {"templates": "simple", "probe": False},
        "grid": grid}))
    out = tmp_path / "sweep"
    cli = CliRunner()
    r = cli.invoke(app, ["sweep", "run", str(spec), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "4 trials run" in r.output and "0 failed" in r.output
    rows = {}
    for name in SETTINGS:
        res = C.read_trial_result(out / "trials" / f"attack=backdoor__seed=0__defense={name}")
        rows[name] = res.metrics
        assert 0 <= res.metrics["poisoned"]["asr_as_trained_zeroshot"] <= 1
    assert "defense" not in rows["none"]["model"] and rows["none"]["model"]["n_params"] > 0
    f = rows["filter"]["model"]
    assert f["defense"] == "filter" and f["n_poisons"] == 15 and f["poisons_removed"] == 15
    assert rows["roclip"]["model"]["defense"] == "roclip" and rows["roclip"]["model"]["matching_epochs"] == 1
    assert rows["cleanclip"]["model"]["defense"] == "cleanclip" and rows["cleanclip"]["model"]["clean_pairs"] == 100
    # every defended model is a different model: the evaluations measured four checkpoints
    shas = {C.read_metrics(out / "trials" / f"attack=backdoor__seed=0__defense={n}" / "eval")
            .model.checkpoint_sha256 for n in SETTINGS}
    assert len(shas) == 4
    r = cli.invoke(app, ["report", str(out)])
    assert r.exit_code == 0, r.output
    table = pd.read_csv(out / "report" / "summary.csv")
    assert sorted(table["train.defense"]) == sorted(SETTINGS)
    by = table.set_index("train.defense")
    assert by.loc["filter", "model.poisons_removed mean"] == 15
    assert pd.isna(by.loc["none", "model.poisons_removed mean"])
