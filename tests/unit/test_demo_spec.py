"""The demo's packaged specs resolve to the settings the demo is documented to run with.

Each expected config is written from the documented settings (README, the specs' comments):
the stage config classes fill in their defaults, so a changed default shows up here as what
it is, a change of the demo. If the engine resolved a demo trial differently (another seed
in a stage, the poisons at another size, other training numbers), the demo's numbers would
change with it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from poisonclip.demo import demo_spec, spec_file
from poisonclip.errors import UserError
from poisonclip.experiments.stages import PoisonclipStages
from poisonclip.experiments.trials import expand


def _plain(obj) -> dict:
    """A config dataclass as the plain data a spec resolves to (enums by value, tuples as lists)."""
    d = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    return json.loads(json.dumps(d, default=lambda v: v.value if hasattr(v, "value") else str(v)))


def _expected(quick: bool, seed: int) -> dict[str, dict]:
    from poisonclip.attacks.api import BackdoorConfig, TargetedConfig
    from poisonclip.attacks.registry import unused_trigger_settings
    from poisonclip.data.synthetic import SynthConfig
    from poisonclip.evaluate.api import EvalConfig
    from poisonclip.train.models import input_size
    from poisonclip.train.run import TrainConfig

    if quick:   # test-sized: 1500 pairs, batch 128 x 30 epochs, 5% backdoor poisons, 2 targets x 3 copies
        corpus = SynthConfig(n_train=1500, n_test=300, n_probe=300, n_classes=20, p_two=0, p_three=0,
                             p_busy_scene=0)
        train, n_backdoor, patch, targets, copies = dict(epochs=30, batch_size=128), 79, 48, 2, 3
    else:       # the full demo: 4000 pairs of 20 classes, one object each on calm backdrops, the preset's
        # schedule, 80 poisons (2%) with a 7 px patch (48 at 224), 4 targets x 4 copies
        corpus = SynthConfig(n_train=4000, n_test=1000, n_probe=1000, n_classes=20, p_two=0, p_three=0,
                             p_busy_scene=0)
        train, n_backdoor, patch, targets, copies = {}, 80, 48, 4, 4
    tcfg = TrainConfig.from_preset("cpu-tiny", "-", "-", seed=seed, **train)
    backdoor = BackdoorConfig(data="-", out="-", target_label="star", n_poisons=n_backdoor, patch_size=patch,
                              placement="corner", resolution=input_size(tcfg.model), seed=seed)
    targeted = TargetedConfig(data="-", out="-", random_targets=targets, n_poisons=copies, caption_source="search",
                              seed=seed)
    evalc = EvalConfig(data=Path("."), out=Path("."), seed=seed)   # CLIP's templates; probe split filled per corpus

    def drop(d: dict, *keys: str) -> dict:
        return {k: v for k, v in d.items() if k not in keys}

    stage_eval = drop(_plain(evalc), "data", "out", "run", "model", "checkpoint", "poison", "classnames", "overwrite")
    return {"corpus": _plain(corpus),
            # the settings of triggers other than the demo's checkerboard are not part of its key
            "backdoor": {"attack": "backdoor", **drop(_plain(backdoor), "data", "out", "overwrite",
                                                      *unused_trigger_settings("checkerboard"))},
            "targeted": {"attack": "targeted", **drop(_plain(targeted), "data", "out", "overwrite")},
            "train": drop(_plain(tcfg), "data", "out", "overwrite", "resume"), "eval": stage_eval}


@pytest.mark.parametrize("quick", [True, False])
def test_demo_trials_resolve_to_the_documented_settings(quick):
    stages = PoisonclipStages()
    spec = demo_spec(quick=quick, seeds=2)
    trials = {t.name: t for t in expand(spec, stages.resolve, stages.link)}
    assert sorted(trials) == ["attack=backdoor__seed=0", "attack=backdoor__seed=1",
                              "attack=targeted__seed=0", "attack=targeted__seed=1"]
    for seed in (0, 1):
        want = _expected(quick, seed)
        for attack in ("backdoor", "targeted"):
            cfg = trials[f"attack={attack}__seed={seed}"].config
            assert cfg["corpus"] == want["corpus"]
            assert cfg["poison"] == want[attack], attack
            assert cfg["train"] == want["train"]
            assert cfg["eval"] == want["eval"]
        assert want["backdoor"]["resolution"] == 32 and want["train"]["model"] == "poisonclip-tiny-rn16"
        # the clean model of a seed is one model, trained once, measured against both attacks
        bd, tg = trials[f"attack=backdoor__seed={seed}"], trials[f"attack=targeted__seed={seed}"]
        assert bd.baseline and bd.keys.clean_model == tg.keys.clean_model and bd.keys.corpus == tg.keys.corpus
    assert trials["attack=backdoor__seed=0"].keys.clean_model != trials["attack=backdoor__seed=1"].keys.clean_model


def test_options_replace_seeds_epochs_and_training_size_and_are_checked():
    spec = demo_spec(quick=True, seeds=3, epochs=5, n_train=400)
    assert [dict(g)["seed"] for g in spec.grids] == [(0, 1, 2), (0, 1, 2)]
    assert spec.base["train"]["epochs"] == 5 and spec.base["corpus"]["n_train"] == 400
    assert spec.base["corpus"]["n_test"] == 300 and spec.name == "demo-quick"
    assert spec_file(quick=True).name == "demo-quick.yaml" and spec_file().name == "demo.yaml"
    for bad, match in (({"seeds": 0}, "seeds: must be at least 1, got 0"), ({"epochs": 0}, "epochs: must be"),
                       ({"n_train": 50}, "n_train: must be at least 100, got 50")):
        with pytest.raises(UserError, match=match):
            demo_spec(quick=True, **bad)


def test_the_demo_refuses_the_folder_of_another_sweep(tmp_path):
    from poisonclip.demo import run_demo

    (tmp_path / "spec.yaml").write_text("name: fig2-backdoor\n")
    with pytest.raises(UserError, match="holds the sweep 'fig2-backdoor', not a demo"):
        run_demo(demo_spec(quick=True), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]
