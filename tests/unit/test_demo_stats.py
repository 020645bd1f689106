"""The demo's statistics count independent things: per-seed poisons, distinct targets, the
probe's own training split, paired accuracy tests. Poisoning is real; training and
evaluation are stubbed (the demo runs them through the sweep engine's stages)."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pandas as pd
import pytest

from poisonclip.demo import demo_spec, run_demo, spec_file
from poisonclip.evaluate.stats import Rate
from poisonclip.experiments.spec import load_spec
from poisonclip.report.tables import accuracy_test, attack_summary, format_cell


def _rate(k: int, n: int) -> dict:
    return Rate(k, n).to_dict()


def _small_demo(seeds: int) -> object:
    raw = load_spec(spec_file(quick=True)).to_dict()
    raw["corpus"] = {"n_train": 200, "n_test": 60, "n_probe": 30}
    raw["train"] = {**raw["train"], "epochs": 1}
    raw["grid"][0]["base"]["poison"]["n_poisons"] = 6
    raw["grid"][1]["base"]["poison"].update(random_targets=2, n_poisons=2)
    return demo_spec(quick=True, seeds=seeds, raw=raw)


def _train_events(cfg) -> list:
    """The events of a one-epoch, two-step run of ``cfg`` as ``train.run.train`` emits them."""
    from poisonclip.train.dataset import TrainData
    from poisonclip.train.logparse import EpochStart, StepLog
    from poisonclip.train.run import Launched, Processes

    data = TrainData(source=str(cfg.data), origin="table", dataset_type="csv", train_data=str(cfg.data),
                     num_samples=40, cwd=".")
    steps = [StepLog(epoch=0, step=s, steps_in_epoch=2, loss=3.0 - s, loss_avg=3.5 - s / 2, samples_per_s=20.0,
                     data_time=0.0, batch_time=1.0, window=1, lr=1e-3, logit_scale=14.3) for s in (1, 2)]
    return [Launched(command=("open_clip_train",), run_dir=Path(cfg.out), data=data,
                     processes=Processes("cpu", 1, 1), model=str(cfg.model), epochs=1, steps_per_epoch=2,
                     batch_size=20), EpochStart(0), *steps]


@pytest.fixture
def stub_stages(monkeypatch):
    """Training and evaluation replaced by stubs at the library functions the sweep's stages
    call: (the TrainConfigs trained, the EvalConfigs evaluated)."""
    import poisonclip.evaluate.api as api
    import poisonclip.train.run as run
    from poisonclip.contracts import METRICS_FILE, METRICS_SCHEMA, RUN_INFO_FILE, SCHEMA_VERSION

    trained, evals = [], []

    def fake_train(cfg, on_event=None):
        trained.append(cfg)
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        if on_event is not None:   # what train.run.train reports: the launch, then open_clip's logged steps
            for ev in _train_events(cfg):
                on_event(ev)
        (Path(cfg.out) / RUN_INFO_FILE).write_text(json.dumps({"seed": cfg.seed, "wall_time_s": 1.0}))
        return types.SimpleNamespace(checkpoint=None, wall_time_s=1.0, samples_per_s=10.0, loss_curve=[1.0])

    def fake_evaluate(cfg):
        evals.append(cfg)
        info = json.loads((Path(cfg.poison) / "poison.json").read_text())
        m = {"schema_version": SCHEMA_VERSION, "schema": METRICS_SCHEMA,
             "model": {"name": "stub", "checkpoint": str(cfg.run)}, "clean": {"zeroshot": {"top1": _rate(50, 60)}}}
        if info["attack"] == "targeted":
            m["targeted"] = {"targets": [{"id": t["id"], "label": t["label"], "source_sha256": t["source_sha256"],
                                          "source_key": t["source_key"]} for t in info["targets"]],
                             "summary": {"zeroshot": {"success": _rate(1, len(info["targets"])), "mean_rank": 1.5}}}
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        (Path(cfg.out) / METRICS_FILE).write_text(json.dumps(m))
        return m

    monkeypatch.setattr(run, "train", fake_train)
    monkeypatch.setattr(api, "evaluate", fake_evaluate)
    return trained, evals


def test_each_seed_poisons_anew_and_evaluates_with_its_seed_on_the_probe_split(tmp_path, stub_stages):
    trained, evals = stub_stages
    out = tmp_path / "d"
    res = run_demo(_small_demo(seeds=2), out)
    assert res.failed == [] and res.report == out / "report.html" and (out / "summary.json").is_file()

    infos = {}
    for p in (out / "cache" / "poison").glob("*/poison.json"):
        info = json.loads(p.read_text())
        infos[f"{info['attack']}{info['seed']}"] = (p.parent, info)
    assert sorted(infos) == ["backdoor0", "backdoor1", "targeted0", "targeted1"]
    src = {k: {r["source_key"] for r in _manifest(infos[k][0])} for k in ("backdoor0", "backdoor1")}
    assert src["backdoor0"] != src["backdoor1"]  # new source images per seed
    targets = {k: {(t["source_sha256"], t["label"]) for t in infos[k][1]["targets"]} for k in ("targeted0", "targeted1")}
    assert targets["targeted0"] != targets["targeted1"]
    assert all(t["source_key"].startswith("synth-test-") for k in targets for t in infos[k][1]["targets"])
    # one clean model per seed serves both attacks: 2 clean + 2 backdoored + 2 targeted models
    assert sorted(c.seed for c in trained) == [0, 0, 0, 1, 1, 1] and len(evals) == 8
    for e in evals:  # each model is evaluated with its own seed, against its own seed's poisons
        seed = json.loads((Path(e.run) / "run.json").read_text())["seed"]
        assert e.seed == seed and json.loads((Path(e.poison) / "poison.json").read_text())["seed"] == seed
        assert Path(e.probe_train).name == "probe.tsv" and e.data.name == "test.tsv"
    row = next(r for r in res.summary["rows"] if r["metric"] == "targets classified as their label (zero-shot)")
    assert row["targeted"]["n_models"] == 2 and row["targeted"]["n"] == 4
    assert row["targeted"]["n_distinct_targets"] == len(targets["targeted0"] | targets["targeted1"])
    assert row["clean"]["n_models"] == 2 and "backdoor" not in row
    # the targets, one by one, on the page: each seed's clean and targeted model
    page = res.report.read_text()
    assert "Targeted poisoning, target by target" in page and page.count("synth-test-") == 2 * 2 * 2
    # a second run reuses every seed's poisons and models
    before = {p: p.stat().st_mtime_ns for p in (out / "cache").rglob("*.json")}
    trained.clear()
    evals.clear()
    again = run_demo(_small_demo(seeds=2), out)
    assert trained == [] and evals == [] and again.sweep.already_done == 4
    assert {p: p.stat().st_mtime_ns for p in (out / "cache").rglob("*.json")} == before


def _manifest(folder: Path) -> list[dict]:
    from poisonclip.attacks.manifest import read_manifest

    return [r if isinstance(r, dict) else r.__dict__ for r in read_manifest(folder / "manifest.csv")]


CLEAN6 = [0.80, 0.85, 0.90, 0.75, 0.95, 0.70]
POISONED6 = [0.79, 0.841, 0.889, 0.742, 0.939, 0.69]


def _results(targets_of=lambda seed: "aaaa:star;bbbb:moon") -> pd.DataFrame:
    """A results table as the sweep writes it: a trial per (attack, seed), the poisoned model's
    and its seed's clean model's metrics side by side."""
    rows = []
    for attack in ("backdoor", "targeted"):
        for seed in range(6):
            row = {"trial": f"attack={attack}__seed={seed}", "poison.attack": attack, "seed": seed,
                   "model.wall_time_s": 2.0, "clean_model.wall_time_s": 3.0}
            for who, acc in (("poisoned", POISONED6[seed]), ("clean", CLEAN6[seed])):
                row.update({f"{who}.top1_zeroshot": round(acc * 1000) / 1000,
                            f"{who}.top1_zeroshot_k": round(acc * 1000), f"{who}.top1_zeroshot_n": 1000})
            if attack == "backdoor":
                row.update({"poisoned.z_as_trained": 2.0 + seed / 10, "clean.z_as_trained": 0.1})
            else:
                hits = {"poisoned": 2, "clean": 0}
                for who in hits:
                    row.update({f"{who}.targeted_success_zeroshot": hits[who] / 2,
                                f"{who}.targeted_success_zeroshot_k": hits[who],
                                f"{who}.targeted_success_zeroshot_n": 2, f"{who}.targeted_targets": targets_of(seed)})
            rows.append(row)
    return pd.DataFrame(rows)


def test_summary_counts_distinct_targets_and_pairs_models_by_seed():
    summary = attack_summary(_results(), "poison.attack", ["backdoor", "targeted"])
    assert summary["columns"] == ["clean", "backdoor", "targeted"]
    row = next(r for r in summary["rows"] if r["metric"] == "targets classified as their label (zero-shot)")
    cell = row["targeted"]   # the same 2 targets for every seed
    assert (cell["k"], cell["n"], cell["n_models"], cell["n_distinct_targets"]) == (12, 12, 6, 2)
    assert format_cell(cell, True).endswith("(12/12: 2 targets x 6 models, 2 distinct)")
    assert (row["clean"]["k"], row["clean"]["n"]) == (0, 12) and "backdoor" not in row
    z = next(r for r in summary["rows"] if r["metric"] == "backdoor z-score, corner patch")
    assert z["backdoor"]["mean"] == pytest.approx(2.25) and z["clean"]["std"] == pytest.approx(0) and "targeted" not in z
    t = summary["accuracy_tests"]["backdoor"]
    assert t["test"] == "paired_t" and t["n_pairs"] == 6 and t["significant_loss"]
    assert t["wilcoxon_p"] == pytest.approx(0.03125)
    assert summary["train_s"] == {"clean": 18.0, "backdoor": 12.0, "targeted": 12.0}  # a clean model per seed


def test_targets_that_change_with_the_seed_are_counted_apart():
    summary = attack_summary(_results(lambda seed: f"a{seed % 3}:star;b{seed}:moon"), "poison.attack",
                             ["backdoor", "targeted"])
    row = next(r for r in summary["rows"] if r["metric"] == "targets classified as their label (zero-shot)")
    assert row["targeted"]["n_distinct_targets"] == 3 + 6


def test_rows_that_share_a_seed_are_not_pairs():
    df = _results()
    df = df[df["poison.attack"] == "backdoor"]
    twice = pd.concat([df, df.assign(trial=df["trial"] + "-again")])
    assert accuracy_test(twice)["test"] == "welch_t"
    assert accuracy_test(df)["test"] == "paired_t"


@pytest.mark.parametrize("quiet", [True, False])
def test_the_command_prints_the_table_and_the_accuracy_tests(tmp_path, stub_stages, quiet):
    from typer.testing import CliRunner

    from poisonclip.cli import app

    out = tmp_path / "d"
    r = CliRunner().invoke(app, ["demo", "--quick", "--n", "400", "--epochs", "1", "--out", str(out),
                                 *(["--quiet"] if quiet else [])])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    for piece in ("demo demo-quick: 2 trials (1 seed(s) x 2 attacks), 0 already done",
                  "» attack=targeted__seed=0: clean model of this seed", "clean model", "backdoored",
                  "targeted-poisoned", "clean accuracy, backdoor vs clean", "clean accuracy, targeted vs clean",
                  "report:", "total time"):
        assert piece in text, piece
    assert text.count("83.3%") >= 3   # clean zero-shot top-1 of each model (the stubs score 50/60)
    # which goals were met, goal by goal and seed by seed: the stubs score 83.3% clean accuracy
    assert "goal met: clean zero-shot top-1 of the clean models ≥ 80.0% [seed 0: met (83.3%)]" in text
    assert "goal NOT MET: targeted poisoning: ≥ 4 distinct targets per seed" in text
    assert json.loads((out / "summary.json").read_text())["config"]["corpus"]["n_train"] == 400
    again = CliRunner().invoke(app, ["demo", "--quick", "--n", "400", "--epochs", "1", "--out", str(out), "--quiet"])
    assert again.exit_code == 0 and "2 already done" in " ".join(again.output.split())


def test_the_command_shows_each_training_step_by_step_unless_quiet(tmp_path, stub_stages):
    """Without --quiet the demo hands its LocalRunner the trainer's progress bar
    (train.progress.RichReporter): each model's launch line and its epoch lines appear."""
    from typer.testing import CliRunner

    from poisonclip.cli import app

    trained, _ = stub_stages
    args = ["demo", "--quick", "--n", "400", "--epochs", "1"]
    shown = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "shown")])
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    assert len(trained) == 3   # a clean, a backdoored and a targeted-poisoned model
    assert text.count("training ") == 3 and text.count("run folder: ") == 3
    assert text.count("epoch 1/1 loss 2.5000") == 3   # each run's last logged step closes its epoch
    assert f"{trained[0].out}" in shown.output.replace("\n", "")
    quiet = CliRunner().invoke(app, [*args, "--quiet", "--out", str(tmp_path / "quiet")])
    assert quiet.exit_code == 0, quiet.output
    assert "run folder: " not in quiet.output and "epoch 1/1" not in quiet.output
