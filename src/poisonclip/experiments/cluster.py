"""Sweeps on a cluster through submitit: one job per trial, on Slurm or submitit's local executor.

Why submitit and not Ray: submitit is a small pure-Python package that turns a Python call
into a Slurm job (sbatch, job arrays, requeue on preemption) and has a local executor that
runs the very same pickled job in subprocesses, which is how the tests exercise this path on
CPU. Ray needs a running cluster (or a heavy local start) and a large install for what here is
"run this function N times somewhere"; Slurm is what academic GPU clusters run. No scheduling
is done here: submitit submits, Slurm schedules, each job calls ``run_trial``.

The spec's ``cluster:`` section is passed to ``executor.update_parameters`` unchanged, so any
submitit parameter works (``timeout_min``, ``slurm_partition``, ``gpus_per_node``,
``cpus_per_task``, ``mem_gb``, ``slurm_array_parallelism``, ``slurm_additional_parameters``...).
Resume works as locally: resubmitting the sweep skips finished trials, and a job killed by
the scheduler loses only its own trial.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from poisonclip.errors import UserError
from poisonclip.experiments.runner import Event, EventSink, Outcome, no_events, run_trial_job
from poisonclip.experiments.trials import Trial

CLUSTERS = ("slurm", "local", "debug")
_DEFAULTS = {"timeout_min": 240}   # submitit's local executor would otherwise kill a job after 2 min


@dataclass
class SubmititRunner:
    """Submit every trial as one job (a job array on Slurm) and wait for them all.

    ``cluster``: "slurm", "local" (subprocesses on this machine) or "debug" (in this process,
    for debugging), or None to let submitit pick (Slurm when ``sbatch`` exists).
    """

    cluster: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    folder: Path | None = None          # submitit logs; default SWEEP/submitit
    threads: int | None = None          # torch threads per job; default: the job's CPUs
    poll_s: float = 5.0

    def executor(self, sweep_root: Path) -> Any:
        try:
            import submitit
        except ImportError:
            raise UserError("--runner submitit needs the submitit package: pip install submitit") from None
        if self.cluster is not None and self.cluster not in CLUSTERS:
            raise UserError(f"--cluster must be one of {list(CLUSTERS)}, got {self.cluster!r}")
        folder = self.folder or sweep_root / "submitit"
        ex = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=self.cluster)
        params = {**_DEFAULTS, "name": f"poisonclip-{sweep_root.name}", **dict(self.parameters)}
        try:
            ex.update_parameters(**params)
        except (ValueError, TypeError) as e:
            raise UserError(f"sweep spec: cluster: {e}") from None
        return ex

    def run(self, sweep_root: Path, trials: Sequence[Trial], stages_ref: str,
            on_event: EventSink = no_events) -> list[Outcome]:
        import submitit

        ex = self.executor(sweep_root)
        threads = self.threads or self.parameters.get("cpus_per_task")
        args = [(str(sweep_root), t.to_dict(), stages_ref, threads) for t in trials]
        jobs = ex.map_array(run_trial_job, *zip(*args)) if args else []
        by_id = {job.job_id: t for job, t in zip(jobs, trials)}   # queued, not yet running: no "start"
        outcomes = []
        for job in submitit.helpers.as_completed(jobs, poll_frequency=self.poll_s):
            t = by_id[job.job_id]
            try:
                outcome = Outcome(**job.result())
            except Exception as e:  # noqa: BLE001 - a job killed or failed outside run_trial
                outcome = Outcome(t.name, "failed", error=f"job {job.job_id}: {job_error(str(e))}")
            outcomes.append(outcome)
            on_event(Event("end", t.name, outcome=outcome))
        return outcomes


def job_error(text: str) -> str:
    """The exception line of submitit's failure message (a traceback, then log paths)."""
    trace, _, logs = text.partition("\n----------------------\nYou can check")
    lines = [ln.strip() for ln in trace.strip().splitlines() if ln.strip() and not set(ln.strip()) <= {"-"}]
    err = next((ln for ln in reversed(logs.splitlines()) if ln.strip().endswith(".err")), "")
    return (lines[-1] if lines else "failed") + (f" (log: {err.strip().lstrip('- ')})" if err else "")
