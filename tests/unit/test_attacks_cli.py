"""`poisonclip poison ...` and `poisonclip list` through typer's CliRunner."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from poisonclip.cli import app
from poisonclip.data.csv_io import read_csv
from tests.attack_fixtures import make_tiny

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("cli") / "d", n=40)


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_help_documents_every_option():
    r = _run("poison", "--help")
    assert r.exit_code == 0 and all(c in r.output for c in ("backdoor", "targeted", "captions"))
    r = _run("poison", "backdoor", "--help")
    for opt in ("--label", "--n-poisons", "--patch-size", "--placement", "--noise-sigma", "--perturb-captions",
                "--classnames", "--caption-file", "--seed", "--pool-factor", "--overwrite"):
        assert opt in r.output, opt
    r = _run("poison", "targeted", "--help")
    for opt in ("--target", "--label", "--caption-source", "--random-targets", "--target-source"):
        assert opt in r.output, opt


def test_backdoor_command_writes_the_folder(tiny, tmp_path):
    r = _run("poison", "backdoor", tiny.shards, "--out", tmp_path / "o", "--label", "star", "--n-poisons", 4,
             "--placement", "random", "--patch-size", 8)
    assert r.exit_code == 0, r.output
    assert "open_clip_train.main" in r.output and "4 of 44 samples" in r.output
    info = json.loads((tmp_path / "o" / "poison.json").read_text())
    assert info["backdoor"]["placement"] == "random" and info["backdoor"]["patch_size"] == 8


def test_targeted_command_with_two_targets(tiny, tmp_path):
    imgs = sorted((tiny.root / "images").iterdir())
    r = _run("poison", "targeted", tiny.csv, "--out", tmp_path / "o",
             "--target", imgs[0], "--label", "moon", "--target", imgs[1], "--label", "square",
             "--n-poisons", 3, "--n-poisons", 2, "--caption-source", "templates", "--caption-source", "search")
    assert r.exit_code == 0, r.output
    targets = json.loads((tmp_path / "o" / "poison.json").read_text())["targets"]
    assert [(t["label"], t["n_poisons"], t["caption_source"]) for t in targets] == [
        ("moon", 3, "templates"), ("square", 2, "search")]


@pytest.mark.parametrize("args,message", [
    (["--n-poisons", "0"], "--n-poisons: must be positive"),
    (["--n-poisons", "500"], "readable images"),
    (["--n-poisons", "2", "--patch-size", "300"], "larger than the 224x224 image"),
    (["--n-poisons", "2", "--label", "zebra"], "not in the class list"),
])
def test_backdoor_bad_input_exits_2_with_one_line(tiny, tmp_path, args, message):
    base = ["poison", "backdoor", str(tiny.csv), "--out", str(tmp_path / "o"), "--label", "star"]
    if "--label" in args:
        base = base[:-2]
    r = runner.invoke(app, base + args)
    assert r.exit_code == 2
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "o").exists()


def test_targeted_mismatched_lists_are_user_errors(tiny, tmp_path):
    r = _run("poison", "targeted", tiny.csv, "--out", tmp_path / "o", "--target", "a.png", "--n-poisons", 2)
    assert r.exit_code == 2 and "--label: give one per --target" in r.output
    r = _run("poison", "targeted", tiny.csv, "--out", tmp_path / "o", "--target", "x", "--label", "moon",
             "--n-poisons", 2, "--n-poisons", 3)
    assert r.exit_code == 2 and "one per --target" in r.output


def test_existing_output_exits_2(tiny, tmp_path):
    (tmp_path / "o").mkdir()
    r = _run("poison", "backdoor", tiny.csv, "--out", tmp_path / "o", "--label", "star", "--n-poisons", 2)
    assert r.exit_code == 2 and "already exists" in r.output


def test_captions_preview_and_save(tiny, tmp_path):
    r = _run("poison", "captions", tiny.csv, "--label", "moon", "--n", 3, "--out", tmp_path / "moon.json")
    assert r.exit_code == 0, r.output
    assert "10 distinct captions (10 matches) name 'moon' among 40 captions" in r.output
    saved = json.loads((tmp_path / "moon.json").read_text())
    assert saved["label"] == "moon" and len(saved["captions"]) == 10
    # the file, edited to hold captions the dataset lacks, is what the poisons use
    made_up = ["zq made-up moon caption one", "zq made-up moon caption two"]
    assert not set(made_up) & set(saved["captions"])
    (tmp_path / "moon.json").write_text(json.dumps({**saved, "captions": made_up}))
    r = _run("poison", "backdoor", tiny.csv, "--out", tmp_path / "o", "--label", "moon", "--n-poisons", 4,
             "--caption-file", tmp_path / "moon.json")
    assert r.exit_code == 0, r.output
    written = [s.caption for s in read_csv(tmp_path / "o" / "train.tsv") if s.key.startswith("backdoor-")]
    assert len(written) == 4 and set(written) == set(made_up)
    r = _run("poison", "captions", "--label", "moon", "--source", "templates", "--show", 2)
    assert r.exit_code == 0 and "80 template captions" in r.output and "a bad photo of a moon." in r.output
    r = _run("poison", "captions", tiny.csv, "--label", "zebra")
    assert r.exit_code == 2 and "appears in none of the 40 captions" in r.output


def test_list_command():
    r = _run("list")
    assert r.exit_code == 0
    for name in ("backdoor", "targeted", "checkerboard", "search", "templates"):
        assert name in r.output
    r = _run("list", "triggers")
    assert r.exit_code == 0 and "checkerboard" in r.output and "targeted" not in r.output
    r = _run("list", "detectors")
    assert r.exit_code == 0 and "phash" in r.output and "shared-patch" in r.output and "checkerboard" not in r.output
    assert "image-caption-similarity" in _run("list").output


def test_text_backdoor_command_writes_the_folder_and_names_bad_flags(tiny, tmp_path):
    from tests.cli_errors import one_line_error

    r = _run("poison", "text-backdoor", tiny.csv, "--out", tmp_path / "o", "--label", "moon", "--n-poisons", 3,
             "--token", "zq", "--position", "start")
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "o" / "poison.json").read_text())
    assert info["attack"] == "text-backdoor" and info["n_poisons"] == 3
    assert info["text_backdoor"]["token"] == "zq" and info["text_backdoor"]["position"] == "start"
    one_line_error(_run("poison", "text-backdoor", tiny.csv, "--out", tmp_path / "p", "--label", "moon",
                        "--n-poisons", 3, "--token", "two words"), "--token", "one word")
    one_line_error(_run("poison", "text-backdoor", tiny.csv, "--out", tmp_path / "p", "--label", "moon",
                        "--n-poisons", 3, "--caption-source", "mine"), "--caption-source")
    assert not (tmp_path / "p").exists()
