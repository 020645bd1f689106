"""What `--overwrite` (and any output) may replace: only a previous output of the same kind.

Every refusal is one line with exit code 2 and leaves every file where it was.
"""

from __future__ import annotations

import json
import os
import stat

import pytest
from typer.testing import CliRunner

from poisonclip import io_utils
from poisonclip.cli import app
from poisonclip.data.csv_io import write_csv
from poisonclip.data.sample import Sample
from poisonclip.errors import UserError
from tests.attack_fixtures import make_tiny
from tests.conftest import make_samples
from tests.cli_errors import one_line_error

runner = CliRunner()


def _kind():
    return io_utils.OutputKind("test output", (("done.json", ("ok",)),))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("safety") / "d", n=24)


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _snapshot(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _backdoor(data, out, *extra):
    return _run("poison", "backdoor", data, "--out", out, "--label", "star", "--n-poisons", 3,
                "--patch-size", 8, *extra)


# --- poisonclip poison ------------------------------------------------------------------

def test_overwrite_refuses_a_folder_of_unrelated_files(tiny, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    (out / "sub").mkdir()
    (out / "sub" / "data.bin").write_bytes(b"\x00\x01")
    before = _snapshot(out)
    line = one_line_error(_backdoor(tiny.csv, out, "--overwrite"))
    assert "not a poisoned dataset" in line and "poison.json" in line
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]     # no temp folder left


def test_out_dot_never_replaces_the_working_directory(tiny, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("keep me")
    monkeypatch.chdir(work)
    line = one_line_error(_backdoor(tiny.csv, ".", "--overwrite"))
    assert "working directory" in line
    assert (work / "notes.txt").read_text() == "keep me"
    # even a folder that looks like a poisoned set is not replaced when it is the working directory
    (work / "poison.json").write_text(json.dumps({"attack": "backdoor", "dataset_type": "csv", "train_data": "x"}))
    one_line_error(_backdoor(tiny.csv, ".", "--overwrite"))
    one_line_error(_backdoor(tiny.csv, work.parent, "--overwrite"))   # a folder holding it: refused too
    assert (work / "notes.txt").exists()


def test_out_set_to_the_datasets_own_folder_is_refused(tmp_path):
    tiny = make_tiny(tmp_path / "d", n=24)
    before = _snapshot(tiny.root)
    line = one_line_error(_backdoor(tiny.csv, tiny.root, "--overwrite"))
    assert "input" in line
    # out inside the shard folder (WebDataset input) is refused as well
    one_line_error(_backdoor(tiny.shards, tiny.shards / "poisoned"))
    assert _snapshot(tiny.root) == before


def test_home_directory_is_never_an_output(tiny, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("x")
    monkeypatch.setenv("HOME", str(home))
    line = one_line_error(_backdoor(tiny.csv, home, "--overwrite"))
    assert "home directory" in line and (home / ".bashrc").exists()


def test_overwrite_replaces_a_previous_poisoned_set(tiny, tmp_path):
    out = tmp_path / "p"
    assert _backdoor(tiny.csv, out).exit_code == 0
    first = json.loads((out / "poison.json").read_text())
    line = one_line_error(_backdoor(tiny.csv, out, "--seed", 1))
    assert "already exists" in line and "--overwrite" in line
    r = _backdoor(tiny.csv, out, "--seed", 1, "--overwrite")
    assert r.exit_code == 0, r.output
    second = json.loads((out / "poison.json").read_text())
    assert (first["seed"], second["seed"]) == (0, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]        # the old folder is gone, no temp left


# --- data synth / convert ---------------------------------------------------------------

def _synth(out, *extra):
    return _run("data", "synth", "--out", out, "--n", 12, "--n-test", 8, "--classes", 2, "--resolution", 16,
                "--format", "csv", *extra)


def test_synth_and_convert_replace_only_their_own_kind(tmp_path):
    corpus = tmp_path / "corpus"
    assert _synth(corpus).exit_code == 0
    r = _synth(corpus, "--seed", 3, "--overwrite")
    assert r.exit_code == 0, r.output
    assert json.loads((corpus / "corpus.json").read_text())["config"]["seed"] == 3

    conv = tmp_path / "conv"
    r = _run("data", "convert", corpus / "train.tsv", "--out", conv, "--to", "webdataset")
    assert r.exit_code == 0, r.output
    marker = json.loads((conv / "convert.json").read_text())
    assert marker["n_samples"] == 12 and marker["format"] == "webdataset"
    r = _run("data", "convert", corpus / "train.tsv", "--out", conv, "--to", "csv", "--overwrite")
    assert r.exit_code == 0, r.output
    assert (conv / "train.tsv").is_file() and not list(conv.glob("*.tar"))

    # a converted dataset is not a corpus and a corpus is not a converted dataset
    before = _snapshot(conv)
    assert "synthetic corpus" in one_line_error(_synth(conv, "--overwrite"))
    assert _snapshot(conv) == before
    line = one_line_error(_run("data", "convert", conv / "train.tsv", "--out", corpus, "--to", "csv",
                                "--overwrite"))
    assert "converted dataset" in line and (corpus / "corpus.json").is_file()
    # converting a dataset into its own folder
    one_line_error(_run("data", "convert", conv / "train.tsv", "--out", conv, "--to", "csv", "--overwrite"))
    assert _snapshot(conv) == before


def test_a_folder_that_appears_while_writing_is_never_replaced(tmp_path, monkeypatch):
    import poisonclip.data.corpus as corpus_mod

    out = tmp_path / "c"
    real = corpus_mod.write_csv

    def racing_write_csv(*a, **kw):    # another process creates --out while the corpus is written
        out.mkdir(exist_ok=True)
        (out / "theirs.txt").write_text("theirs")
        return real(*a, **kw)

    monkeypatch.setattr(corpus_mod, "write_csv", racing_write_csv)
    line = one_line_error(_synth(out))
    assert "appeared while this command ran" in line
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]        # the new output was discarded
    # with --overwrite the folder that appeared is still checked: not a corpus, so kept
    line = one_line_error(_synth(out, "--overwrite"))
    assert "not a synthetic corpus" in line and (out / "theirs.txt").read_text() == "theirs"


def test_atomic_dir_rechecks_at_the_swap(tmp_path):
    out = tmp_path / "o"
    with pytest.raises(UserError, match="appeared"):
        with io_utils.atomic_dir(out, kind=_kind()) as tmp:
            (tmp / "new").write_text("new")
            out.mkdir()                         # empty, but it was not there at the start
    assert list(out.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["o"]
    with pytest.raises(UserError, match="not a test output"):
        with io_utils.atomic_dir(tmp_path / "p", overwrite=True, kind=_kind()) as tmp:
            (tmp / "done.json").write_text('{"ok": 1}')
            (tmp_path / "p").mkdir()
            (tmp_path / "p" / "x").write_text("foreign")
    assert (tmp_path / "p" / "x").read_text() == "foreign"
    with io_utils.atomic_dir(tmp_path / "q", kind=_kind()) as tmp:
        (tmp / "done.json").write_text('{"ok": 1}')
    with io_utils.atomic_dir(tmp_path / "q", overwrite=True, kind=_kind()) as tmp:    # its own kind: replaced
        (tmp / "done.json").write_text('{"ok": 2}')
    assert json.loads((tmp_path / "q" / "done.json").read_text()) == {"ok": 2}


def test_check_out_refuses_symlinks_files_and_bad_markers(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        io_utils.check_out(tmp_path / "f", _kind(), overwrite=True)
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "done.json").write_text('{"ok": 1}')
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(UserError, match="symbolic link"):
        io_utils.check_out(tmp_path / "link", _kind(), overwrite=True)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "done.json").write_text('{"other": 1}')    # the marker's name, not its content
    with pytest.raises(UserError, match="no valid done.json"):
        io_utils.check_out(tmp_path / "bad", _kind(), overwrite=True)
    assert io_utils.check_out(tmp_path / "real", _kind(), overwrite=True) == tmp_path / "real"


def test_output_folders_get_the_umask_not_0700(tmp_path, monkeypatch):
    monkeypatch.setattr(io_utils, "_UMASK", 0o022)
    assert _synth(tmp_path / "c").exit_code == 0
    assert stat.S_IMODE(os.stat(tmp_path / "c").st_mode) == 0o755


# --- train and eval ---------------------------------------------------------------------

def test_train_overwrite_refuses_a_folder_whose_config_json_is_not_a_run(tmp_path):
    t = write_csv(make_samples(4), tmp_path / "d")
    model = tmp_path / "hf-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 768}))
    (model / "pytorch_model.bin").write_bytes(b"weights")
    before = _snapshot(model)
    line = one_line_error(_run("train", t, "--out", model, "--overwrite", "--batch-size", 2,
                                "--model", "poisonclip-test"))
    assert "not a training run" in line
    assert _snapshot(model) == before
    line = one_line_error(_run("train", t, "--out", tmp_path / "d", "--batch-size", 2, "--model", "poisonclip-test"))
    assert "input" in line and t.is_file()


def test_train_overwrite_replaces_a_previous_run(tmp_path):
    from poisonclip.train.dataset import TrainData
    from poisonclip.train.run import TrainConfig, _prepare_run_dir

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    io_utils.atomic_write_json(run / "run.json", {"model": "m", "checkpoint": None, "epochs": 1, "train_data": "x.tsv"})
    data = TrainData.__new__(TrainData)
    object.__setattr__(data, "train_data", str(tmp_path / "x.tsv"))
    _prepare_run_dir(TrainConfig(data=str(tmp_path / "x.tsv"), out=str(run), overwrite=True), run, data)
    assert not run.exists()


def test_eval_overwrite_replaces_only_poisonclips_metrics(tmp_path):
    from poisonclip.contracts import METRICS_SCHEMA as SCHEMA
    from poisonclip.evaluate.api import _check_metrics_out

    (tmp_path / "metrics.json").write_text(json.dumps({"accuracy": 0.9}))    # another tool's
    with pytest.raises(UserError, match="already exists"):
        _check_metrics_out(tmp_path, overwrite=False)
    with pytest.raises(UserError, match="not a metrics file written by"):
        _check_metrics_out(tmp_path, overwrite=True)
    (tmp_path / "metrics.json").write_text(json.dumps({"schema": SCHEMA}))
    _check_metrics_out(tmp_path, overwrite=True)


def test_atomic_write_without_replace_never_replaces(tmp_path):
    f = tmp_path / "m.json"
    io_utils.atomic_write_json(f, {"a": 1}, replace=False)
    with pytest.raises(FileExistsError):
        io_utils.atomic_write_json(f, {"a": 2}, replace=False)
    assert json.loads(f.read_text()) == {"a": 1} and [p.name for p in tmp_path.iterdir()] == ["m.json"]


# --- terminal output --------------------------------------------------------------------

def test_control_characters_from_captions_never_reach_the_terminal(tmp_path):
    from PIL import Image

    img = Image.new("RGB", (8, 8))
    samples = [Sample.from_pil(f"k{i}", img, cap) for i, cap in enumerate(
        ["a star\x1b[2J\x1b]0;pwned\x07 on the sky", "one star\x9b31m red", "a plain star"])]
    t = write_csv(samples, tmp_path / "d")
    r = _run("poison", "captions", t, "--label", "star", "--no-plurals")
    assert r.exit_code == 0, r.output
    assert not any(c in r.output for c in "\x1b\x07\x9b"), r.output
    assert "a star\\x1b[2J\\x1b]0;pwned\\x07 on the sky" in r.output and "one star\\x9b31m red" in r.output


def test_error_lines_escape_control_characters(capsys):
    from poisonclip.cli.common import fail, safe_text

    assert safe_text("a\x1b[2Jb\r\n\u202ec") == "a\\x1b[2Jb\\r\\n\\u202ec"
    assert safe_text("plain, ünïcode 日本\tx") == "plain, ünïcode 日本\\tx"
    exit_ = fail("bad key 'x\x1b[31m'\nsecond line")
    assert capsys.readouterr().err == "error: bad key 'x\\x1b[31m'\\nsecond line\n"
    assert exit_.exit_code == 2


def test_caption_set_out_never_replaces_another_file(tmp_path):
    tiny = make_tiny(tmp_path / "d", n=24)
    table = tiny.csv.read_bytes()
    line = one_line_error(_run("poison", "captions", tiny.csv, "--label", "star", "--out", tiny.csv))
    assert "not a poisonclip caption set" in line and tiny.csv.read_bytes() == table
    saved = tmp_path / "star.json"
    for _ in range(2):                      # an earlier caption set is replaced
        r = _run("poison", "captions", tiny.csv, "--label", "star", "--out", saved)
        assert r.exit_code == 0, r.output
    assert json.loads(saved.read_text())["captions"]
