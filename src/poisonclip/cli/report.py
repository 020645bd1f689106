"""``poisonclip report``: a sweep folder -> the paper's figures and one self-contained HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from poisonclip.cli.common import App, console


def report(
    sweep_dirs: Annotated[list[Path], typer.Argument(
        help="A sweep folder (the --out of `poisonclip sweep run`); with --pool, several.")],
    out: Annotated[Optional[Path], typer.Option(help="Report folder (default: SWEEP_DIR/report).")] = None,
    title: Annotated[Optional[str], typer.Option(help="Page title.")] = None,
    pool: Annotated[bool, typer.Option(help="Test clean accuracy over every trained model of all the given "
                                             "sweeps (each poisoned model against its seed's clean model); "
                                             "needs --out.")] = False,
) -> None:
    """Figures (PNG + SVG), summary tables (CSV) and report.html for a finished or running sweep."""
    from poisonclip.errors import UserError
    from poisonclip.report.sweep_report import build_report, require_sweep

    if pool:
        from poisonclip.report.pooled import build_pooled

        if out is None:
            raise UserError("--pool: give --out, the folder for the pooled clean-accuracy report")
        res = build_pooled([require_sweep(d) for d in sweep_dirs], out)
        for name, path in sorted({**res.figures, **res.tables}.items()):
            console.print(f"{name}: {path}")
        console.print(f"clean accuracy over {res.n_pairs} poisoned models: [bold]{res.html}[/]")
        return
    if len(sweep_dirs) != 1:
        raise UserError(f"report: got {len(sweep_dirs)} sweep folders; give one, or --pool to test clean "
                        "accuracy over several")
    res = build_report(require_sweep(sweep_dirs[0]), out, title)
    for name, path in sorted(res.figures.items()):
        console.print(f"figure {name}: {path}")
    for name, path in sorted(res.tables.items()):
        console.print(f"table {name}: {path}")
    console.print(f"report ({res.n_trials} trials): [bold]{res.html}[/]")


def register(root: App) -> None:
    """Add this stage's commands to the root app."""
    root.command(name="report")(report)
