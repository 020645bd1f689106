"""The paper figures' significance tests, the pooled clean-accuracy table, and the presets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from poisonclip.experiments.runner import LocalRunner, run_sweep
from poisonclip.experiments.spec import load_spec, parse_spec
from poisonclip.report import trends as T
from poisonclip.report.pooled import build_pooled
from poisonclip.report.sweep_report import build_report
from tests.sweep_fakes import FakeStages

FAKE = "tests.sweep_fakes:FakeStages"
ROOT = Path(__file__).resolve().parents[2]


def test_trend_finds_a_real_slope_and_its_interval_covers_it_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    x = np.repeat([1, 2, 4, 8, 16], 3)
    rows = [T.trend(x, 0.2 * np.log2(x) + rng.normal(0, 0.05, x.size), figure="f", metric="m", axis="x")
            for _ in range(400)]
    assert all(r["p_value"] < 1e-4 and r["spearman_rho"] > 0.7 and r["n_models"] == 15 for r in rows)
    covered = np.mean([r["ci95_lo"] < 0.2 < r["ci95_hi"] for r in rows])
    assert 0.92 <= covered <= 0.98


def test_trend_on_noise_alone_is_not_significant_and_bounds_the_slope():
    rng = np.random.default_rng(1)
    x = np.repeat([1000, 2000, 4000, 8000], 4)
    y = 2.0 + rng.normal(0, 0.1, x.size)
    r = T.trend(x, y, figure="f", metric="m", axis="x")
    assert r["p_value"] > 0.05 and r["ci95_lo"] < 0 < r["ci95_hi"]
    assert r["ci95_hi"] - r["ci95_lo"] < 0.2          # 16 models pin "flat" down to about +-0.1 per doubling


def test_interaction_detects_a_crossover_and_not_parallel_lines():
    rng = np.random.default_rng(2)
    x = np.tile(np.repeat([20, 80, 320], 3), 2)
    g = np.repeat(["corner", "random"], 9)
    lx = np.log2(x)
    cross = np.where(g == "corner", 2.0 + 0.0 * lx, -3.0 + 1.0 * lx) + rng.normal(0, 0.1, x.size)
    parallel = np.where(g == "corner", 2.0, 1.0) + 0.3 * lx + rng.normal(0, 0.1, x.size)
    r = T.interaction(x, g, cross, figure="f", metric="m", axis="n", levels=("corner", "random"))
    assert r["p_value"] < 1e-6 and r["ci95_lo"] < 1.0 < r["ci95_hi"]
    r = T.interaction(x, g, parallel, figure="f", metric="m", axis="n", levels=("corner", "random"))
    assert r["p_value"] > 0.01 and r["ci95_lo"] < 0 < r["ci95_hi"]


def test_adjacent_compares_each_size_with_the_next():
    x = [8, 8, 8, 16, 16, 16, 32, 32, 32]
    y = [0.0, 0.1, 0.05, 2.0, 2.1, 1.9, 2.0, 2.2, 2.1]
    rows = T.adjacent(x, y, figure="f", metric="z", axis="patch")
    assert [r["axis"] for r in rows] == ["patch: 8 -> 16", "patch: 16 -> 32"]
    assert rows[0]["estimate"] == pytest.approx(1.95) and rows[0]["p_value"] < 0.001
    assert rows[1]["p_value"] > 0.2


def test_mcnemar_on_targets_counts_only_the_discordant_ones():
    all_hit = [(4, True, False)] * 10 + [(1, False, False)] * 10
    rows = {r["axis"]: r for r in T.targets_vs_clean(all_hit, figure="f", metric="m", axis="n")}
    assert rows["n = 4"]["p_value"] == pytest.approx(2 / 2 ** 10)
    assert rows["n = 4"]["estimate"] == 1.0
    assert rows["n = 1"]["p_value"] == 1.0 and rows["n = 1"]["n_targets"] == 10


def test_per_point_compares_the_two_groups_at_each_x():
    rows = T.per_point([1, 1, 1, 1, 2, 2, 2, 2], ["a", "a", "b", "b"] * 2, [0, 0.2, 1, 1.2, 0, 0.1, 0, 0.1],
                       figure="f", metric="m", axis="n", levels=("a", "b"))
    assert [r["axis"] for r in rows] == ["n = 1", "n = 2"]
    assert rows[0]["estimate"] == pytest.approx(1.0) and rows[0]["p_value"] < 0.05
    assert rows[1]["estimate"] == pytest.approx(0.0)


def test_report_writes_the_significance_each_axis_calls_for(tmp_path):
    spec = parse_spec({"name": "fig4ish", "stages": FAKE,
                       "grid": {"poison.n_poisons": [5, 20, 80], "poison.placement": ["corner", "random"],
                                "seed": [0, 1]}}, allow_custom_stages=True)
    run_sweep(spec, tmp_path / "s", LocalRunner(FakeStages()))
    res = build_report(tmp_path / "s")
    sig = pd.read_csv(res.tables["significance"])
    assert set(sig["figure"]) == {"Fig. 4"}
    inter = sig[sig["test"] == "OLS interaction t-test"]
    assert len(inter) == 2 and (inter["n_models"] == 12).all()
    assert (sig["test"] == "Welch t-test").sum() == 6          # 3 counts x 2 metrics
    # the fake's z grows with the poisons: the trend over the 6 corner models is found
    z_corner = sig[sig["metric"] == "poisoned.z_as_trained (placed: corner)"].iloc[0]
    assert z_corner["estimate"] > 0 and z_corner["p_value"] < 0.05
    assert "Significance" in res.html.read_text()


def test_pooled_clean_accuracy_counts_a_shared_model_once_and_tests_over_clean_models(tmp_path):
    cache = tmp_path / "cache"
    for name, counts in (("a", [5, 20]), ("b", [20, 40])):
        spec = parse_spec({"name": name, "stages": FAKE, "grid": {"poison.n_poisons": counts, "seed": [0, 1, 2]}},
                          allow_custom_stages=True)
        run_sweep(spec, tmp_path / name, LocalRunner(FakeStages()), cache=cache)
    res = build_pooled([tmp_path / "a", tmp_path / "b"], tmp_path / "pooled")
    pairs = pd.read_csv(res.tables["pairs"])
    assert len(pairs) == 9                         # 3 counts x 3 seeds; the 20-poison models once
    assert pairs["poisoned_model"].is_unique and pairs["clean_model"].nunique() == 3
    table = pd.read_csv(res.tables["clean_accuracy"]).set_index("group")
    overall = table.loc["all poisoned models"]
    assert overall["n_clean_models"] == 3 and overall["n_poisoned_models"] == 9
    assert overall["diff"] == pytest.approx(pairs.groupby("clean_model")["diff"].mean().mean())
    assert {"sweep: a", "sweep: b", "a: n_poisons=5", "b: n_poisons=40"} <= set(table.index)
    assert table.loc["a: n_poisons=5", "test"] == "paired_t" and table.loc["a: n_poisons=5", "n_clean_models"] == 3
    assert res.figures["clean_accuracy_pairs"].read_bytes().startswith(b"\x89PNG")
    # a rerun replaces its own earlier report; a folder of the user's is refused and left as it was
    again = build_pooled([tmp_path / "a", tmp_path / "b"], tmp_path / "pooled")
    assert pd.read_csv(again.tables["pairs"]).equals(pairs)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "pairs.csv").write_text("my data\n")
    from poisonclip.errors import UserError

    with pytest.raises(UserError, match="not a pooled clean-accuracy report"):
        build_pooled([tmp_path / "a"], mine)
    assert (mine / "pairs.csv").read_text() == "my data\n" and sorted(p.name for p in mine.iterdir()) == ["pairs.csv"]
    with pytest.raises(UserError, match="inside the input"):
        build_pooled([tmp_path / "a"], tmp_path / "a" / "pooled")


def test_report_cli_pool_needs_out_and_one_folder_without_pool(tmp_path):
    from typer.testing import CliRunner

    from poisonclip.cli import app
    from tests.cli_errors import one_line_error

    spec = parse_spec({"name": "a", "stages": FAKE, "grid": {"poison.n_poisons": [5], "seed": [0]}},
                      allow_custom_stages=True)
    run_sweep(spec, tmp_path / "a", LocalRunner(FakeStages()))
    one_line_error(CliRunner().invoke(app, ["report", str(tmp_path / "a"), "--pool"]), "--out")
    one_line_error(CliRunner().invoke(app, ["report", str(tmp_path / "a"), str(tmp_path / "a")]), "--pool")


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "paper").glob("*.yaml")), ids=lambda p: p.stem)
def test_paper_presets_expand_with_the_real_stages(path):
    from poisonclip.experiments.stages import load_stages
    from poisonclip.experiments.trials import expand

    spec = load_spec(path)
    stages = load_stages(spec.stages)
    trials = expand(spec, stages.resolve, getattr(stages, "link", None))
    assert trials and spec.name == path.stem


def test_figure_presets_share_their_clean_models_and_the_demos_backdoor():
    """One --cache trains the clean models once for every preset on the demo's corpus, and the
    corner backdoor at 80 poisons once for Figs. 4, 5 and 6."""
    from poisonclip.experiments.stages import load_stages
    from poisonclip.experiments.trials import expand

    def keys(name):
        spec = load_spec(ROOT / "configs" / "paper" / f"{name}.yaml")
        stages = load_stages(spec.stages)
        trials = expand(spec, stages.resolve, getattr(stages, "link", None))
        return {t.keys.model for t in trials}, {t.keys.clean_model for t in trials}

    models = {n: keys(n) for n in ("fig2-targeted", "fig4-placement", "fig6-patch-size", "fig5-data-size",
                                   "fig5-model-size")}
    assert models["fig2-targeted"][1] == models["fig4-placement"][1] == models["fig6-patch-size"][1]
    assert len(models["fig4-placement"][1] & models["fig5-model-size"][1]) == 2   # its 16-wide model, seeds 0-1
    shared = models["fig4-placement"][0] & models["fig6-patch-size"][0] & models["fig5-data-size"][0] \
        & models["fig5-model-size"][0]
    assert len(shared) == 2                          # corner, 7 px, 80 poisons, 4000 pairs: seeds 0 and 1


def test_model_size_sweep_reports_parameter_counts_and_their_trend(tmp_path):
    spec = parse_spec({"name": "sizes", "stages": FAKE, "grid": {"train.model": ["tiny", "small", "big"],
                                                                  "seed": [0, 1]}}, allow_custom_stages=True)
    run_sweep(spec, tmp_path / "s", LocalRunner(FakeStages()))
    res = build_report(tmp_path / "s")
    summary = pd.read_csv(res.tables["summary"]).set_index("train.model")
    assert summary.loc["big", "model.n_params"] == 30_000_000 and summary.loc["tiny", "model.n_params"] == 1_000_000
    sig = pd.read_csv(res.tables["significance"])
    assert set(sig["figure"]) == {"Fig. 5 right"}
    assert set(sig["axis"]) == {"model.n_params", "model.n_params: 1e+06 -> 5e+06", "model.n_params: 5e+06 -> 3e+07"}
    assert "fig5_zscore_vs_model_size" in res.figures


def test_rate_vs_draws_pooled_rates_with_wilson_intervals():
    from poisonclip.evaluate.stats import wilson_interval
    from poisonclip.report import figures as F

    ax = F.rate_vs([("poisoned", [1, 2], [7, 20], [20, 20]), ("clean", [1, 2], [0, 0], [20, 20])], xlabel="n")
    line = ax.containers[0].lines[0]
    assert list(line.get_ydata()) == [0.35, 1.0]
    segments = ax.containers[0].lines[2][0].get_segments()
    lo, hi = wilson_interval(7, 20)
    assert segments[0][:, 1].tolist() == pytest.approx([lo, hi])
    # the two series sit side by side at each count, not on top of each other
    assert ax.containers[0].lines[0].get_xdata()[0] < 1 < ax.containers[1].lines[0].get_xdata()[0]
    F.close(ax)
