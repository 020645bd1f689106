"""`poisonclip demo --quick`: the whole pipeline on CPU, and a failable claim about the attack."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from poisonclip.cli import app

pytestmark = pytest.mark.e2e


def test_quick_demo_backdoors_the_poisoned_model_and_not_the_clean_one(quick_demo):
    out, r = quick_demo
    assert r.exit_code == 0, r.output
    assert "report:" in r.output and "total time" in r.output
    html = (out / "report.html").read_text()
    assert "Clean vs poisoned" in html and html.count("<img") >= 3

    metrics = {p.parent.parent.name.split("-")[0] + "/" + p.parent.name: json.loads(p.read_text())
               for p in out.glob("runs/*/eval-*/metrics.json")}
    assert set(metrics) == {"clean/eval-backdoor", "clean/eval-targeted",
                            "backdoor/eval-backdoor", "targeted/eval-targeted"}

    def asr(m):
        return m["backdoor"]["asr"]["train_placement"]["zeroshot"]["rate"]

    def floor(m):  # the same non-target images sent to the target label without the trigger
        return m["backdoor"]["target_rate_without_trigger"]["zeroshot"]["rate"]

    def z(m):
        return m["backdoor"]["zscore"]["train_placement"]["z"]

    clean, poisoned = metrics["clean/eval-backdoor"], metrics["backdoor/eval-backdoor"]
    # The attack, measured against the clean model trained with the same seed: in the
    # backdoored model the patch raises the rate at which non-target images are classified
    # as the target (ASR above its own no-trigger floor), and pulls patched images together
    # (z-score), more than in the clean model. Training on CSV data is deterministic, so
    # this is not a coin flip. Measured at these settings: ASR 75.6% (floor ~1%) vs 3.3% on
    # the clean model, z 1.52 vs 0.08; the margins asserted leave room for other CPUs' floats.
    assert asr(poisoned) - floor(poisoned) > asr(clean) - floor(clean) + 0.25, (asr(poisoned), floor(poisoned),
                                                                                 asr(clean), floor(clean))
    assert z(poisoned) > z(clean) + 0.5, (z(poisoned), z(clean))

    # The targeted attack, against the same clean model: each target test image is classified
    # as its (wrong) target label more often, and ranks that label higher, in the model trained
    # on its poisons. Measured at these settings (2 targets, 3 poisons each): zero-shot 2/2 vs
    # 1/2, mean rank 1.0 vs 5.0. The clean model already sends t000 (a square) to its target
    # "circle"; t001 (an arrow, target "cross") is the one the attack moves: rank 9 -> 1.
    t_clean, t_pois = metrics["clean/eval-targeted"]["targeted"], metrics["targeted/eval-targeted"]["targeted"]
    info = json.loads(next(out.glob("data/targeted-*/poison.json")).read_text())
    assert all(t["label"] != t["true_label"] for t in info["targets"])   # the labels are wrong ones
    succ = {name: [t["zeroshot"]["success"] for t in tg["targets"]] for name, tg in
            (("clean", t_clean), ("poisoned", t_pois))}
    assert sum(succ["poisoned"]) > sum(succ["clean"]), succ
    assert any(p and not c for p, c in zip(succ["poisoned"], succ["clean"])), succ  # a target the attack moved
    assert t_pois["summary"]["zeroshot"]["mean_rank"] < t_clean["summary"]["zeroshot"]["mean_rank"] - 1, (
        t_pois["summary"], t_clean["summary"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"][0]["metric"] == "clean zero-shot top-1"
    # The probe trains on the corpus' own probe split, and the targets (drawn from the test
    # split) are left out of the clean numbers they would otherwise be counted in.
    for m in metrics.values():
        assert m["clean"]["probe"]["train_set"]["source"] == "probe_train"
        assert m["clean"]["probe"]["train_set"]["path"].endswith("probe.tsv")
    for name in ("clean/eval-targeted", "targeted/eval-targeted"):
        assert metrics[name]["excluded_targets"]["data"] == 2
        assert metrics[name]["clean"]["zeroshot"]["top1"]["n"] == 298
    assert metrics["clean/eval-backdoor"]["clean"]["zeroshot"]["top1"]["n"] == 300
    row = next(r for r in summary["rows"] if r["metric"] == "targets classified as their label (zero-shot)")
    assert row["targeted"]["n"] == 2 and row["targeted"]["n_distinct_targets"] == 2


class _Interrupt(Exception):
    pass


def test_second_run_reuses_every_finished_step(tmp_path):
    """A demo interrupted after its first model resumes: the finished model (and its evals,
    corpus and poisoned sets) is reused, the rest is built."""
    from poisonclip.demo import DemoConfig, run_demo
    from poisonclip.data.synthetic import SynthConfig

    out = tmp_path / "d"
    cfg = DemoConfig.quick(out=out, corpus=SynthConfig(n_train=200, n_test=60, n_probe=60), epochs=1,
                           backdoor_poisons=10)
    said: list[str] = []

    def stop_before_the_second_model(msg: str) -> None:
        said.append(msg)
        if msg.startswith("train: backdoor model"):  # the clean model is trained and evaluated
            raise _Interrupt

    with pytest.raises(_Interrupt):
        run_demo(cfg, say=stop_before_the_second_model)
    clean_run = [p.parent for p in out.glob("runs/clean-*/run.json")]
    assert len(clean_run) == 1 and [p.name for p in (out / "runs").iterdir()] == [clean_run[0].name]
    assert not (out / "summary.json").exists() and not (out / "report.html").exists()
    first = {p: p.stat().st_mtime_ns for p in (*out.rglob("metrics.json"), *out.rglob("run.json"),
                                               *out.rglob("poison.json"), *out.rglob("corpus.json"))}
    assert sum(p.name == "metrics.json" for p in first) == 2  # clean vs backdoor, clean vs targeted

    said.clear()
    res = run_demo(cfg, say=said.append)
    # the clean model is reused, not retrained; nothing made before the interruption is rebuilt
    assert any(s.startswith("train: clean seed 0: reusing") for s in said), said
    assert not any(s.startswith(("train: clean model", "eval: clean model", "poison:", "corpus: generating"))
                   for s in said), said
    assert {p: p.stat().st_mtime_ns for p in first} == first
    # ... and the rest is built: both poisoned models trained and evaluated
    assert "train: backdoor model, seed 0" in said and "train: targeted model, seed 0" in said
    assert {(m.kind, tuple(m.metrics)) for m in res.models} == {
        ("clean", ("backdoor", "targeted")), ("backdoor", ("backdoor",)), ("targeted", ("targeted",))}
    assert len(list(out.glob("runs/*/run.json"))) == 3 and len(list(out.glob("runs/*/eval-*/metrics.json"))) == 4
    assert (out / "summary.json").is_file() and res.report.is_file()


@pytest.mark.parametrize("shape", ["3:2", "2:3"])
def test_backdoor_asr_is_the_same_on_stretched_copies_of_the_test_images(quick_demo, tmp_path, shape):
    """The trigger goes on the model-input image (after resize and centre crop), so a
    non-square image is attacked exactly as its square centre crop (the pixels the model
    sees): the same ASR to the image. Pasted on the stored image instead, the corner patch of
    a 3:2 image was cropped away (ASR fell to the no-trigger rate)."""
    from PIL import Image

    from poisonclip.attacks.triggers import to_input_geometry
    from poisonclip.data.evalset import load_labelled, write_labelled_csv
    from poisonclip.data.sample import Sample

    out, r = quick_demo
    assert r.exit_code == 0, r.output
    (square_metrics,) = out.glob("runs/backdoor-*/eval-backdoor/metrics.json")
    square = json.loads(square_metrics.read_text())
    test = load_labelled(Path(square["config"]["data"]))
    wide = shape == "3:2"
    stretched, crops = [], []
    for s in test.samples:
        im = s.decode()
        w, h = im.size
        im = im.resize((w * 3 // 2, h) if wide else (w, h * 3 // 2), Image.Resampling.BICUBIC)
        stretched.append(Sample.from_pil(s.key, im, "", meta=s.meta))
        crops.append(Sample.from_pil(s.key, to_input_geometry(im, min(w, h)), "", meta=s.meta))

    def evaluate(samples, name):
        table = write_labelled_csv(samples, test.classnames, tmp_path / name)
        res = CliRunner().invoke(app, ["eval", "--run", str(square_metrics.parent.parent), "--data", str(table),
                                       "--poison", square["poison"]["path"], "--out", str(tmp_path / f"m-{name}"),
                                       "--no-probe"])
        assert res.exit_code == 0, res.output
        return json.loads((tmp_path / f"m-{name}" / "metrics.json").read_text())

    def asr(m):
        return m["backdoor"]["asr"]["train_placement"]["zeroshot"]

    def floor(m):
        return m["backdoor"]["target_rate_without_trigger"]["zeroshot"]["rate"]

    other, crop = evaluate(stretched, "stretched"), evaluate(crops, "crops")
    # the non-square images and their square crops: the same trigger, the same pixels
    assert asr(other)["k"] == asr(crop)["k"] and asr(other)["n"] == asr(crop)["n"], (asr(other), asr(crop))
    assert asr(other)["rate"] > floor(other) + 0.25, (asr(other), floor(other))
    if wide:
        # and close to the square originals: stretching changes what the model sees of the
        # shapes (measured: 3:2 within a few points; 2:3 64.8% vs 75.6%), not the trigger
        assert abs(asr(other)["rate"] - asr(square)["rate"]) < 0.08, (asr(other), asr(square))
