"""``poisonclip demo``: the paper's attacks end to end on the embedded corpus."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from poisonclip.cli.common import App, console
from poisonclip.errors import UserError


def demo(
    out: Annotated[Optional[Path], typer.Option(help="Working folder (reused: finished steps are skipped).")] = None,
    seeds: Annotated[int, typer.Option(help="Models per dataset (seeds 0..N-1); statistics are over these.")] = 1,
    quick: Annotated[bool, typer.Option(help="A small, fast run (the one the tests use).")] = False,
    epochs: Annotated[Optional[int], typer.Option(help="Override the preset's epochs.")] = None,
    n: Annotated[Optional[int], typer.Option(help="Override the corpus' training size.")] = None,
    quiet: Annotated[bool, typer.Option(help="No per-step training progress.")] = False,
) -> None:
    """Generate the corpus, poison it two ways, train clean and poisoned models, measure, report."""
    from poisonclip.demo import DemoConfig, format_cell, is_percent, run_demo
    from poisonclip.train.progress import RichReporter

    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}")
    if epochs is not None and epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {epochs}")
    cfg = DemoConfig.quick() if quick else DemoConfig()
    changes: dict = {"seeds": seeds}
    if out is not None:
        changes["out"] = out
    if epochs is not None:
        changes["epochs"] = epochs
    if n is not None:
        if n < 100:
            raise UserError(f"--n must be at least 100 training samples, got {n}")
        changes["corpus"] = dataclasses.replace(cfg.corpus, n_train=n)
    cfg = dataclasses.replace(cfg, **changes)

    events = None if quiet else (lambda: RichReporter(console))
    res = run_demo(cfg, say=lambda msg: console.print(f"[bold cyan]»[/] {msg}"), train_events=events)

    table = Table(title="clean vs poisoned (held-out test split)")
    for col in ("metric", "clean model", "backdoored", "targeted-poisoned"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for r in res.summary["rows"]:
        table.add_row(r["metric"], *(format_cell(r.get(k), is_percent(r["metric"]))
                                     for k in ("clean", "backdoor", "targeted")))
    console.print(table)
    for kind, t in res.summary.get("accuracy_tests", {}).items():
        p = t.get("p_value")
        verdict = "a significant loss" if t.get("significant_loss") else "no significant loss"
        n = f"{t['n_pairs']} pairs" if t.get("paired") else f"{t.get('n_poisoned')} vs {t.get('n_clean')} models"
        console.print(f"clean accuracy, {kind} vs clean: {100 * t['diff']:+.1f} points "
                      f"({t['test']}, {n}, p={'n/a' if p is None else f'{p:.3g}'}): {verdict}")
    console.print(f"report: [bold]{res.report}[/]")
    console.print(f"total time: {res.wall_s / 60:.1f} min")


def register(root: App) -> None:
    root.command(name="demo")(demo)
