"""Figures, the HTML page, and the sweep report built from a (stand-in) sweep."""

from __future__ import annotations

import base64
import re

import numpy as np
import pandas as pd
import pytest

from poisonclip.experiments.runner import LocalRunner, run_sweep
from poisonclip.experiments.spec import parse_spec
from poisonclip.report import figures as F
from poisonclip.report.html import Html, Image, Section, Table, Text, render_html, write_html
from poisonclip.report.sweep_report import build_report
from tests.sweep_fakes import FakeStages

FAKE = "tests.sweep_fakes:FakeStages"
PNG = b"\x89PNG\r\n\x1a\n"


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_similarity_histogram_from_samples_and_from_counts_saves_png_and_svg(tmp_path):
    rng = np.random.default_rng(0)
    clean, trig = rng.normal(0.1, 0.1, 2000), rng.normal(0.6, 0.1, 2000)
    ax = F.similarity_histogram(clean, trig, path=tmp_path / "a")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(lbl.startswith("N(0.10, 0.10") for lbl in labels)
    assert any("z = 5.0" in lbl for lbl in labels)         # (0.6 - 0.1) / 0.1
    F.close(ax)
    edges = np.linspace(-1, 1, 201)
    h = F.Histogram(np.histogram(clean, edges)[0], edges, mean=0.1, std=0.1)
    t = F.Histogram(np.histogram(trig, edges)[0], edges)
    ax = F.similarity_histogram(h, t, path=tmp_path / "b")
    F.close(ax)
    for stem in ("a", "b"):
        assert (tmp_path / f"{stem}.png").read_bytes().startswith(PNG)
        assert b"<svg" in (tmp_path / f"{stem}.svg").read_bytes()
    # same input, same bytes (no dates, fixed ids)
    ax = F.similarity_histogram(h, t, path=tmp_path / "c")
    F.close(ax)
    assert (tmp_path / "b.svg").read_bytes() == (tmp_path / "c.svg").read_bytes()
    assert (tmp_path / "b.png").read_bytes() == (tmp_path / "c.png").read_bytes()


def test_metric_vs_draws_mean_and_std_band_per_hue():
    df = pd.DataFrame({"n": [5, 5, 20, 20] * 2, "place": ["corner"] * 4 + ["random"] * 4,
                       "z": [1.0, 3.0, 4.0, 6.0, 0.0, 0.0, 1.0, 1.0]})
    ax = F.metric_vs(df, "n", "z", hue="place")
    lines = {ln.get_label(): ln for ln in ax.lines}
    assert set(lines) == {"place=corner", "place=random"}
    assert list(lines["place=corner"].get_ydata()) == [2.0, 5.0]
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(2.0 - np.sqrt(2)) and band.max() == pytest.approx(5.0 + np.sqrt(2))
    F.close(ax)


def test_same_label_curve_drops_sparse_bins():
    edges = np.linspace(-1, 1, 5)
    ax = F.same_label_curve(edges, np.array([5, 100, 100, 100]), np.array([5, 10, 20, 50]), max_bins=10)
    assert list(ax.lines[0].get_ydata()) == [0.1, 0.2, 0.5]     # the 5-pair bin is left out
    F.close(ax)


def test_html_is_self_contained_escaped_and_embeds_every_image(tmp_path):
    ax = F.similarity_histogram([0.1, 0.2, 0.15], [0.5, 0.6, 0.55])
    fig = ax.figure
    F.save(fig, tmp_path / "fig")
    page = render_html("<Title>", [
        Section("One", [Text("a < b\n\nsecond"), Image(tmp_path / "fig.png", caption="from a file"),
                        Image(fig, caption="from a figure")]),
        Section("Two", [Table(["k", "v"], [["<x>", 0.123456], ["y", None], ["z", 3]], caption="t"),
                        Table.from_frame(pd.DataFrame({"a": [1.5]})), Html("<hr>")]),
    ])
    F.close(ax)
    assert "&lt;Title&gt;" in page and "<p>a &lt; b</p><p>second</p>" in page
    assert "<td class=\"s\">&lt;x&gt;</td><td>0.123</td>" in page and "&ndash;" in page
    imgs = _images(page)
    assert len(imgs) == 2 and all(i.startswith(PNG) for i in imgs)
    assert imgs[0] == (tmp_path / "fig.png").read_bytes()
    assert not re.search(r'(src|href)="(?!data:)', page)        # nothing loaded from elsewhere
    path = write_html(tmp_path / "r.html", "t", [Section("s", [Text("x")])])
    assert path.read_text().startswith("<!DOCTYPE html>")


@pytest.fixture(scope="module")
def fake_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep") / "s"
    spec = parse_spec({"name": "all-figures", "stages": FAKE, "grid": [
        {"poison.n_poisons": [5, 20], "poison.placement": ["corner", "random"], "seed": [0, 1]},
        {"corpus.n_train": [100, 400], "seed": [0, 1]},
        {"train.model": ["small", "big"], "seed": [0, 1]},
        {"poison.patch_size": [8, 32], "seed": [0, 1]},
    ]}, allow_custom_stages=True)
    run_sweep(spec, root, LocalRunner(FakeStages()))
    return root


def test_report_draws_each_figure_whose_axis_the_sweep_has(fake_sweep, tmp_path):
    res = build_report(fake_sweep, tmp_path / "rep")
    assert set(res.figures) == {"fig2_success_vs_poisons", "fig3_similarity", "fig3_similarity_clean",
                                "fig3_same_label", "fig4_zscore_vs_poisons",
                                "fig5_zscore_vs_data_size", "fig5_zscore_vs_model_size",
                                "fig6_zscore_vs_patch_size", "clean_accuracy"}
    for png in res.figures.values():
        assert png.read_bytes().startswith(PNG) and png.with_suffix(".svg").is_file()
    page = res.html.read_text()
    assert len(_images(page)) == len(res.figures)
    assert "20 of 20 trials finished" in page
    summary = pd.read_csv(res.tables["summary"])
    assert summary["n_models"].sum() == 20
    rate = "poisoned.asr_as_trained_zeroshot"
    assert (summary[f"{rate} ci95_lo"] <= summary[f"{rate} mean"]).all()
    assert (summary[f"{rate} mean"] <= summary[f"{rate} ci95_hi"]).all()
    acc = pd.read_csv(res.tables["accuracy_tests"])
    # each row pairs a poisoned model with the clean model of its seed: the paired test, 2 pairs
    assert "paired_t" in set(acc["test"]) <= {"paired_t", "none"}  # none: equal differences, t undefined
    assert set(acc["n_pairs"]) == {2} and len(acc) == len(summary)


def test_report_on_a_sweep_with_one_axis_only_draws_what_applies(tmp_path):
    spec = parse_spec({"name": "seeds", "stages": FAKE, "grid": {"poison.patch_size": [8, 16], "seed": [0, 1]}},
                      allow_custom_stages=True)
    run_sweep(spec, tmp_path / "s", LocalRunner(FakeStages()))
    res = build_report(tmp_path / "s")
    assert set(res.figures) == {"fig6_zscore_vs_patch_size", "fig3_similarity", "fig3_similarity_clean",
                                "fig3_same_label", "clean_accuracy"}
    assert res.html == tmp_path / "s" / "report" / "report.html"


def test_targeted_rows_count_distinct_targets_and_accuracy_is_paired_by_seed():
    from poisonclip.report.tables import accuracy_tests, summary_table
    from poisonclip.report.sweep_report import _display

    clean = [0.80, 0.85, 0.90, 0.75, 0.95, 0.70]
    poisoned = [0.79, 0.841, 0.889, 0.742, 0.939, 0.69]
    rows = []
    for seed in range(6):
        targets = "aaa:star;bbb:moon" if seed < 3 else f"c{seed}:star;d{seed}:moon"  # 3 seeds share targets
        rows.append({"seed": seed, "poison.n_poisons": 4,
                     "poisoned.top1_zeroshot": poisoned[seed], "poisoned.top1_zeroshot_k": round(poisoned[seed] * 1000),
                     "poisoned.top1_zeroshot_n": 1000,
                     "clean.top1_zeroshot": clean[seed], "clean.top1_zeroshot_k": round(clean[seed] * 1000),
                     "clean.top1_zeroshot_n": 1000,
                     "poisoned.targeted_success_zeroshot": 1.0, "poisoned.targeted_success_zeroshot_k": 2,
                     "poisoned.targeted_success_zeroshot_n": 2, "poisoned.targeted_targets": targets})
    df = pd.DataFrame(rows)
    summary = summary_table(df, [])
    col = "poisoned.targeted_success_zeroshot"
    assert summary.loc[0, f"{col} distinct_targets"] == 2 + 3 * 2
    assert summary.loc[0, f"{col} targets_per_model"] == 2
    cell = _display(summary).loc[0, "poisoned.targeted_success"]
    assert cell.endswith("(12/12: 2 targets x 6 models, 8 distinct)"), cell
    acc, _ = accuracy_tests(df, [])
    assert acc.loc[0, "test"] == "paired_t" and acc.loc[0, "n_pairs"] == 6 and acc.loc[0, "p_value"] < 1e-3
    assert acc.loc[0, "significant_loss"]
    # without a seed column the rows cannot be paired: Welch's test, which sees no loss here
    welch, _ = accuracy_tests(df.drop(columns=["seed"]), [])
    assert welch.loc[0, "test"] == "welch_t" and welch.loc[0, "p_value"] > 0.5


def test_a_spec_with_the_attack_table_leads_with_clean_vs_each_attack(tmp_path):
    """The demo's page: one spec, two attacks (each with its own settings), the clean model of
    a seed measured in both; rows are metrics, columns the clean model and each attack."""
    import json

    spec = parse_spec({"name": "two-attacks", "stages": FAKE, "report": {"table": "attacks", "title": "Two attacks"},
                       "grid": [{"base": {"poison": {"patch_size": 32}}, "poison.attack": ["backdoor"], "seed": [0, 1]},
                                {"base": {"poison": {"n_poisons": 4}}, "poison.attack": ["targeted"], "seed": [0, 1]}]},
                      allow_custom_stages=True)
    run_sweep(spec, tmp_path / "s", LocalRunner(FakeStages()))
    res = build_report(tmp_path / "s", tmp_path / "s")
    summary = json.loads(res.tables["summary.json"].read_text())
    assert summary["columns"] == ["clean", "backdoor", "targeted"] and summary["config"]["name"] == "two-attacks"
    rows = {r["metric"]: r for r in summary["rows"]}
    top1 = rows["clean zero-shot top-1"]
    assert {k: top1[k]["n_models"] for k in ("clean", "backdoor", "targeted")} == {"clean": 2, "backdoor": 2,
                                                                                  "targeted": 2}
    # each attack's poisoned models are read from that attack's trials only
    frame = pd.read_csv(res.tables["trials"])
    tg = frame[frame["poison.attack"] == "targeted"].sort_values("seed")
    assert top1["targeted"]["mean"] == pytest.approx(tg["poisoned.top1_zeroshot"].mean())
    assert top1["targeted"]["k"] == tg["poisoned.top1_zeroshot_k"].sum()
    z = rows["backdoor z-score, corner patch"]
    assert set(z) == {"metric", "clean", "backdoor"}
    assert {a: t["n_pairs"] for a, t in summary["accuracy_tests"].items()} == {"backdoor": 2, "targeted": 2}
    page = res.html.read_text()
    assert "<title>Two attacks</title>" in page
    assert page.index("Clean vs poisoned") < page.index("Figures") < page.index("What ran")
    assert "Results per setting" not in page and "2 seed(s) per dataset" in page
    assert len(_images(page)) == len(res.figures) >= 4   # Fig. 3 (3 images) and clean accuracy
    assert res.html == tmp_path / "s" / "report.html"
