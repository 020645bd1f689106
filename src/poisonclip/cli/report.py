"""``poisonclip report``: a sweep folder -> the paper's figures and one self-contained HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from poisonclip.cli.common import App, console


def report(
    sweep_dir: Annotated[Path, typer.Argument(help="A sweep folder (the --out of `poisonclip sweep run`).")],
    out: Annotated[Optional[Path], typer.Option(help="Report folder (default: SWEEP_DIR/report).")] = None,
    title: Annotated[Optional[str], typer.Option(help="Page title.")] = None,
) -> None:
    """Figures (PNG + SVG), summary tables (CSV) and report.html for a finished or running sweep."""
    from poisonclip.report.sweep_report import build_report, require_sweep

    res = build_report(require_sweep(sweep_dir), out, title)
    for name, path in sorted(res.figures.items()):
        console.print(f"figure {name}: {path}")
    for name, path in sorted(res.tables.items()):
        console.print(f"table {name}: {path}")
    console.print(f"report ({res.n_trials} trials): [bold]{res.html}[/]")


def register(root: App) -> None:
    """Add this stage's commands to the root app."""
    root.command(name="report")(report)
