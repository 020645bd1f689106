"""The demo's statistics count independent things: per-seed poisons, distinct targets, the
probe's own training split, paired accuracy tests. Training and evaluation are stubbed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from poisonclip import contracts as C
from poisonclip.data.synthetic import SynthConfig
from poisonclip.demo import DemoConfig, ModelResult, format_cell, run_demo, summarise
from poisonclip.evaluate.stats import Rate


def _rate(k: int, n: int) -> dict:
    return Rate(k, n).to_dict()


def test_each_seed_poisons_anew_and_evaluates_with_its_seed_on_the_probe_split(tmp_path, monkeypatch):
    import poisonclip.evaluate.api as api
    import poisonclip.report.demo_report as report
    import poisonclip.train.run as run

    def fake_train(cfg, on_event=None):
        C.write_run_info(cfg.out, C.RunInfo(model=cfg.model, checkpoint=None, seed=cfg.seed, wall_time_s=1.0))

    evals = []

    def fake_evaluate(cfg):
        evals.append(cfg)
        info = C.read_poison_info(cfg.poison)
        targeted = None
        if info.attack == "targeted":
            targeted = {"targets": [{"id": t.id, "label": t.label, "source_sha256": t.source_sha256}
                                    for t in info.targets],
                        "summary": {"zeroshot": {"success": _rate(1, len(info.targets)), "mean_rank": 1.5}}}
        C.write_metrics(cfg.out, C.Metrics(model=C.ModelIdentity("m", "c.pt"),
                                           clean={"zeroshot": {"top1": _rate(50, 60)}}, targeted=targeted))

    monkeypatch.setattr(run, "train", fake_train)
    monkeypatch.setattr(api, "evaluate", fake_evaluate)
    monkeypatch.setattr(report, "write_demo_report", lambda path, *a: Path(path))
    cfg = DemoConfig.quick(out=tmp_path / "d", corpus=SynthConfig(n_train=200, n_test=60, n_probe=30), seeds=2,
                           epochs=1, backdoor_poisons=6, targets=2, copies_per_target=2)
    res = run_demo(cfg, say=lambda _m: None)

    infos = {p.parent.name.split("-")[0] + str(json.loads(p.read_text())["seed"]): json.loads(p.read_text())
             for p in (tmp_path / "d" / "data").glob("*/poison.json")}
    assert sorted(infos) == ["backdoor0", "backdoor1", "targeted0", "targeted1"]
    src = {k: {r["source_key"] for r in _manifest(tmp_path / "d" / "data", k)} for k in ("backdoor0", "backdoor1")}
    assert src["backdoor0"] != src["backdoor1"]  # new source images per seed
    targets = {k: {(t["source_sha256"], t["label"]) for t in infos[k]["targets"]} for k in ("targeted0", "targeted1")}
    assert targets["targeted0"] != targets["targeted1"]
    assert all(t["source_key"].startswith("synth-test-") for k in targets for t in infos[k]["targets"])
    for e in evals:  # each model is evaluated with its own seed, against its own seed's poisons
        seed = int(Path(e.run).name.split("-seed")[1].split("-")[0])
        assert e.seed == seed and json.loads((Path(e.poison) / "poison.json").read_text())["seed"] == seed
        assert Path(e.probe_train).name == "probe.tsv" and e.data.name == "test.tsv"
    row = next(r for r in res.summary["rows"] if r["metric"].startswith("targets classified") and "zero" in r["metric"])
    assert row["targeted"]["n_models"] == 2 and row["targeted"]["n"] == 4
    assert row["targeted"]["n_distinct_targets"] == len(targets["targeted0"] | targets["targeted1"])
    # a second run reuses every seed's poisons
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "d" / "data").glob("*/poison.json")}
    run_demo(cfg, say=lambda _m: None)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "d" / "data").glob("*/poison.json")} == before


def _manifest(root: Path, key: str) -> list[dict]:
    from poisonclip.attacks.manifest import read_manifest

    kind, seed = key[:-1], int(key[-1])
    folder = next(p.parent for p in root.glob(f"{kind}-*/poison.json")
                  if json.loads(p.read_text())["seed"] == seed)
    return [r if isinstance(r, dict) else r.__dict__ for r in read_manifest(folder / "manifest.csv")]


def _model(kind: str, seed: int, acc: float, targets: list[tuple[str, str]] = (), hits: int = 0) -> ModelResult:
    top1 = {"clean": {"zeroshot": {"top1": _rate(round(acc * 1000), 1000)}}}
    metrics = {}
    if kind in ("clean", "backdoor"):
        metrics["backdoor"] = top1
    if kind in ("clean", "targeted"):
        metrics["targeted"] = {**top1, "targeted": {
            "targets": [{"id": f"t{i}", "label": lab, "source_sha256": sha} for i, (sha, lab) in enumerate(targets)],
            "summary": {"zeroshot": {"success": _rate(hits, len(targets)), "mean_rank": 1.0}}}}
    return ModelResult(kind, seed, Path("."), metrics, 1.0)


CLEAN6 = [0.80, 0.85, 0.90, 0.75, 0.95, 0.70]
POISONED6 = [0.79, 0.841, 0.889, 0.742, 0.939, 0.69]


def test_summary_counts_distinct_targets_and_pairs_models_by_seed():
    same = [("a" * 64, "star"), ("b" * 64, "moon")]  # the old demo: the same 2 targets for every seed
    models = []
    for s in range(6):
        models += [_model("clean", s, CLEAN6[s], same), _model("backdoor", s, POISONED6[s]),
                   _model("targeted", s, POISONED6[s], same, hits=2)]
    summary = summarise(DemoConfig.quick(seeds=6), models)
    row = next(r for r in summary["rows"] if r["metric"] == "targets classified as their label (zero-shot)")
    cell = row["targeted"]
    assert (cell["k"], cell["n"], cell["n_models"], cell["n_distinct_targets"]) == (12, 12, 6, 2)
    assert format_cell(cell, True).endswith("(12/12: 2 targets x 6 models, 2 distinct)")
    t = summary["accuracy_tests"]["backdoor"]
    assert t["test"] == "paired_t" and t["n_pairs"] == 6 and t["significant_loss"]
    assert t["wilcoxon_p"] == pytest.approx(0.03125)
    # missing seeds on one side: no pairs, Welch's unpaired test
    welch = summarise(DemoConfig.quick(seeds=6), [m for m in models if not (m.kind == "clean" and m.seed == 5)])
    assert welch["accuracy_tests"]["backdoor"]["test"] == "welch_t"
