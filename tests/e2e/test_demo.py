"""`poisonclip demo --quick`: the whole pipeline on CPU, and a failable claim about the attack."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from poisonclip.cli import app

pytestmark = pytest.mark.e2e


# The quick demo's evaluations: (model, attack) -> the trial folder's evaluation of it (the
# poisoned model in eval/, the clean model of the same seed in clean_eval/).
EVALS = {("backdoor", "backdoor"): "attack=backdoor__seed=0/eval", ("clean", "backdoor"): "attack=backdoor__seed=0/clean_eval",
         ("targeted", "targeted"): "attack=targeted__seed=0/eval", ("clean", "targeted"): "attack=targeted__seed=0/clean_eval"}


def _evals(out: Path) -> dict[str, dict]:
    return {f"{who}/eval-{attack}": json.loads((out / "trials" / d / "metrics.json").read_text())
            for (who, attack), d in EVALS.items()}


def _poison_folder(out: Path, attack: str) -> Path:
    (folder,) = [p.parent for p in out.glob("cache/poison/*/poison.json")
                 if json.loads(p.read_text())["attack"] == attack]
    return folder


def test_quick_demo_backdoors_the_poisoned_model_and_not_the_clean_one(quick_demo):
    out, r = quick_demo
    assert r.exit_code == 0, r.output
    assert "report:" in r.output and "total time" in r.output
    html = (out / "report.html").read_text()
    assert "Clean vs poisoned" in html and html.count("<img") >= 3

    # every evaluation there is: the two poisoned models against their attack, the clean model
    # of the seed against both
    assert len(list(out.glob("trials/*/*/metrics.json"))) == 4
    metrics = _evals(out)
    assert set(metrics) == {"clean/eval-backdoor", "clean/eval-targeted",
                            "backdoor/eval-backdoor", "targeted/eval-targeted"}
    # one clean model (run folder) behind both control evaluations, one model per attack
    runs = {k: m["model"]["run"] for k, m in metrics.items()}
    assert runs["clean/eval-backdoor"] == runs["clean/eval-targeted"] and len(set(runs.values())) == 3

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
    info = json.loads((_poison_folder(out, "targeted") / "poison.json").read_text())
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


class _Interrupt(BaseException):
    """Stands for Ctrl-C: not an Exception, so no stage records it as a failure."""


def test_second_run_reuses_every_finished_step(tmp_path):
    """A demo interrupted after its first two models (the backdoored one and the clean one of
    its seed) resumes: they, the corpus and the poisoned sets are reused, the rest is built."""
    from poisonclip.demo import demo_spec, run_demo, spec_file
    from poisonclip.experiments.spec import load_spec

    raw = load_spec(spec_file(quick=True)).to_dict()
    raw["corpus"] = {"n_train": 200, "n_test": 60, "n_probe": 60}
    raw["train"]["epochs"] = 1
    raw["grid"][0]["base"]["poison"]["n_poisons"] = 10
    spec = demo_spec(quick=True, raw=raw)
    out = tmp_path / "d"
    seen: list[tuple[str, str]] = []

    def stop_before_the_first_evaluation(event) -> None:
        if event.kind == "stage":
            seen.append((event.trial, event.stage))
            if event.stage == "eval":   # both models of the first trial are trained
                raise _Interrupt

    with pytest.raises(_Interrupt):
        run_demo(spec, out, stop_before_the_first_evaluation)
    assert seen[-3:] == [("attack=backdoor__seed=0", "train"), ("attack=backdoor__seed=0", "train-clean"),
                         ("attack=backdoor__seed=0", "eval")]
    assert len(list(out.glob("cache/model/*.json"))) == 2      # complete: their markers are written
    assert not list(out.glob("trials/*/result.json")) and not list(out.glob("trials/*/*/metrics.json"))
    assert not (out / "summary.json").exists() and not (out / "report.html").exists()
    first = {p: p.stat().st_mtime_ns for p in (*out.glob("cache/*/*.json"), *out.glob("cache/*/*/run.json"),
                                               *out.glob("cache/*/*/poison.json"), *out.glob("cache/*/*/corpus.json"))}
    assert sum(p.name == "run.json" for p in first) == 2

    seen.clear()
    res = run_demo(spec, out, lambda e: seen.append((e.trial, e.stage)) if e.kind == "stage" else None)
    # nothing made before the interruption is rebuilt
    assert {p: p.stat().st_mtime_ns for p in first} == first
    # ... and the rest is built: the targeted poisons and model, and all four evaluations
    assert [o.state for o in res.sweep.outcomes] == ["done", "done"]
    assert len(list(out.glob("cache/model/*.json"))) == 3 and len(list(out.glob("trials/*/*/metrics.json"))) == 4
    assert (out / "summary.json").is_file() and res.report.is_file()
    assert [r["metric"] for r in res.summary["rows"]][0] == "clean zero-shot top-1"
    # a third run has nothing left to do
    third = run_demo(spec, out)
    assert third.sweep.outcomes == [] and third.sweep.already_done == 2


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
    square_metrics = out / "trials" / EVALS[("backdoor", "backdoor")] / "metrics.json"
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
        res = CliRunner().invoke(app, ["eval", "--run", square["model"]["run"], "--data", str(table),
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


def test_the_engine_runs_each_stage_as_the_library_does_with_the_documented_settings(quick_demo, tmp_path):
    """Orchestration must not change the numbers. The quick demo's documented settings (seed 0;
    corpus 1500 / 300 / 300; backdoor: 79 poisons, label star, a 32 px corner patch written at
    the model's input size; targeted: 2 random test images x 3 copies with template captions;
    cpu-tiny with 30 epochs and batch 128; evaluation on the test split with the probe trained
    on the probe split and the eval seed 0), given straight to the library's stage functions,
    write the poisoned datasets the demo trained on and measure the numbers it reported; and
    every model it trained ran with those settings. (Training is not repeated here: its
    settings are compared, and the trainer is deterministic for CSV data.)"""
    import dataclasses

    from poisonclip.attacks.api import BackdoorConfig, TargetedConfig, poison
    from poisonclip.data.synthetic import SynthConfig
    from poisonclip.evaluate.api import EvalConfig, evaluate
    from poisonclip.train.models import input_size
    from poisonclip.train.run import TrainConfig

    out, r = quick_demo
    assert r.exit_code == 0, r.output
    metrics = _evals(out)
    corpus = Path(metrics["backdoor/eval-backdoor"]["config"]["data"]).parent
    recorded = json.loads((corpus / "corpus.json").read_text())
    assert (recorded["n_train"], recorded["n_test"], recorded["n_probe"]) == (1500, 300, 300)
    want = SynthConfig(1500, 300, 300, n_classes=20, p_two=0, p_three=0, p_busy_scene=0)
    assert recorded["config"] == {k: v for k, v in dataclasses.asdict(want).items()}

    train = TrainConfig.from_preset("cpu-tiny", "-", "-", epochs=30, batch_size=128, seed=0)
    backdoor = BackdoorConfig(data=str(corpus / "train.tsv"), out=str(tmp_path / "backdoor"), seed=0,
                              target_label="star", n_poisons=79, patch_size=48, placement="corner",
                              resolution=input_size(train.model))
    targeted = TargetedConfig(data=str(corpus / "train.tsv"), out=str(tmp_path / "targeted"),
                              target_source=str(corpus / "test.tsv"), seed=0, random_targets=2, n_poisons=3,
                              caption_source="search")
    for cfg in (backdoor, targeted):
        poison(cfg)
        ours = _poison_folder(out, cfg.attack)
        # the manifest names each poison with the sha256 of its image and caption: same bytes, same file
        assert (ours / "manifest.csv").read_bytes() == (Path(cfg.out) / "manifest.csv").read_bytes(), cfg.attack

    hyper = {f.name for f in dataclasses.fields(TrainConfig)} - {"data", "out", "overwrite", "resume"}
    for name, m in metrics.items():
        ran = json.loads((Path(m["model"]["run"]) / "config.json").read_text())["config"]
        assert {k: ran[k] for k in hyper} == json.loads(json.dumps({k: getattr(train, k) for k in hyper})), name
        kind = name.split("/")[0]
        expected = corpus / "train.tsv" if kind == "clean" else _poison_folder(out, kind) / "train.tsv"
        assert Path(json.loads((Path(m["model"]["run"]) / "run.json").read_text())["train_data"]) == expected

    demo_eval = metrics["backdoor/eval-backdoor"]
    evaluate(EvalConfig(data=corpus / "test.tsv", out=tmp_path / "eval", run=Path(demo_eval["model"]["run"]),
                        poison=_poison_folder(out, "backdoor"), probe_train=corpus / "probe.tsv", seed=0))
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("clean", "backdoor", "similarity", "excluded_targets", "model", "data", "poison"):
        assert again[key] == demo_eval[key], key
    # the engine names the class list the evaluator would find beside the test split anyway
    assert demo_eval["config"]["classnames"] == str(corpus / "classnames.txt") and again["config"]["classnames"] is None
    assert {k: v for k, v in again["config"].items() if k not in ("out", "classnames")} == \
        {k: v for k, v in demo_eval["config"].items() if k not in ("out", "classnames")}
