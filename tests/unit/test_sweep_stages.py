"""The adapter onto poisonclip's stages: config resolution and the metrics it tabulates."""

from __future__ import annotations

import pytest

from poisonclip.errors import UserError
from poisonclip.experiments.spec import load_spec
from poisonclip.evaluate.columns import flat_metrics
from poisonclip.contracts import CorpusPaths
from poisonclip.experiments.stages import PoisonclipStages
from poisonclip.experiments.trials import expand

S = PoisonclipStages()


def test_resolve_fills_defaults_from_the_stage_dataclasses():
    train = S.resolve("train", {"model": "poisonclip-test", "epochs": 1})
    assert train["model"] == "poisonclip-test" and train["epochs"] == 1
    assert train["preset"] == "cpu-tiny" and train["lr"] > 0 and "data" not in train
    poison = S.resolve("poison", {"target_label": "circle", "n_poisons": 5, "placement": "random"})
    assert poison["attack"] == "backdoor" and poison["placement"] == "random" and poison["patch_size"] == 16
    corpus = S.resolve("corpus", {"n_train": 10})
    assert corpus["n_train"] == 10 and corpus["resolution"] == 32
    assert "templates" in S.resolve("eval", {})


@pytest.mark.parametrize("stage, cfg, message", [
    ("train", {"epochz": 1}, "unknown field"),
    ("train", {"out": "x"}, "set by the sweep"),
    ("train", {"preset": "nope"}, "unknown preset"),
    ("poison", {"attack": "nope"}, "not one of"),
    # the error names the bad value and that it is a placement (not just any poison-stage error)
    ("poison", {"target_label": "c", "n_poisons": 1, "placement": "middle"},
     r"poison\.placement: 'middle' is not one of corner, random"),
    ("poison", {"data": "x"}, "set by the sweep"),
    ("eval", {"poison": "x"}, "set by the sweep"),
    ("corpus", {"n_train": 10, "colour": 1}, "unknown field"),
    ("corpus", {"train": "x.tsv"}, "missing"),
])
def test_resolve_rejects_bad_fields(stage, cfg, message):
    with pytest.raises(UserError, match=message):
        S.resolve(stage, cfg)


def test_existing_corpus_by_path_or_files(tmp_path):
    for name in ("train.tsv", "test.tsv", "classnames.txt"):
        (tmp_path / name).write_text("x\n")
    r = S.resolve("corpus", {"path": str(tmp_path)})
    assert r["external"] == {"train": str(tmp_path / "train.tsv"), "test": str(tmp_path / "test.tsv"),
                             "classnames": str(tmp_path / "classnames.txt")}
    out = tmp_path / "entry"
    S.corpus(r, out)
    assert CorpusPaths.from_folder(out).test == str(tmp_path / "test.tsv")
    with pytest.raises(UserError, match="not found"):
        S.resolve("corpus", {"train": str(tmp_path / "nope.tsv"), "test": str(tmp_path / "test.tsv")})


def test_every_shipped_spec_expands(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "configs"
    specs = [root / "sweep-ci.yaml", *sorted((root / "paper").glob("*.yaml")),
             *sorted((root / "defenses").glob("*.yaml"))]
    assert len(specs) >= 7
    for path in specs:
        trials = expand(load_spec(path), S.resolve)
        assert trials, path


def test_flat_metrics_names_placements_by_where_the_patch_goes():
    rate = lambda k, n: {"k": k, "n": n, "rate": k / n, "ci95": [0, 1]}  # noqa: E731
    m = {"clean": {"zeroshot": {"top1": rate(8, 10)}},
         "similarity": {"clean": {"mean": 0.1, "std": 0.2}},
         "backdoor": {"train_placement": "corner",
                      "asr": {"train_placement": {"zeroshot": rate(9, 9)}, "random": {"zeroshot": rate(3, 9)}},
                      "zscore": {"train_placement": {"z": 4.0, "mean_triggered": 0.9},
                                 "random": {"z": 1.0, "mean_triggered": 0.3}},
                      "target_rate_without_trigger": {"zeroshot": rate(0, 9)}}}
    f = flat_metrics(m)
    assert f["top1_zeroshot"] == 0.8 and f["top1_zeroshot_k"] == 8 and f["top1_zeroshot_n"] == 10
    assert f["asr_as_trained_zeroshot"] == 1.0 and f["asr_corner_zeroshot"] == 1.0
    assert f["asr_random_zeroshot"] == pytest.approx(1 / 3)
    assert f["z_as_trained"] == f["z_corner"] == 4.0 and f["z_random"] == 1.0
    m["backdoor"]["train_placement"] = "random"
    f = flat_metrics(m)
    assert "z_corner" not in f and f["z_as_trained"] == 4.0


def test_paper_scale_cluster_specs_are_valid_but_for_their_data_paths(tmp_path):
    """The cluster presets are not run anywhere; check every field but the /data paths."""
    from pathlib import Path

    from poisonclip.experiments.cluster import SubmititRunner
    from poisonclip.experiments.spec import STAGES, SEED_AXIS

    pytest.importorskip("submitit")
    specs = sorted((Path(__file__).resolve().parents[2] / "configs" / "paper" / "cluster").glob("*.yaml"))
    assert len(specs) == 6   # Figs. 2 (left and right), 4, 5 (left and right), 6
    for path in specs:
        spec = load_spec(path)
        with pytest.raises(UserError, match="corpus.test: /data/imagenet/val.csv not found"):
            S.resolve("corpus", spec.base["corpus"])
        for stage in STAGES[1:]:
            cfg = dict(spec.base[stage])
            for axis, values in spec.grids[0]:
                if axis.startswith(stage + "."):
                    cfg[axis.split(".", 1)[1]] = values[0]
                if axis == SEED_AXIS and f"{stage}.seed" in spec.seed_fields:
                    cfg["seed"] = values[0]
            S.resolve(stage, cfg)
        SubmititRunner(cluster="local", parameters=spec.cluster).executor(tmp_path / path.stem)


@pytest.fixture(scope="module")
def synth_entry(tmp_path_factory):
    """A small synthetic corpus written by the sweep's corpus stage (with its probe split)."""
    out = tmp_path_factory.mktemp("corpus") / "entry"
    S.corpus(S.resolve("corpus", {"n_train": 60, "n_test": 30, "n_probe": 20}), out)
    return out


def test_corpus_stage_writes_a_probe_split_and_evaluate_trains_the_probe_on_it(synth_entry, tmp_path,
                                                                                monkeypatch):
    import poisonclip.evaluate.api as api

    paths = CorpusPaths.from_folder(synth_entry)
    assert paths.probe == str(synth_entry / "probe.tsv") and paths.probe != paths.test
    seen = []
    monkeypatch.setattr(api, "evaluate", lambda cfg: seen.append(cfg) or {})
    S.evaluate(S.resolve("eval", {}), tmp_path / "run", synth_entry, None, tmp_path / "e")
    assert str(seen[-1].probe_train) == paths.probe and str(seen[-1].data) == paths.test
    mine = tmp_path / "mine.tsv"
    S.evaluate(S.resolve("eval", {"probe_train": str(mine)}), tmp_path / "run", synth_entry, None, tmp_path / "e")
    assert str(seen[-1].probe_train) == str(mine)  # a spec's own probe set wins
    S.evaluate(S.resolve("eval", {"probe": False}), tmp_path / "run", synth_entry, None, tmp_path / "e")
    assert seen[-1].probe_train is None


def test_targeted_sweep_draws_its_targets_from_the_held_out_test_split(synth_entry, tmp_path):
    import json

    cfg = S.resolve("poison", {"attack": "targeted", "random_targets": 3, "n_poisons": 2, "seed": 4})
    S.poison(cfg, synth_entry, tmp_path / "p")
    info = json.loads((tmp_path / "p" / "poison.json").read_text())
    assert info["config"]["target_source"] == CorpusPaths.from_folder(synth_entry).test
    assert len(info["targets"]) == 3 and all(t["source_key"].startswith("synth-test-") for t in info["targets"])
    bad = S.resolve("poison", {"attack": "targeted", "random_targets": 1, "n_poisons": 2,
                               "target_source": CorpusPaths.from_folder(synth_entry).train})
    with pytest.raises(UserError, match="held-out"):
        S.poison(bad, synth_entry, tmp_path / "q")


def test_flat_metrics_names_the_targets_behind_a_success_rate():
    rate = lambda k, n: {"k": k, "n": n, "rate": k / n, "ci95": [0, 1]}  # noqa: E731
    m = {"targeted": {"summary": {"zeroshot": {"success": rate(1, 2), "mean_rank": 1.5}},
                      "targets": [{"id": "t001", "label": "star", "source_sha256": "b" * 64},
                                  {"id": "t000", "label": "moon", "source_sha256": "a" * 64}]},
         "excluded_targets": {"data": 2, "probe_train": 0}}
    f = flat_metrics(m)
    assert f["targeted_targets"] == f"{'a' * 16}:moon;{'b' * 16}:star"
    assert f["excluded_targets"] == 2 and f["targeted_success_zeroshot_k"] == 1


def test_a_bad_setting_is_named_by_its_spec_key(synth_entry, tmp_path):
    """The library names the setting; the sweep says where it sits in the spec."""
    cfg = S.resolve("poison", {"target_label": "circle", "n_poisons": 2, "patch_size": 0})
    with pytest.raises(UserError, match=r"^sweep spec: poison\.patch_size: must be positive"):
        S.poison(cfg, synth_entry, tmp_path / "p")
    assert not (tmp_path / "p").exists()
    with pytest.raises(UserError, match=r"^sweep spec: train\.model: resnet9000: unknown model"):
        S.link({"poison": {"target_label": "circle", "n_poisons": 2}, "train": {"model": "resnet9000"}})


def test_fine_tuning_starts_from_the_clean_model_a_from_scratch_trial_trains():
    from poisonclip.experiments.spec import parse_spec
    from poisonclip.experiments.stages import finetune_config, pretrain_config

    spec = parse_spec({"name": "ft", "corpus": {"n_train": 100},
                       "poison": {"target_label": "circle", "n_poisons": 5},
                       "train": {"model": "poisonclip-test", "epochs": 3, "lr": 0.002, "finetune_lr": 1e-4},
                       "grid": {"train.finetune_epochs": [0, 1], "seed": [0, 1]}})
    by_name = {t.name: t for t in expand(spec, S.resolve)}
    scratch, ft = by_name["finetune_epochs=0__seed=0"], by_name["finetune_epochs=1__seed=0"]
    assert scratch.keys.pretrain is None and not [k for k in scratch.config["train"] if k.startswith("finetune")]
    assert ft.config["train"]["finetune_epochs"] == 1 and ft.config["train"]["finetune_lr"] == 1e-4
    # the model fine-tuning starts from is the clean control of the from-scratch trial of its seed
    assert ft.keys.pretrain == scratch.keys.clean_model != by_name["finetune_epochs=1__seed=1"].keys.pretrain
    assert pretrain_config(ft.config["train"]) == scratch.config["train"]
    assert len({scratch.keys.model, ft.keys.model, ft.keys.clean_model, scratch.keys.clean_model}) == 4
    tune = finetune_config(ft.config["train"], "/x/run")
    assert (tune["epochs"], tune["lr"], tune["warmup"], tune["init"]) == (1, 1e-4, scratch.config["train"]["warmup"],
                                                                          "/x/run")
    assert not [k for k in tune if k.startswith("finetune")]


@pytest.mark.parametrize("cfg, message", [
    ({"finetune_epochs": -1}, r"train\.finetune_epochs: must be a whole number"),
    ({"finetune_epochs": 1.5}, r"train\.finetune_epochs"),
    ({"finetune_epochs": 1, "finetune_lr": 0}, r"train\.finetune_lr: must be a positive"),
    ({"finetune_epochs": 1, "finetune_warmup": -2}, r"train\.finetune_warmup"),
    ({"finetune_epochs": 1, "init": "/x.pt"}, r"train\.init: give either"),
])
def test_bad_fine_tuning_settings_are_named_by_their_spec_key(cfg, message):
    with pytest.raises(UserError, match=message):
        S.resolve("train", {"model": "poisonclip-test", **cfg})
