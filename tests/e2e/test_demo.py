"""`poisonclip demo --quick`: the whole pipeline on CPU, and a failable claim about the attack."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from poisonclip.cli import app

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """One `poisonclip demo --quick` run (a few minutes) shared by the tests of this module."""
    out = tmp_path_factory.mktemp("quick") / "demo"
    r = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), "--quiet"])
    return out, r


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


def test_second_run_reuses_every_finished_step(tmp_path):
    """An interrupted or repeated demo resumes: finished artefacts are not rebuilt."""
    from poisonclip.demo import DemoConfig, run_demo
    from poisonclip.data.synthetic import SynthConfig

    cfg = DemoConfig.quick(out=tmp_path / "d", corpus=SynthConfig(n_train=200, n_test=60, n_probe=60), epochs=1,
                           backdoor_poisons=10)
    said: list[str] = []
    run_demo(cfg, say=said.append)
    first = {p: p.stat().st_mtime_ns for p in (tmp_path / "d").rglob("metrics.json")}
    said.clear()
    run_demo(cfg, say=said.append)
    assert any("reusing" in s for s in said) and not any(s.startswith("train:") and "reusing" not in s
                                                         for s in said)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "d").rglob("metrics.json")} == first


@pytest.mark.parametrize("shape", ["3:2", "2:3"])
def test_backdoor_asr_is_the_same_on_stretched_copies_of_the_test_images(quick_demo, tmp_path, shape):
    """The trigger goes on the model-input image (after resize and centre crop), so a
    non-square copy of each test image is attacked as its square original. Pasted on the
    stored image instead, the corner patch of a 3:2 image is cropped away (ASR fell to the
    no-trigger rate)."""
    from PIL import Image

    from poisonclip.data.evalset import load_labelled, write_labelled_csv
    from poisonclip.data.sample import Sample

    out, r = quick_demo
    assert r.exit_code == 0, r.output
    (square_metrics,) = out.glob("runs/backdoor-*/eval-backdoor/metrics.json")
    square = json.loads(square_metrics.read_text())
    test = load_labelled(Path(square["config"]["data"]))
    wide = shape == "3:2"
    stretched = []
    for s in test.samples:
        im = s.decode()
        w, h = im.size
        size = (w * 3 // 2, h) if wide else (w, h * 3 // 2)
        stretched.append(Sample.from_pil(s.key, im.resize(size, Image.Resampling.BICUBIC), "", meta=s.meta))
    table = write_labelled_csv(stretched, test.classnames, tmp_path / "stretched")
    run = square_metrics.parent.parent
    res = CliRunner().invoke(app, ["eval", "--run", str(run), "--data", str(table), "--poison",
                                   square["poison"]["path"], "--out", str(tmp_path / "m"), "--no-probe"])
    assert res.exit_code == 0, res.output
    other = json.loads((tmp_path / "m" / "metrics.json").read_text())

    def asr(m):
        return m["backdoor"]["asr"]["train_placement"]["zeroshot"]["rate"]

    def floor(m):
        return m["backdoor"]["target_rate_without_trigger"]["zeroshot"]["rate"]

    assert abs(asr(other) - asr(square)) < 0.08, (asr(other), asr(square))
    assert asr(other) > floor(other) + 0.25, (asr(other), floor(other))
