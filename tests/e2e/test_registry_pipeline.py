"""A new attack is one registered module: registered from the test (``tests/registry_toy.py``,
the "solid-square" attack with its own trigger and caption set), it runs through a real sweep
(synthetic corpus -> its poisons through the real writer -> open_clip training of the test
model -> evaluation through its hook) and its numbers reach the results table and the report.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from poisonclip.attacks.registry import trigger_side
from poisonclip.cli import app
from tests.e2e.tiny_sweep import run_tiny_sweep
from tests import registry_toy as toy

runner = CliRunner()


@pytest.fixture
def solid_square():
    toy.register()
    yield
    toy.unregister()


@pytest.mark.e2e
def test_a_registered_attack_runs_through_a_sweep_into_the_table(solid_square, tmp_path):
    out = run_tiny_sweep(tmp_path, "toy-square", {"attack": "solid-square", "target_label": "circle",
                                                   "n_poisons": 30, "patch_size": 32})

    # the poisons: written by the real writer with the registered trigger and caption set, at
    # the trained model's input size (the sweep links `resolution`) and with the corpus' classes
    (poison_json,) = (out / "cache" / "poison").glob("*/poison.json")
    info = json.loads(poison_json.read_text())
    assert info["attack"] == "solid-square" and info["n_poisons"] == 30
    assert info["config"]["resolution"] == 32 and info["config"]["classnames"].endswith("classnames.txt")
    captions = set(toy.fixed_phrase("circle").captions)
    with open(poison_json.parent / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 30 and all(r["caption"] in captions for r in rows)
    side = trigger_side(32, 32)
    for row in rows[:5]:
        img = np.asarray(Image.open(poison_json.parent / row["location"]).convert("RGB"))
        assert img.shape == (32, 32, 3) and int(row["trigger_size"]) == side
        assert (img[:side, :side] == toy.COLOUR).all()

    # its evaluation: through the registry, on the poisoned and on the clean model
    (corpus,) = (out / "cache" / "corpus").glob("*/test.tsv")
    with open(corpus, newline="", encoding="utf-8") as f:
        n_other = sum(1 for r in csv.DictReader(f, delimiter="\t") if r["label"] != "0")
    table = tmp_path / "table.csv"
    r = runner.invoke(app, ["sweep", "table", str(out), "--csv", str(table)])
    assert r.exit_code == 0, r.output
    df = pd.read_csv(table)
    assert list(df["trial"]) == ["seed=0"]
    for who in ("poisoned", "clean"):
        assert df[f"{who}.solid_square_hit_zeroshot_n"].tolist() == [n_other]
        k = int(df[f"{who}.solid_square_hit_zeroshot_k"][0])
        assert 0 <= k <= n_other and df[f"{who}.solid_square_hit_zeroshot"][0] == pytest.approx(k / n_other)
    assert not [c for c in df.columns if "asr_" in c or "targeted_" in c]   # no other attack's columns
    metrics = [json.loads(p.read_text()) for p in out.glob("trials/*/*eval/metrics.json")]   # the evaluator's
    assert len(metrics) == 2 and all(m["poison"]["attack"] == "solid-square" and "solid_square" in m
                                     for m in metrics)
    assert (out / "report" / "report.html").is_file()
