"""``poisonclip sweep``: run a grid of trials with resume, show its state, export its table."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table as RichTable

from poisonclip.cli.common import App, console, safe_text
from poisonclip.errors import UserError

app = App(help="Sweeps: many trials (corpus -> poison -> train -> eval) from one YAML spec, resumable.")


class RunnerKind(str, Enum):
    local = "local"
    pool = "pool"
    submitit = "submitit"


class Cluster(str, Enum):
    auto = "auto"
    slurm = "slurm"
    local = "local"
    debug = "debug"


@app.command()
def run(
    spec: Annotated[Path, typer.Argument(help="Sweep spec (YAML), e.g. configs/sweep-ci.yaml.")],
    out: Annotated[Optional[Path], typer.Option(help="Sweep folder (default: runs/<spec name>). "
                                                     "Rerunning into it resumes.")] = None,
    runner: Annotated[RunnerKind, typer.Option(help="local: one trial at a time here; pool: a process pool; "
                                                    "submitit: one cluster job per trial.")] = RunnerKind.local,
    workers: Annotated[Optional[int], typer.Option(help="Pool size (default: half the cores).")] = None,
    cluster: Annotated[Cluster, typer.Option(help="With --runner submitit: slurm, local (subprocesses "
                                                  "here), debug, or auto.")] = Cluster.auto,
    retry_failed: Annotated[bool, typer.Option(help="Rerun trials that failed before.")] = True,
    rerun_changed: Annotated[bool, typer.Option(help="Redo finished trials whose configuration changed "
                                                     "(otherwise that is an error).")] = False,
    report: Annotated[bool, typer.Option(help="Write the HTML report when the sweep ends.")] = True,
    cache: Annotated[Optional[Path], typer.Option(help="Shared folder of corpora, poisoned datasets and "
                                                       "trained models, reused by every sweep given the same "
                                                       "--cache (e.g. the Fig. 2 and Fig. 4 presets share "
                                                       "their corner models).")] = None,
    force: Annotated[bool, typer.Option(help="Run SPEC in a sweep folder that holds another spec's trials: "
                                             "that spec's results table moves to OUT/previous/ (nothing "
                                             "is deleted).")] = False,
    allow_custom_stages: Annotated[bool, typer.Option(
        help="Trust SPEC: allow `stages: module:object` (imports and runs that Python code) and the "
             "cluster parameters that become shell commands (slurm_setup, ...).")] = False,
) -> None:
    """Run every trial of SPEC not finished yet; safe to interrupt and rerun."""
    from poisonclip.experiments.progress import SweepProgress
    from poisonclip.experiments.runner import LocalRunner, PoolRunner, cpu_count, prepare, run_sweep, sweep_lock
    from poisonclip.experiments.spec import load_spec
    from poisonclip.experiments.store import State, trial_state

    sweep_spec = load_spec(spec, allow_custom_stages=allow_custom_stages)
    out = out or Path("runs") / sweep_spec.name
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if runner is RunnerKind.pool:
        the_runner, parallel = PoolRunner(workers), workers or max(1, cpu_count() // 2)
    elif runner is RunnerKind.submitit:
        from poisonclip.experiments.cluster import SubmititRunner

        the_runner = SubmititRunner(None if cluster is Cluster.auto else cluster.value, sweep_spec.cluster)
        try:
            parallel = int(sweep_spec.cluster.get("slurm_array_parallelism", 8))
        except (TypeError, ValueError):
            raise UserError(f"{spec}: cluster.slurm_array_parallelism: must be a whole number") from None
    else:
        the_runner, parallel = LocalRunner(), 1

    def note(msg: str) -> None:
        console.print(safe_text(msg), markup=False, highlight=False)

    with sweep_lock(out):
        sweep, trials = prepare(sweep_spec, out, rerun_changed=rerun_changed, cache=cache, force=force, note=note)
        done = sum(trial_state(sweep, t) is State.done for t in trials)
        console.print(f"sweep [bold]{sweep_spec.name}[/]: {len(trials)} trials, {done} already done -> "
                      f"{escape(safe_text(sweep.root))}")
        with SweepProgress(len(trials), done, parallel, console=console) as progress:
            result = run_sweep(sweep_spec, out, the_runner, progress, retry_failed=retry_failed,
                               rerun_changed=rerun_changed, cache=cache, lock=False)
    failed = result.count("failed")
    console.print(f"{result.count('done')} trials run, {result.already_done} were done, "
                  f"{result.count('busy')} running elsewhere, {failed} failed")
    if report:
        from poisonclip.report.sweep_report import build_report

        res = build_report(sweep.root)
        console.print(f"report: {res.html}")
    if failed:
        console.print(f"see `poisonclip sweep status {sweep.root}` for the errors")
        raise typer.Exit(code=1)


@app.command()
def status(
    sweep_dir: Annotated[Path, typer.Argument(help="A sweep folder (the --out of `sweep run`).")],
    errors: Annotated[bool, typer.Option(help="Print each failure's error message.")] = True,
) -> None:
    """Done / running / failed / pending trials, with the error of each failure."""
    from poisonclip.experiments.locks import is_held
    from poisonclip.experiments.store import ERROR_FILE, SWEEP_LOCK_FILE, State, SweepDir, read_json, trial_state

    sweep = SweepDir(sweep_dir.resolve())
    trials = sweep.load_trials()
    states = {t.name: trial_state(sweep, t) for t in trials}
    counts = {s: sum(v is s for v in states.values()) for s in State}
    table = RichTable(title=f"{sweep.root.name}: {len(trials)} trials")
    for col in ("state", "trials"):
        table.add_column(col)
    for s in State:
        table.add_row(s.value, str(counts[s]))
    console.print(table)
    if is_held(sweep.root / SWEEP_LOCK_FILE):
        console.print("a `poisonclip sweep run` is working on this folder now")
    running = [n for n, s in states.items() if s is State.running]
    if running:
        console.print("running: " + ", ".join(running))
    for name, s in states.items():
        if s is State.failed and errors:
            err = read_json(sweep.trial(name) / ERROR_FILE) or {}
            typer.echo(safe_text(f"failed {name}: {err.get('type', '?')}: {err.get('message', '')}"))
    interrupted = [n for n, s in states.items() if s is State.interrupted]
    if interrupted:
        console.print(f"interrupted (will rerun): {', '.join(interrupted)}")


# The columns `sweep table` prints by default, with short headers (the CSV has them all).
_MAIN = {"poisoned.top1_zeroshot": "top1", "poisoned.asr_as_trained_zeroshot": "ASR",
         "poisoned.z_as_trained": "z", "poisoned.z_random": "z rand",
         "poisoned.targeted_success_zeroshot": "targeted", "clean.top1_zeroshot": "clean top1"}


@app.command()
def table(
    sweep_dir: Annotated[Path, typer.Argument(help="A sweep folder.")],
    csv: Annotated[Optional[Path], typer.Option(help="Write every column of every finished trial to this CSV.")] = None,
    columns: Annotated[Optional[str], typer.Option(help="Comma-separated columns to print "
                                                        "(default: parameters and main metrics).")] = None,
) -> None:
    """The merged results table (one row per finished trial)."""
    from poisonclip.experiments.store import ResultsStore, SweepDir
    from poisonclip.io_utils import atomic_write_text

    sweep = SweepDir(sweep_dir.resolve())
    trials = sweep.load_trials()
    store = ResultsStore(sweep.db)
    store.sync(sweep, trials)
    df = store.frame("done")
    if columns and not df.empty:  # checked before anything is written
        cols = [c.strip() for c in columns.split(",") if c.strip()]
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise UserError(f"--columns: {missing} not in the table; available: {list(df.columns)}")
    if csv is not None:
        atomic_write_text(csv, df.to_csv(index=False))
        console.print(f"wrote {len(df)} rows to {csv}")
    if df.empty:
        console.print("no finished trials yet")
        return
    if not columns:
        params = list(trials[0].params) if trials else []
        cols = ["trial", *params, *[c for c in _MAIN if c in df.columns]]
    out = RichTable()
    for c in cols:
        out.add_column(_MAIN.get(c, c.rsplit(".", 1)[-1]), no_wrap=c == "trial", overflow="fold")
    for _, row in df[cols].iterrows():
        out.add_row(*[f"{v:.4g}" if isinstance(v, float) else escape(safe_text(v)) for v in row])
    console.print(out)


def register(root: App) -> None:
    """Add this stage's commands to the root app."""
    root.add_typer(app, name="sweep")
