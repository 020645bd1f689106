"""``poisonclip demo``: the paper's attacks end to end on the embedded corpus (the packaged
demo spec, run by the sweep engine)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from poisonclip.cli.common import App, console, safe_text

_FLAGS = {"n_train": "--n"}   # the others are the setting's own name as a flag
# Each of a trial's stages, as the demo tells it (an artefact already built is reused at once).
_STAGES = {"corpus": "corpus", "poison": "poisoned dataset", "train": "poisoned model",
           "train-clean": "clean model of this seed (one for every attack)",
           "eval": "evaluating the poisoned model", "eval-clean": "evaluating the clean model against these poisons"}


def demo(
    out: Annotated[Optional[Path], typer.Option(help="Working folder (reused: finished steps are skipped).")] = None,
    seeds: Annotated[int, typer.Option(help="Models per dataset (seeds 0..N-1); statistics are over these.")] = 1,
    quick: Annotated[bool, typer.Option(help="A small, fast run (the one the tests use).")] = False,
    epochs: Annotated[Optional[int], typer.Option(help="Override the preset's epochs.")] = None,
    n: Annotated[Optional[int], typer.Option(help="Override the corpus' training size.")] = None,
    quiet: Annotated[bool, typer.Option(help="No live progress bars (the sweep's and each training's).")] = False,
) -> None:
    """Generate the corpus, poison it two ways, train clean and poisoned models, measure, report."""
    from poisonclip.demo import demo_spec, run_demo
    from poisonclip.experiments.progress import SweepProgress
    from poisonclip.experiments.runner import Event, count_done
    from poisonclip.report.tables import column_name, format_cell, is_percent
    from poisonclip.train.progress import RichReporter

    spec = demo_spec(quick, seeds, epochs, n)   # a SettingError is printed with the flag (register's flags)
    out = out or Path("runs") / spec.name
    n_trials, n_done = count_done(spec, out)
    console.print(f"demo [bold]{spec.name}[/]: {n_trials} trials ({seeds} seed(s) x {len(spec.grids)} attacks), "
                  f"{n_done} already done -> {escape(safe_text(out))}")

    def say(event: Event) -> None:
        if event.kind == "stage":
            console.print(f"[bold cyan]»[/] {escape(event.trial)}: {_STAGES.get(event.stage, event.stage)}")

    def note(msg: str) -> None:
        console.print(safe_text(msg), markup=False, highlight=False)

    if quiet:
        res = run_demo(spec, out, say, note=note)
    else:
        # the sweep's bar, and below it the bar of the model in training, step by step
        with SweepProgress(n_trials, n_done, 1, console=console) as progress, RichReporter(console) as training:
            res = run_demo(spec, out, lambda e: (say(e), progress(e)), note=note, train_events=training)

    summary = res.summary
    columns = summary.get("columns", [])
    table = Table(title="clean vs poisoned (held-out test split)")
    for col in ("metric", *(f"{column_name(c)} model" if c == "clean" else column_name(c) for c in columns)):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for r in summary.get("rows", []):
        table.add_row(r["metric"], *(format_cell(r.get(k), is_percent(r["metric"])) for k in columns))
    console.print(table)
    for kind, t in summary.get("accuracy_tests", {}).items():
        p = t.get("p_value")
        verdict = "a significant loss" if t.get("significant_loss") else "no significant loss"
        pairs = f"{t['n_pairs']} pairs" if t.get("paired") else f"{t.get('n_poisoned')} vs {t.get('n_clean')} models"
        console.print(f"clean accuracy, {kind} vs clean: {100 * t['diff']:+.1f} points "
                      f"({t['test']}, {pairs}, p={'n/a' if p is None else f'{p:.3g}'}): {verdict}")
    for g in summary.get("goals", []):   # which of the demo's goals each seed met
        seeds = "; ".join(f"seed {s}: {'met' if v['met'] else 'NOT met' if v['met'] is False else 'not measured'} "
                          f"({v['values']})" for s, v in g.get("per_seed", {}).items())
        console.print(escape(f"goal {g['verdict'].upper() if g['met'] is False else g['verdict']}: {g['goal']} "
                             f"[{seeds}]"))
    console.print(f"report: [bold]{escape(safe_text(res.report))}[/]")
    console.print(f"total time: {res.wall_s / 60:.1f} min")
    for o in res.failed:
        typer.echo(safe_text(f"failed {o.name}: {o.error}"))
    if res.failed:
        console.print(f"see `poisonclip sweep status {escape(safe_text(res.out))}` for the errors; "
                      "rerun the demo to retry them")
        raise typer.Exit(code=1)


def register(root: App) -> None:
    root.command(name="demo", flags=_FLAGS)(demo)
