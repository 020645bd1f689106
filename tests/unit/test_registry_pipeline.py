"""The registries are honoured everywhere: a registered caption set is a caption source, plain
settings become any attack's config by its field types, errors name settings (the CLI turns
them into its flags), and the evaluator reaches the attacks only through the registry."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from poisonclip.attacks.api import TargetedConfig, TargetSpec, plan
from poisonclip.attacks.registry import ATTACKS
from poisonclip.cli.common import flag_for, user_message
from poisonclip.errors import SettingError, UserError
from tests import registry_toy as toy
from tests.attack_fixtures import make_tiny

SRC = Path(__file__).resolve().parents[2] / "src" / "poisonclip"


@pytest.fixture
def solid_square():
    toy.register()
    yield
    toy.unregister()


def test_a_registered_caption_set_is_a_caption_source(solid_square, tmp_path):
    tiny = make_tiny(tmp_path / "d", n=20)
    p = plan(TargetedConfig(data=str(tiny.csv), out=str(tmp_path / "o"),
                            targets=(TargetSpec("key:k00001", "moon", 4, caption_source="fixed-phrase"),)))
    assert {i.caption for i in p.items} <= set(toy.fixed_phrase("moon").captions) and len(p.items) == 4
    assert p.section["targets"][0]["caption_source"] == "fixed-phrase"


def test_an_unregistered_caption_source_names_the_setting_and_the_known_ones(tmp_path):
    tiny = make_tiny(tmp_path / "d", n=20)
    with pytest.raises(SettingError, match=r"^targets\[0\]\.caption_source: 'nope' is not one of search, templates$"):
        plan(TargetedConfig(data=str(tiny.csv), out=str(tmp_path / "o"),
                            targets=(TargetSpec("key:k00001", "moon", 4, caption_source="nope"),)))


def test_settings_become_any_attacks_config_by_its_field_types(solid_square):
    cfg = ATTACKS.get("targeted").config_from(
        {"targets": [{"image": "a.png", "label": "moon", "n_poisons": 2}], "caption_files": ["c.json"]},
        data="d", out="o")
    assert cfg.targets == (TargetSpec("a.png", "moon", 2),) and cfg.caption_files == ("c.json",)
    toy_cfg = ATTACKS.get("solid-square").config_from({"target_label": "circle", "n_poisons": 3}, data="d", out="o")
    assert isinstance(toy_cfg, toy.SolidSquareConfig) and toy_cfg.patch_size == 32
    with pytest.raises(SettingError, match=r"^placement: 'middle' is not one of corner, random$"):
        ATTACKS.get("backdoor").config_from({"target_label": "c", "n_poisons": 1, "placement": "middle"},
                                            data="d", out="o")
    with pytest.raises(SettingError, match=r"^targets\[0\]: unknown field\(s\) \['colour'\]"):
        ATTACKS.get("targeted").config_from({"targets": [{"image": "a", "label": "b", "n_poisons": 1,
                                                          "colour": 1}]}, data="d", out="o")


def test_the_cli_names_a_setting_by_its_flag():
    flags = {"target_label": "--label"}
    assert flag_for("patch_size") == "--patch-size" and flag_for("target_label", flags) == "--label"
    assert flag_for("targets[2].n_poisons") == "--n-poisons (target 2)"
    assert user_message(SettingError("patch_size", "must be positive"), flags) == "--patch-size: must be positive"
    assert user_message(UserError("x.tsv: not found"), flags) == "x.tsv: not found"


def test_evaluate_reaches_the_attacks_through_the_registry_only():
    """The evaluator is a later stage than poisoning: of the attacks it may use the registry
    (the trigger function, each attack's evaluation) and nothing else."""
    seen = {}
    for path in sorted((SRC / "evaluate").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                if name.startswith("poisonclip.attacks"):
                    seen.setdefault(name, []).append(path.name)
    assert set(seen) == {"poisonclip.attacks.registry"}, seen


def test_no_stage_or_evaluator_names_a_builtin_attack_outside_its_own_module():
    """The sweep stages and the evaluator's generic modules find attacks by registry lookup."""
    for path in [SRC / "experiments" / "stages.py", *(SRC / "evaluate").glob("*.py")]:
        if path.name in ("backdoor.py", "targeted.py"):   # the built-in attacks' own evaluations
            continue
        text = path.read_text(encoding="utf-8")
        for name in ('"targeted"', "BackdoorConfig", "TargetedConfig", "poison.backdoor", "poison.targets"):
            assert name not in text, (path.name, name)


def test_a_registered_trigger_is_a_backdoor_setting_and_an_unknown_one_names_the_flag(solid_square, tmp_path):
    from typer.testing import CliRunner

    from poisonclip.attacks.api import BackdoorConfig
    from poisonclip.cli import app

    tiny = make_tiny(tmp_path / "d", n=20)
    p = plan(BackdoorConfig(data=str(tiny.csv), out=str(tmp_path / "o"), target_label="star", n_poisons=2,
                            trigger="solid-square", no_classnames=True, exclude_labels=("2",)))
    assert {i.trigger for i in p.items} == {"solid-square"} and p.section["backdoor"]["trigger"] == "solid-square"
    r = CliRunner().invoke(app, ["poison", "backdoor", str(tiny.csv), "--out", str(tmp_path / "o"), "--label", "star",
                                 "--n-poisons", "2", "--trigger", "nope"])
    assert r.exit_code == 2
    assert r.output.strip() == ("error: --trigger: 'nope' is not one of "
                                 "blended, checkerboard, noise-patch, solid-square, warp")
    assert not (tmp_path / "o").exists()
