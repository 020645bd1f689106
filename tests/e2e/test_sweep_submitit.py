"""The cluster path: one submitit job per trial, through submitit's local executor.

The local executor runs the same pickled job (``run_trial_job``) in subprocesses that a Slurm
node would run; only the submission command differs (sbatch), which cannot be exercised
without a Slurm controller.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from poisonclip.experiments.cluster import SubmititRunner
from poisonclip.experiments.runner import LocalRunner, run_sweep
from poisonclip.experiments.spec import parse_spec
from poisonclip.experiments.store import ResultsStore
from tests.sweep_fakes import FakeStages, calls

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("submitit", reason="the cluster runner needs submitit (pip install submitit)")


@pytest.mark.e2e
def test_submitit_local_executor_runs_every_trial_as_a_job(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))    # the job processes import the stand-in stages
    spec = parse_spec({"name": "cluster", "stages": "tests.sweep_fakes:FakeStages",
                       "grid": {"poison.n_poisons": [5, 20], "seed": [0, 1]},
                       "cluster": {"timeout_min": 10}}, allow_custom_stages=True)
    runner = SubmititRunner(cluster="local", parameters=spec.cluster, poll_s=0.2)
    res = run_sweep(spec, tmp_path / "s", runner)
    assert sorted(o.state for o in res.outcomes) == ["done"] * 4
    assert len(list((tmp_path / "s" / "submitit").glob("*/*_result.pkl"))) == 4   # four real jobs
    # shared artefacts were still built once across the concurrent jobs
    assert Counter(k for k, *_ in calls(tmp_path / "s")) == {
        "corpus": 1, "poison": 4, "train-start": 6, "train": 6, "eval": 8}
    ref = run_sweep(spec, tmp_path / "local", LocalRunner(FakeStages()))
    cols = ["trial", "poisoned.z_as_trained", "clean.top1_zeroshot"]
    a = ResultsStore(res.sweep.db).frame()[cols].sort_values("trial").reset_index(drop=True)
    b = ResultsStore(ref.sweep.db).frame()[cols].sort_values("trial").reset_index(drop=True)
    assert a.equals(b)
    # resubmitting a finished sweep submits nothing
    again = run_sweep(spec, tmp_path / "s", runner)
    assert again.outcomes == [] and again.already_done == 4


@pytest.mark.e2e
def test_a_job_that_dies_outside_the_trial_is_reported_as_failed(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    spec = parse_spec({"name": "broken", "stages": "tests.sweep_fakes:NoSuchStages",
                       "grid": {"seed": [0]}}, allow_custom_stages=True)
    res = run_sweep(spec, tmp_path / "s", SubmititRunner(cluster="local", poll_s=0.2),
                    stages=FakeStages())
    (outcome,) = res.outcomes
    assert outcome.state == "failed" and "NoSuchStages" in outcome.error
