"""A new trigger through a real sweep: the blended trigger (Chen et al. 2017) with its own
parameters, synthetic corpus -> poisons through the writer -> open_clip training of the test
model (300 images, 1 epoch) -> evaluation with the same registered function -> table and
report. The numbers of a one-epoch model mean nothing; the test checks that the trigger's
parameters travel to poison.json, the manifest and the results table, and that the poisons
carry exactly the blend.
"""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from poisonclip.attacks import triggers
from poisonclip.cli import app
from tests.e2e.tiny_sweep import run_tiny_sweep
from poisonclip.data.lookup import find_sample

runner = CliRunner()


@pytest.mark.e2e
def test_the_blended_trigger_runs_through_a_sweep_with_its_parameters(tmp_path):
    out = run_tiny_sweep(tmp_path, "blended-ci", {"attack": "backdoor", "target_label": "circle", "n_poisons": 30,
                                                  "trigger": "blended", "blend_alpha": 0.3, "trigger_seed": 5})

    (poison_json,) = (out / "cache" / "poison").glob("*/poison.json")
    bd = json.loads(poison_json.read_text())["backdoor"]
    assert (bd["trigger"], bd["blend_alpha"], bd["trigger_seed"]) == ("blended", 0.3, 5)
    assert bd["placement"] == "whole-image" and bd["patch_size"] is None and bd["resolution"] == 32
    with open(poison_json.parent / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 30 and {r["trigger"] for r in rows} == {"blended"}
    assert {r["trigger_params"] for r in rows} == {json.dumps({"blend_alpha": 0.3, "trigger_seed": 5}, sort_keys=True)}
    # each poison is its clean source blended with the seed's pattern, pixel for pixel
    (train_tsv,) = (out / "cache" / "corpus").glob("*/train.tsv")
    pattern = triggers.blended_pattern(32, 32, 5).astype(np.float64)
    for row in rows[:5]:
        src = find_sample(train_tsv, row["source_key"])
        source = Image.open(io.BytesIO(src.image)).convert("RGB")
        # training images are not square: the poison is its source in the model's input geometry
        clean = np.asarray(triggers.to_input_geometry(source, 32), dtype=np.float64)
        assert clean.shape == (32, 32, 3)
        want = np.clip(np.rint(0.7 * clean + 0.3 * pattern), 0, 255).astype(np.uint8)
        got = np.asarray(Image.open(poison_json.parent / row["location"]).convert("RGB"))
        assert np.array_equal(got, want), row["key"]

    table = tmp_path / "table.csv"
    r = runner.invoke(app, ["sweep", "table", str(out), "--csv", str(table)])
    assert r.exit_code == 0, r.output
    df = pd.read_csv(table)
    assert list(df["trial"]) == ["seed=0"]
    assert df["data.trigger.name"].tolist() == ["blended"]
    assert df["data.trigger.blend_alpha"].tolist() == [0.3] and df["data.trigger.trigger_seed"].tolist() == [5]
    assert df["data.trigger.placement"].tolist() == ["whole-image"]
    for who in ("poisoned", "clean"):
        assert df[f"{who}.asr_as_trained_zeroshot"].between(0, 1).all()
        assert df[f"{who}.asr_as_trained_zeroshot_n"].gt(0).all()
    assert not [c for c in df.columns if "asr_random" in c or "z_random" in c]   # no placement to vary
    metrics = [json.loads(p.read_text()) for p in out.glob("trials/*/*eval/metrics.json")]
    assert len(metrics) == 2 and all(m["backdoor"]["trigger_params"] == {"blend_alpha": 0.3, "trigger_seed": 5}
                                     for m in metrics)
    assert (out / "report" / "report.html").is_file()
