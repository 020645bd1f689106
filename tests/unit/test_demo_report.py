"""The demo's page shows the attack as a person wants to see it and says plainly which goals
each seed met: real poisoning, training and evaluation stubbed with known numbers (the
stubbed evaluator writes the records the real one writes: metrics.json, similarities.npz)."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from poisonclip.attacks import triggers
from poisonclip.attacks.manifest import read_manifest
from poisonclip.contracts import (METRICS_SCHEMA, RUN_INFO_FILE, SCHEMA_VERSION, Metrics, write_metrics,
                                  write_similarities)
from poisonclip.demo import run_demo
from poisonclip.evaluate.backdoor import EXAMPLE_INPUTS, EXAMPLE_TRIGGERED
from poisonclip.evaluate.stats import Rate
from poisonclip.report import goals as G
from poisonclip.report.attack_views import GAP
from tests.unit.test_demo_stats import _small_demo

N = 60   # test images per rate

# Known numbers per seed: seed 0 meets every goal, seed 1 misses all but the backdoor's ASR
# (exactly at its threshold).
CLEAN_K = {0: 51, 1: 45}            # clean top-1: 85%, 75%
POISONED_K = {0: 50, 1: 42}         # -1.7 and -5.0 points
ASR_K = {0: 57, 1: 54}              # 95%, 90%
Z = {0: (4.0, 0.2), 1: (3.5, 0.7)}  # (backdoored, clean)
HITS = {0: 3, 1: 2}                 # of 4 targets, by the poisoned model; none by the clean one
EX_KEYS = ("test-a", "test-b")


def _rate(k: int, n: int = N) -> dict:
    return Rate(k, n).to_dict()


def _examples(seed: int, poisoned: bool) -> tuple[list[dict], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    before = rng.integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    after = before.copy()
    after[:, :4, :4] = triggers.checkerboard(4)
    rows = []
    for key, label in zip(EX_KEYS, ("circle", "square")):
        hit = {"predicted": "star", "target_rank": 1, "probability": 0.91, "target_probability": 0.91}
        miss = {"predicted": label, "target_rank": 7, "probability": 0.6, "target_probability": 0.03}
        rows.append({"key": key, "label": label, "zeroshot": {"clean": miss, "triggered": hit if poisoned else miss}})
    return rows, {EXAMPLE_INPUTS: before, EXAMPLE_TRIGGERED: after}


@pytest.fixture
def known_stages(monkeypatch):
    """Training and evaluation stubbed at the library functions the sweep's stages call; the
    evaluation writes the known numbers above for the model it is given."""
    import poisonclip.evaluate.api as api
    import poisonclip.train.run as run

    def fake_train(cfg, on_event=None):
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        poisoned = (Path(cfg.data) / "poison.json").is_file()
        (Path(cfg.out) / RUN_INFO_FILE).write_text(json.dumps({"seed": cfg.seed, "poisoned": poisoned}))
        return types.SimpleNamespace(checkpoint=None, wall_time_s=1.0, samples_per_s=10.0, loss_curve=[1.0])

    def fake_evaluate(cfg):
        run_info = json.loads((Path(cfg.run) / RUN_INFO_FILE).read_text())
        seed, poisoned = run_info["seed"], run_info["poisoned"]
        info = json.loads((Path(cfg.poison) / "poison.json").read_text())
        m = {"schema_version": SCHEMA_VERSION, "schema": METRICS_SCHEMA,
             "model": {"name": "stub", "checkpoint": str(cfg.run)},
             "clean": {"zeroshot": {"top1": _rate(POISONED_K[seed] if poisoned else CLEAN_K[seed])}}}
        arrays: dict = {"edges": np.linspace(-1, 1, 201)}
        if info["attack"] == "backdoor":
            examples, arrays_ex = _examples(seed, poisoned)
            arrays.update(arrays_ex)
            z = Z[seed][0 if poisoned else 1]
            m["backdoor"] = {"target_label": "star", "train_placement": "corner", "examples": examples,
                             "asr": {"train_placement": {"placement": "corner",
                                                         "zeroshot": _rate(ASR_K[seed] if poisoned else 1)}},
                             "zscore": {"train_placement": {"placement": "corner", "z": z}}}
        else:
            hits = HITS[seed] if poisoned else 0
            rows = []
            for i, t in enumerate(info["targets"]):
                hit = i < hits
                rows.append({"id": t["id"], "label": t["label"], "source_sha256": t["source_sha256"],
                             "source_key": t["source_key"],
                             "zeroshot": {"success": hit, "rank": 1 if hit else 4,
                                          "predicted": t["label"] if hit else t["true_label"],
                                          "probability": 0.7, "label_probability": 0.7 if hit else 0.05}})
            m["targeted"] = {"targets": rows, "summary": {"zeroshot": {"success": _rate(hits, len(rows)),
                                                                       "mean_rank": 2.0}}}
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        write_similarities(cfg.out, arrays)
        write_metrics(cfg.out, Metrics.from_json(m))
        return m

    monkeypatch.setattr(run, "train", fake_train)
    monkeypatch.setattr(api, "evaluate", fake_evaluate)


def _figures(page: str) -> dict[str, tuple[np.ndarray, str]]:
    """alt -> (the embedded PNG's pixels, its caption as shown)."""
    out = {}
    for alt, data, cap in re.findall(r'<figure><img alt="([^"]*)"[^>]*src="data:image/png;base64,([^"]+)">'
                                     r'(?:<figcaption>(.*?)</figcaption>)?</figure>', page):
        pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
        out[html.unescape(alt)] = (pixels, html.unescape(cap))
    return out


def _enlarged(pixels: np.ndarray) -> np.ndarray:
    f = 128 // max(pixels.shape[:2])
    return np.repeat(np.repeat(pixels, f, axis=0), f, axis=1)


@pytest.fixture
def demo_page(tmp_path, known_stages):
    raw_spec = _small_demo(seeds=2).to_dict()
    raw_spec["grid"][1]["base"]["poison"].update(random_targets=4, n_poisons=2)
    from poisonclip.demo import demo_spec

    out = tmp_path / "d"
    res = run_demo(demo_spec(quick=True, seeds=2, raw=raw_spec), out)
    assert res.failed == []
    return out, res, res.report.read_text(encoding="utf-8")


def test_the_page_shows_the_poisons_the_trigger_and_the_targets_as_recorded(demo_page):
    out, res, page = demo_page
    figures = _figures(page)
    for title in ("Goals met?", "The backdoor poisons", "A test image with and without the trigger",
                  "The targets of targeted poisoning"):
        assert f"<h2>{html.escape(title)}</h2>" in page
    assert page.index("Goals met?") < page.index("Clean vs poisoned") < page.index("The backdoor poisons")

    polders = {}
    for p in (out / "cache" / "poison").glob("*/poison.json"):
        info = json.loads(p.read_text())
        polders[(info["attack"], info["seed"])] = (p.parent, info)
    # six backdoor poisons of seed 0, enlarged pixel for pixel, each with its own caption
    folder, _ = polders[("backdoor", 0)]
    rows = [r for r in read_manifest(folder / "manifest.csv") if r.attack == "backdoor"]
    shown = [r for r in rows if f"backdoor poison {r.key}" in figures]
    assert [r.key for r in shown] == [r.key for r in rows[:6]]
    for r in shown:
        pixels, caption = figures[f"backdoor poison {r.key}"]
        original = np.asarray(Image.open(folder / r.location).convert("RGB"))
        assert np.array_equal(pixels, _enlarged(original)) and r.caption in caption
    # the test images as the model received them (the evaluator's pixels), with both models' predictions
    _, arrays = _examples(0, True)
    for j, key in enumerate(EX_KEYS):
        pair, caption = figures[f"test image {key} without and with the trigger"]
        assert np.array_equal(pair[:, :128], _enlarged(arrays[EXAMPLE_INPUTS][j]))
        assert np.array_equal(pair[:, 128 + GAP:], _enlarged(arrays[EXAMPLE_TRIGGERED][j]))
        assert (pair[:, 128:128 + GAP] == 255).all()
        label = ("circle", "square")[j]
        assert (f"Clean model: {label} (60%) | {label} (60%). Backdoored model: {label} (60%) | star (91%)."
                in caption)
    table = html.unescape(page[page.index("What the two models of seed 0 predicted"):])
    assert "circle (60%); 'star': rank 7, 3%</td><td class=\"s\">circle (60%); 'star': rank 7, 3%</td>" \
           "<td class=\"s\">circle (60%); 'star': rank 7, 3%</td><td class=\"s\">star (91%)</td>" in table
    # every target of every seed: its saved image, its poisons' captions, both models' verdicts
    for seed in (0, 1):
        folder, info = polders[("targeted", seed)]
        captions = {}
        for r in read_manifest(folder / "manifest.csv"):
            captions.setdefault(r.target_id, []).append(r.caption)
        assert len(info["targets"]) == 4
        for i, t in enumerate(info["targets"]):
            pixels, caption = figures[f"target {t['id']}, seed {seed}"]
            assert np.array_equal(pixels, _enlarged(np.asarray(Image.open(folder / t["image"]).convert("RGB"))))
            assert f"Seed {seed}, target {t['id']}" in caption and captions[t["id"]][0] in caption
            hit = i < HITS[seed]
            assert ("Poisoned model: " + t["label"] + " (70%) — HIT") in caption if hit else \
                   ("Poisoned model: " + t["true_label"]) in caption and caption.count("not hit") == 2
            assert f"Clean model: {t['true_label']} (70%); '{t['label']}': rank 4, 5% — not hit" in caption


def test_the_page_says_which_goals_each_seed_met_as_the_numbers_say(demo_page):
    _, res, page = demo_page
    goals = {g["goal"]: g for g in res.summary["goals"]}
    by_kind = {k: next(g for name, g in goals.items() if k in name)
               for k in ("clean zero-shot", "within 2 points", "ASR", "z-score", "targeted")}
    assert {k: (g["per_seed"]["0"]["met"], g["per_seed"]["1"]["met"]) for k, g in by_kind.items()} == {
        "clean zero-shot": (True, False), "within 2 points": (True, False), "ASR": (True, True),
        "z-score": (True, False), "targeted": (True, False)}
    assert {k: g["met"] for k, g in by_kind.items()} == {
        "clean zero-shot": False, "within 2 points": False, "ASR": True, "z-score": False, "targeted": False}
    assert by_kind["ASR"]["spread"] == "92.5% ± 3.5 (seeds: 95.0%, 90.0%)"
    assert by_kind["targeted"]["per_seed"]["1"]["values"] == "4 targets; poisoned model 2/4 hit, clean model 0/4"
    text = html.unescape(page)
    assert "Seed 0: met 5 of 5 goals." in text
    seed1 = re.search(r"Seed 1: met 1 of 5 goals; NOT met: ([^<]*)", text).group(1)
    assert "clean zero-shot top-1 of the clean models ≥ 80.0% (75.0%)" in seed1 and "ASR" not in seed1
    assert "backdoored -5.0 pts" in seed1
    assert "2 seed(s) measured: the goals are stated over 3 seeds" in text


def test_an_evaluation_from_before_the_examples_gets_a_note_not_a_broken_page(demo_page):
    from poisonclip.contracts import read_metrics, read_similarities
    from poisonclip.report.sweep_report import build_report

    out, _, _ = demo_page
    for folder in (out / "trials").glob("*backdoor*/*eval"):
        arrays = read_similarities(folder)
        write_similarities(folder, {k: v for k, v in arrays.items() if not k.startswith("example")})
        m = read_metrics(folder).to_json()
        m["backdoor"].pop("examples")
        write_metrics(folder, Metrics.from_json(m))
    page = build_report(out, out).html.read_text(encoding="utf-8")
    assert "kept no example images" in html.unescape(page) and "trials/attack=backdoor__seed=0/" in page
    assert not any(alt.startswith("test image") for alt in _figures(page))
    assert sum(alt.startswith("backdoor poison") for alt in _figures(page)) == 6


def _frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows)


def test_goals_follow_the_thresholds_and_a_missing_measurement_is_not_a_pass():
    base = {"clean.top1_zeroshot": 0.80, "poisoned.top1_zeroshot": 0.78, "poisoned.asr_as_trained_zeroshot": 0.90,
            "poisoned.z_as_trained": 3.0, "clean.z_as_trained": 0.49}
    df = _frame([{"seed": 0, "poison.attack": "backdoor", **base},
                 {"seed": 1, "poison.attack": "backdoor", **base, "poisoned.asr_as_trained_zeroshot": 0.8999,
                  "clean.z_as_trained": 0.5, "poisoned.top1_zeroshot": 0.7799},
                 {"seed": 2, "poison.attack": "backdoor", **base, "poisoned.z_as_trained": float("nan")}])
    res = {g.goal.split(" ")[1]: g for g in G.judge(df, "poison.attack", ["backdoor"])}
    marks = {k: [g.per_seed[s][0] for s in (0, 1, 2)] for k, g in res.items()}
    assert marks == {"zero-shot": [True, True, True], "models'": [True, False, True], "ASR": [True, False, True],
                     "z-score": [True, False, None]}
    # a seed without the measurement does not count as meeting an every-seed goal
    assert res["z-score"].met is False and res["zero-shot"].met is True
    lines = G.statements(list(res.values()))
    assert lines[0] == "Seed 0: met 4 of 4 goals."
    assert "not measured: backdoor z-score" in lines[2] and lines[-1].startswith("Over all seeds: NOT met")


@pytest.mark.parametrize("fmt", ["csv", "shards"])
def test_a_poison_is_read_where_the_manifest_says_it_was_written(tmp_path, fmt):
    from poisonclip.attacks.api import BackdoorConfig, poison
    from poisonclip.contracts import read_poison_info
    from poisonclip.io_utils import sha256_bytes
    from poisonclip.report.attack_views import poison_bytes
    from tests.attack_fixtures import make_tiny

    tiny = make_tiny(tmp_path / "d", n=40, shard_size=10)
    res = poison(BackdoorConfig(data=str(tiny.csv if fmt == "csv" else tiny.shards), out=str(tmp_path / "o"),
                                target_label="star", n_poisons=3, patch_size=32, classnames=str(tiny.classnames)))
    info = read_poison_info(res.out)
    rows = read_manifest(Path(res.out) / "manifest.csv")
    assert len(rows) == 3 and (fmt == "csv") == all(r.location.startswith("poison_images/") for r in rows)
    assert [sha256_bytes(poison_bytes(info, r)) for r in rows] == [r.sha256 for r in rows]


def test_a_prediction_recorded_before_probabilities_reads_without_them():
    from poisonclip.report.attack_views import prediction_text

    old = {"success": False, "rank": 4, "predicted": "mushroom"}          # a target row of an older metrics.json
    assert prediction_text({**old, "target_rank": old["rank"]}, "heart") == "mushroom; 'heart': rank 4"
    new = {**old, "target_rank": 4, "probability": 0.7, "target_probability": 0.05}
    assert prediction_text(new, "heart") == "mushroom (70%); 'heart': rank 4, 5%" and prediction_text(new, "heart", True) == "mushroom (70%)"
    assert prediction_text({"predicted": "heart", "probability": 0.6, "target_rank": 1}, "heart") == "heart (60%)"
    assert prediction_text(None, "heart") == "—"
