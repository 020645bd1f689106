"""Sweep specs: strict parsing, grid expansion, stable trial names, shared-artefact keys."""

from __future__ import annotations

import pytest

from poisonclip.errors import UserError
from poisonclip.experiments.spec import load_spec, parse_spec
from poisonclip.experiments.trials import expand, format_value
from tests.sweep_fakes import FakeStages

FAKE = "tests.sweep_fakes:FakeStages"


def spec(**over):
    raw = {"name": "t", "stages": FAKE, "poison": {"attack": "backdoor"},
           "grid": {"poison.n_poisons": [5, 20], "seed": [0, 1]}}
    raw.update(over)
    return parse_spec(raw, allow_custom_stages=True)


def test_grid_expands_to_the_product_with_seed_written_into_every_seed_field():
    trials = expand(spec(), FakeStages().resolve)
    assert [t.name for t in trials] == ["n_poisons=5__seed=0", "n_poisons=5__seed=1",
                                        "n_poisons=20__seed=0", "n_poisons=20__seed=1"]
    t = trials[3]
    assert t.config["poison"]["n_poisons"] == 20
    assert t.config["poison"]["seed"] == 1 and t.config["train"]["seed"] == 1
    assert t.config["corpus"]["seed"] == 0          # the corpus is not a replicate
    assert dict(t.params) == {"poison.n_poisons": 20, "seed": 1}


def test_keys_share_corpus_per_config_clean_model_per_seed_and_poison_across_training():
    trials = expand(spec(grid={"poison.n_poisons": [5, 20], "seed": [0, 1], "train.epochs": [1, 2]}),
                    FakeStages().resolve)
    by = {(t.params["poison.n_poisons"], t.params["seed"], t.params["train.epochs"]): t for t in trials}
    assert len({t.keys.corpus for t in trials}) == 1
    # clean baseline: one per (seed, training settings), whatever the poison count
    assert by[5, 0, 1].keys.clean_model == by[20, 0, 1].keys.clean_model
    assert by[5, 0, 1].keys.clean_model != by[5, 1, 1].keys.clean_model
    assert by[5, 0, 1].keys.clean_model != by[5, 0, 2].keys.clean_model
    # poisoned dataset: shared by trials that differ only in training settings
    assert by[5, 0, 1].keys.poison == by[5, 0, 2].keys.poison
    assert by[5, 0, 1].keys.model != by[5, 0, 2].keys.model
    assert len({t.keys.model for t in trials}) == len(trials)


def test_trials_differing_only_in_eval_share_the_trained_model():
    trials = expand(spec(grid={"eval.templates": ["simple", "openai"]}), FakeStages().resolve)
    assert trials[0].keys.model == trials[1].keys.model
    assert trials[0].config_hash != trials[1].config_hash


def test_names_are_stable_when_an_axis_gains_a_value():
    before = {t.name: t.config_hash for t in expand(spec(), FakeStages().resolve)}
    after = {t.name: t.config_hash for t in expand(
        spec(grid={"poison.n_poisons": [5, 20, 80], "seed": [0, 1]}), FakeStages().resolve)}
    assert before.items() <= after.items() and len(after) == 6


def test_list_of_grids_is_a_union_with_every_axis_as_a_column():
    s = spec(grid=[{"poison.n_poisons": [5, 20]}, {"train.model": ["small", "big"]}])
    trials = expand(s, FakeStages().resolve)
    assert [t.name for t in trials] == ["n_poisons=5", "n_poisons=20", "model=small", "model=big"]
    assert trials[0].params == {"poison.n_poisons": 5, "train.model": "tiny"}
    assert trials[3].params == {"poison.n_poisons": 10, "train.model": "big"}


def test_ambiguous_short_names_use_the_full_path_and_values_are_filesystem_safe():
    s = spec(grid={"poison.seed": [1], "train.seed": [2], "train.model": ["a/b c"]})
    (t,) = expand(s, FakeStages().resolve)
    assert t.name == "poison.seed=1__train.seed=2__model=a-b-c"
    assert format_value(0.5) == "0.5" and format_value(True) == "true" and format_value(None) == "null"


@pytest.mark.parametrize("over, message", [
    ({"grid": {"poison.n_poisons": 5}}, "non-empty list"),
    ({"grid": {"n_poisons": [5]}}, "is not a field"),
    ({"grid": {"poison.n_poisons": [5, 5]}}, "repeated values"),
    ({"grid": {"poison.n_poisons": [[1, 2]]}}, "scalars"),
    ({"trian": {}}, "unknown key"),
    ({"train": [1]}, "must be a mapping"),
    ({"baseline": "yes"}, "true or false"),
    ({"seed_fields": "train.seed"}, "list of dotted"),
    ({"grid": [{"base": {"poison": {"n_poisons": 5}}, "poison.n_poisons": [1]}]},
     "grid: 'poison.n_poisons' is both set by the axis 'poison.n_poisons' and in grid.base"),
    ({"grid": [{"base": {"train": {"seed": 5}}, "seed": [1]}, {"seed": [2]}]},
     r"grid\[0\]: 'train.seed' is both set by the axis 'seed' and in grid\[0\].base"),
    ({"grid": [{"base": {"posion": {"n_poisons": 5}}, "seed": [0]}, {"seed": [1]}]}, r"grid\[0\].base: 'posion' is not a stage"),
    ({"grid": {"base": [1], "seed": [0]}}, "grid.base: must be a mapping"),
    ({"grid": {"base": {"poison": 5}, "seed": [0]}}, r"grid.base.poison: must be a mapping"),
    ({"grid": {"base": {"poison": {"a.b": 5}}, "seed": [0]}}, "is not a field name"),
    ({"report": {"tables": "attacks"}}, r"report: unknown key\(s\) \['tables'\]"),
    ({"report": {"table": "demo"}}, "report.table"),
    ({"report": {"axes": ["poison.n"]}}, "report.axes"),
])
def test_bad_specs_are_user_errors_naming_the_field(over, message):
    with pytest.raises(UserError, match=message):
        spec(**over)


def test_a_sub_grid_base_sets_its_own_fields_over_the_spec_sections():
    """One spec holds two attacks, each with settings the other's config does not have."""
    s = spec(poison={"n_poisons": 7}, train={"epochs": 2}, grid=[
        {"base": {"poison": {"patch_size": 32, "placement": "random"}}, "poison.attack": ["backdoor"], "seed": [0, 1]},
        {"base": {"poison": {"n_poisons": 3}, "train": {"epochs": 4}}, "poison.attack": ["targeted"], "seed": [0]}])
    t = {x.name: x for x in expand(s, FakeStages().resolve)}
    assert list(t) == ["attack=backdoor__seed=0", "attack=backdoor__seed=1", "attack=targeted__seed=0"]
    bd, tg = t["attack=backdoor__seed=1"].config, t["attack=targeted__seed=0"].config
    assert (bd["poison"]["patch_size"], bd["poison"]["placement"], bd["poison"]["n_poisons"]) == (32, "random", 7)
    assert (tg["poison"]["patch_size"], tg["poison"]["placement"], tg["poison"]["n_poisons"]) == (16, "corner", 3)
    assert bd["train"]["epochs"] == 2 and tg["train"]["epochs"] == 4 and bd["poison"]["seed"] == 1
    # the spec's own sections are not changed by a sub-grid's settings
    assert s.base["poison"] == {"n_poisons": 7} and s.base["train"] == {"epochs": 2}
    # a sub-grid's settings are part of what makes a trial: change them, change its hash
    s2 = spec(poison={"n_poisons": 7}, train={"epochs": 2}, grid=[
        {"base": {"poison": {"patch_size": 16, "placement": "random"}}, "poison.attack": ["backdoor"], "seed": [0, 1]},
        {"base": {"poison": {"n_poisons": 3}, "train": {"epochs": 4}}, "poison.attack": ["targeted"], "seed": [0]}])
    t2 = {x.name: x for x in expand(s2, FakeStages().resolve)}
    assert t2["attack=backdoor__seed=1"].config_hash != t["attack=backdoor__seed=1"].config_hash
    assert t2["attack=targeted__seed=0"].config_hash == t["attack=targeted__seed=0"].config_hash


def test_unknown_field_in_a_sub_grid_base_fails_at_expansion():
    with pytest.raises(UserError, match=r"unknown field.*patch_sise"):
        expand(spec(grid=[{"base": {"poison": {"patch_sise": 8}}, "seed": [0]}]), FakeStages().resolve)


def test_unknown_stage_field_fails_at_expansion():
    with pytest.raises(UserError, match="unknown field"):
        expand(spec(grid={"train.epochz": [1]}), FakeStages().resolve)


def test_load_spec_reports_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_spec(bad)
    good = tmp_path / "my-sweep.yaml"
    good.write_text(f"stages: {FAKE}\ngrid:\n  seed: [0, 1]\n")
    s = load_spec(good, allow_custom_stages=True)
    assert s.name == "my-sweep" and s.axes == ("seed",)
    # to_dict -> parse_spec gives back the ORIGINAL spec, for the loaded one and for one that
    # sets every field away from its default (two grids, base sections, seed fields, ...)
    assert parse_spec(s.to_dict(), source=s.source, default_name="x", allow_custom_stages=True) == s
    rich = parse_spec({"name": "r", "description": "d", "stages": FAKE, "baseline": False,
                       "seed_fields": ["poison.seed"], "poison": {"attack": "backdoor", "patch_size": 8},
                       "train": {"epochs": 2}, "report": {"axes": {"poisons": "poison.n_poisons"}, "table": "attacks"},
                       "grid": [{"poison.n_poisons": [5, 20], "seed": [0, 1]},
                                {"base": {"train": {"epochs": 3}}, "poison.patch_size": [8, 32]}]},
                      source="r.yaml", allow_custom_stages=True)
    back = parse_spec(rich.to_dict(), source="r.yaml", allow_custom_stages=True)
    assert back == rich
    assert back.grids == ((("poison.n_poisons", (5, 20)), ("seed", (0, 1))), (("poison.patch_size", (8, 32)),))
    assert back.grid_bases == ({}, {"train": {"epochs": 3}})
    assert back.base["poison"] == {"attack": "backdoor", "patch_size": 8} and back.baseline is False


def test_seed_axis_reaches_poisons_training_and_evaluation():
    """Each replicate is an independent draw end to end: poisons, model and the evaluation's
    random choices (test-time patch positions, probe split) all follow the trial's seed."""
    from poisonclip.experiments.stages import PoisonclipStages

    trials = expand(spec(stages="poisonclip", poison={"attack": "targeted", "random_targets": 2, "n_poisons": 3},
                         grid={"seed": [0, 3]}), PoisonclipStages().resolve)
    t = {tr.params["seed"]: tr for tr in trials}
    for seed in (0, 3):
        cfg = t[seed].config
        assert cfg["poison"]["seed"] == cfg["train"]["seed"] == cfg["eval"]["seed"] == seed
    assert t[0].keys.poison != t[3].keys.poison  # new targets per seed
