"""The CI sweep (configs/sweep-ci.yaml) end to end on the real stages: synthetic corpus ->
backdoor poisons -> open_clip training -> evaluation -> table and report.

2 poison counts x 2 seeds with the test model: four poisoned models and two clean baselines
(one per seed, shared by both poison counts). The numbers of a one-epoch model mean nothing;
the test checks that every stage ran, was shared as designed, and reached the table and page.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from poisonclip.cli import app

SPEC = Path(__file__).resolve().parents[2] / "configs" / "sweep-ci.yaml"
runner = CliRunner()


@pytest.mark.e2e
def test_ci_sweep_runs_locally_and_produces_table_and_report(tmp_path):
    out = tmp_path / "sweep"
    r = runner.invoke(app, ["sweep", "run", str(SPEC), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "4 trials run" in r.output and "0 failed" in r.output

    cache = out / "cache"
    assert [len(list((cache / k).glob("*.json"))) for k in ("corpus", "poison", "model")] == [1, 4, 6]
    run = json.loads(next((cache / "model").glob("*/run.json")).read_text())
    assert run["model"] == "poisonclip-test" and Path(run["checkpoint"]).is_file()

    csv = tmp_path / "table.csv"
    r = runner.invoke(app, ["sweep", "table", str(out), "--csv", str(csv)])
    assert r.exit_code == 0, r.output
    df = pd.read_csv(csv)
    assert sorted(df["trial"]) == ["n_poisons=10__seed=0", "n_poisons=10__seed=1",
                                   "n_poisons=40__seed=0", "n_poisons=40__seed=1"]
    for col in ("poisoned.top1_zeroshot", "poisoned.asr_as_trained_zeroshot", "clean.top1_zeroshot",
                "clean.asr_as_trained_zeroshot"):
        assert df[col].between(0, 1).all(), col
    assert df["poisoned.asr_as_trained_zeroshot_n"].gt(0).all()
    assert df["poisoned.z_as_trained"].notna().all() and df["poisoned.z_random"].notna().all()
    assert (df["data.n_poisons"] == df["poison.n_poisons"]).all()
    # clean baselines are shared: both poison counts of a seed compare with the same clean model
    for _, sub in df.groupby("seed"):
        assert sub["clean.top1_zeroshot"].nunique() == 1

    r = runner.invoke(app, ["sweep", "status", str(out)])
    assert re.search(r"│ done\s+│ 4", r.output), r.output
    page = (out / "report" / "report.html").read_text()
    figures = {p.stem for p in (out / "report" / "figures").glob("*.png")}
    assert {"fig2_success_vs_poisons", "fig3_similarity", "fig4_zscore_vs_poisons", "clean_accuracy"} <= figures
    assert page.count("data:image/png;base64,") == len(figures)
    assert "4 of 4 trials finished" in page
