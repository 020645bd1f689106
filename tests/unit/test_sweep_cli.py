"""`poisonclip sweep run|status|table` and `poisonclip report` through typer's CliRunner."""

from __future__ import annotations

import pandas as pd
from typer.testing import CliRunner

from poisonclip.cli import app
from poisonclip.experiments.locks import hold

runner = CliRunner()

SPEC = """\
name: cli
stages: tests.sweep_fakes:FakeStages
grid:
  train.fail: [false, true]
  seed: [0, 1]
"""


def test_run_status_table_report(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    out = tmp_path / "s"
    r = runner.invoke(app, ["sweep", "run", str(spec), "--out", str(out), "--no-report", "--allow-custom-stages"])
    assert r.exit_code == 1, r.output           # two trials fail: the command says so
    assert "2 trials run" in r.output and "2 failed" in r.output
    r = runner.invoke(app, ["sweep", "status", str(out)])
    assert r.exit_code == 0, r.output
    assert "failed fail=true__seed=0: RuntimeError: fake training diverged" in r.output
    assert "failed fail=true__seed=1: RuntimeError" in r.output
    assert "│ done        │ 2" in r.output
    with hold(out / "trials" / "fail=false__seed=1" / ".lock"):
        r = runner.invoke(app, ["sweep", "status", str(out)])
    assert "running: fail=false__seed=1" in r.output
    r = runner.invoke(app, ["sweep", "table", str(out), "--csv", str(tmp_path / "t.csv")])
    assert r.exit_code == 0, r.output
    df = pd.read_csv(tmp_path / "t.csv")
    assert sorted(df["trial"]) == ["fail=false__seed=0", "fail=false__seed=1"]
    assert "fail=false__seed=0" in r.output
    r = runner.invoke(app, ["report", str(out)])
    assert r.exit_code == 0, r.output
    assert (out / "report" / "report.html").is_file()
    # rerun: finished trials are skipped, failed ones retried (and fail again)
    r = runner.invoke(app, ["sweep", "run", str(spec), "--out", str(out), "--no-report", "--allow-custom-stages"])
    assert "4 trials, 2 already done" in r.output and "2 failed" in r.output


def test_user_errors_exit_2_with_one_line(tmp_path):
    r = runner.invoke(app, ["sweep", "run", str(tmp_path / "nope.yaml")])
    assert r.exit_code == 2 and "sweep spec not found" in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: tests.sweep_fakes:FakeStages\ngrid:\n  poison.n_poisons: 5\n")
    r = runner.invoke(app, ["sweep", "run", str(bad), "--out", str(tmp_path / "o"), "--allow-custom-stages"])
    assert r.exit_code == 2 and "grid.poison.n_poisons: must be a non-empty list" in r.output
    r = runner.invoke(app, ["sweep", "status", str(tmp_path)])
    assert r.exit_code == 2 and "not a sweep folder" in r.output
    r = runner.invoke(app, ["report", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "not a folder" in r.output
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    # a VALID spec, so the exit code can only come from --workers
    r = runner.invoke(app, ["sweep", "run", str(spec), "--workers", "0", "--runner", "pool",
                            "--out", str(tmp_path / "w"), "--allow-custom-stages"])
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines() == ["error: --workers must be at least 1, got 0"]
    assert not (tmp_path / "w").exists()
    (tmp_path / "file").write_text("x")
    r = runner.invoke(app, ["sweep", "run", str(spec), "--out", str(tmp_path / "c"), "--cache", str(tmp_path / "file"),
                                  "--allow-custom-stages"])
    assert r.exit_code == 2 and "is not a folder" in r.output
    assert not (tmp_path / "c").exists()
