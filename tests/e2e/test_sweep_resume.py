"""kill -9 a running sweep mid-trial, rerun it: nothing lost, nothing duplicated.

The sweep runs as a real subprocess (`poisonclip sweep run`) on stand-in stages, so the
kill lands at a known point: inside the training of the second trial, after the first trial
and the second trial's poisoned dataset are complete.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from poisonclip.experiments.runner import LocalRunner, run_sweep
from poisonclip.experiments.spec import load_spec
from poisonclip.experiments.store import ResultsStore, State, SweepDir, trial_state
from tests.sweep_fakes import FakeStages, calls

ROOT = Path(__file__).resolve().parents[2]
SPEC = """\
name: resume
stages: tests.sweep_fakes:FakeStages
grid:
  poison.n_poisons: [5, 20]
  seed: [0, 1]
"""


def _sweep(spec: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}   # this tree's code
    cmd = [sys.executable, "-c", "from poisonclip.cli import main; main()",
           "sweep", "run", str(spec), "--out", str(out), "--no-report",
           "--allow-custom-stages"]
    return subprocess.Popen(cmd, cwd=out.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"sweep exited ({proc.returncode}) before blocking: {proc.stdout.read().decode()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the sweep never reached the second training")
        time.sleep(0.05)


@pytest.mark.e2e
def test_kill_9_mid_trial_then_resume(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    out = tmp_path / "s"
    out.mkdir()
    (out / "spec.yaml").write_text(SPEC)   # its own sweep folder, so the control file below may sit in it
    (out / "hold-train").write_text("2")   # block the training that starts after 2 finished ones

    proc = _sweep(spec, out)
    _wait_for(out / "blocked", proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    sweep = SweepDir(out)
    trials = {t.name: t for t in sweep.load_trials()}
    states = {n: trial_state(sweep, t) for n, t in trials.items()}
    assert states == {"n_poisons=5__seed=0": State.done, "n_poisons=5__seed=1": State.interrupted,
                      "n_poisons=20__seed=0": State.pending, "n_poisons=20__seed=1": State.pending}
    killed_model = (out / "blocked").read_text()
    assert (out / "cache" / "model" / killed_model).is_dir()           # the half-built model...
    assert not any(json.loads(m.read_text())["folder"] == killed_model  # ...is not marked complete
                   for m in (out / "cache" / "model").glob("*.json"))

    (out / "hold-train").unlink()
    proc = _sweep(spec, out)
    output = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 0, output
    assert "4 trials, 1 already done" in output

    assert all(trial_state(sweep, t) is State.done for t in trials.values())
    df = ResultsStore(sweep.db).frame()
    assert sorted(df["trial"]) == sorted(trials) and df["trial"].is_unique
    log = calls(out)
    done_builds = Counter(k for k, *_ in log)
    assert done_builds == {"corpus": 1, "poison": 4, "train-start": 7, "train": 6, "eval": 8}
    started = Counter(folder for k, folder in log if k == "train-start")
    assert started[killed_model] == 1 and sum(started.values()) == 7   # the killed one restarted anew
    # only complete artefacts are left: one folder per marker
    for kind in ("corpus", "poison", "model"):
        markers = {json.loads(m.read_text())["folder"] for m in (out / "cache" / kind).glob("*.json")}
        assert {p.name for p in (out / "cache" / kind).iterdir() if p.is_dir()} == markers

    # and the numbers are those of a sweep that was never interrupted
    clean = run_sweep(load_spec(spec, allow_custom_stages=True), tmp_path / "uninterrupted", LocalRunner(FakeStages()))
    ref = ResultsStore(clean.sweep.db).frame()
    cols = [c for c in ref.columns if c.startswith(("poisoned.", "clean."))]
    a = df.sort_values("trial")[["trial", *cols]].reset_index(drop=True)
    b = ref.sort_values("trial")[["trial", *cols]].reset_index(drop=True)
    assert a.equals(b)
