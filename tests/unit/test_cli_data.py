"""`poisonclip data`: the embedded corpus through the CLI, and user mistakes as exit code 2."""

from __future__ import annotations

import hashlib
import json

from typer.testing import CliRunner

from poisonclip.cli import app
from poisonclip.data.csv_io import read_csv
from poisonclip.data.evalset import load_labelled
from poisonclip.data.synthetic import CLASSNAMES
from poisonclip.data.wds_io import read_shards
from poisonclip.io_utils import sha256_file

runner = CliRunner()


def _synth(out, seed=0, n=60):
    return runner.invoke(app, ["data", "synth", "--out", str(out), "--n", str(n), "--n-test", "20",
                               "--seed", str(seed), "--shard-size", "25"])


def _hashes(root):
    """sha256 of every file; tables hash with their own folder written as ROOT (their image
    paths are absolute, so two folders differ there and nowhere else) and corpus.json without
    the tables' hashes (checked against the files)."""
    def digest(p):
        if p.name == "corpus.json":
            info = json.loads(p.read_text())
            tables = info.pop("sha256")
            assert tables == {name: sha256_file(root / name) for name in tables}
            return json.dumps(info, sort_keys=True)
        if p.suffix != ".tsv":
            return sha256_file(p)
        return hashlib.sha256(p.read_bytes().replace(str(root).encode(), b"ROOT")).hexdigest()

    return {str(p.relative_to(root)): digest(p) for p in sorted(root.rglob("*")) if p.is_file()}


def test_synth_writes_csv_shards_and_labelled_test_split(tmp_path):
    r = _synth(tmp_path / "c")
    assert r.exit_code == 0, r.output
    root = tmp_path / "c"
    train = list(read_csv(root / "train.tsv"))
    shards = list(read_shards(root / "shards"))
    assert len(train) == len(shards) == 60
    assert [s.key for s in train] == [s.key for s in shards]
    assert [s.image for s in train] == [s.image for s in shards]
    test = load_labelled(root / "test.tsv")
    assert len(test.samples) == 20 and test.classnames == list(CLASSNAMES)
    info = json.loads((root / "corpus.json").read_text())
    assert info["n_train"] == 60 and info["config"]["seed"] == 0
    assert json.loads((root / "shards" / "sizes.json").read_text()) == {
        "00000.tar": 25, "00001.tar": 25, "00002.tar": 10}


def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        assert _synth(tmp_path / name, seed=seed).exit_code == 0
    a, b, c = (_hashes(tmp_path / x) for x in "abc")
    assert a == b
    assert (tmp_path / "a" / "train.tsv").read_bytes() != (tmp_path / "b" / "train.tsv").read_bytes()  # own paths
    assert a["train.tsv"] != c["train.tsv"] and a["shards/00000.tar"] != c["shards/00000.tar"]


def test_existing_output_is_refused_with_exit_2(tmp_path):
    (tmp_path / "c").mkdir()
    r = _synth(tmp_path / "c")
    assert r.exit_code == 2
    assert "already exists" in r.output and "Traceback" not in r.output


def test_bad_values_and_missing_inputs_exit_2_with_one_line(tmp_path):
    r = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "x"), "--n", "0"])
    assert r.exit_code == 2 and "--n-train must be positive" in r.output
    assert not (tmp_path / "x").exists()
    r = runner.invoke(app, ["data", "info", str(tmp_path / "missing.tsv")])
    assert r.exit_code == 2 and r.output.strip().count("\n") == 0 and "no such file" in r.output


def test_info_reports_skips_and_convert_round_trips(tmp_path):
    assert _synth(tmp_path / "c", n=10).exit_code == 0
    sorted((tmp_path / "c" / "images").iterdir())[3].write_bytes(b"broken")
    r = runner.invoke(app, ["data", "info", str(tmp_path / "c" / "train.tsv")])
    assert r.exit_code == 0 and "9 readable" in r.output and "corrupt_image=1" in r.output
    r = runner.invoke(app, ["data", "convert", str(tmp_path / "c" / "train.tsv"),
                            "--out", str(tmp_path / "w"), "--to", "webdataset"])
    assert r.exit_code == 0, r.output
    assert len(list(read_shards(tmp_path / "w"))) == 9
