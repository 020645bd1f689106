"""Bad input to `eval-compare`, `sweep table --columns` and `demo --seeds`: exit 2, one line
naming what to fix, nothing written."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from poisonclip.cli import app
from poisonclip.experiments.runner import LocalRunner, run_sweep
from poisonclip.experiments.spec import parse_spec
from tests.sweep_fakes import FakeStages
from tests.cli_errors import one_line_error

runner = CliRunner()


def test_eval_compare_on_files_that_are_not_metrics(tmp_path):
    other = tmp_path / "run.json"
    other.write_text(json.dumps({"model": "x", "checkpoint": "y"}))
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    empty = tmp_path / "empty"
    empty.mkdir()
    for poisoned, clean, needle in [
        (other, other, f"{other}: not a poisonclip metrics file"),
        (listed, other, f"{listed}: not a poisonclip metrics file"),
        (text, other, f"{text}: not valid JSON"),
        (empty, other, f"{empty}: no metrics.json below this folder"),
        (tmp_path / "nope.json", other, "nope.json: not found"),
    ]:
        one_line_error(runner.invoke(app, ["eval-compare", str(poisoned), "--clean", str(clean),
                                            "--json", str(tmp_path / "cmp.json")]), needle)
    assert not (tmp_path / "cmp.json").exists()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("tbl")
    spec = parse_spec({"name": "tbl", "stages": "tests.sweep_fakes:FakeStages",
                       "grid": {"poison.n_poisons": [5, 20], "seed": [0]}}, allow_custom_stages=True)
    run_sweep(spec, root / "s", LocalRunner(FakeStages()))
    return root / "s"


def test_sweep_table_with_an_unknown_column(sweep, tmp_path):
    ok = runner.invoke(app, ["sweep", "table", str(sweep), "--columns", "trial"])
    assert ok.exit_code == 0, ok.output  # the control: a known column prints
    line = one_line_error(runner.invoke(app, ["sweep", "table", str(sweep), "--columns", "trial,no_such_column",
                                               "--csv", str(tmp_path / "t.csv")]),
                           "--columns: ['no_such_column'] not in the table; available: ")
    assert "'trial'" in line  # the available columns are listed to choose from
    assert not (tmp_path / "t.csv").exists()


@pytest.mark.parametrize("args, needle", [
    (["--seeds", "0"], "--seeds: must be at least 1, got 0"),
    (["--seeds", "-2"], "--seeds: must be at least 1, got -2"),
    (["--epochs", "0"], "--epochs: must be at least 1, got 0"),
    (["--n", "50"], "--n: must be at least 100, got 50"),
])
def test_demo_with_bad_counts(tmp_path, args, needle):
    one_line_error(runner.invoke(app, ["demo", "--quick", "--out", str(tmp_path / "d"), "--quiet", *args]), needle)
    assert not (tmp_path / "d").exists()  # refused before anything was generated
