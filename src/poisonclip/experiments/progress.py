"""A live view of a sweep with rich: trials done / total, what runs now, and an ETA.

The ETA counts only trials run in this session (skipped ones finish instantly and would make
the sweep look faster than it is): mean wall time of the trials finished so far times the
trials left, divided by how many run at once.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from poisonclip.experiments.runner import Event


class SweepProgress:
    """Context manager and event sink: ``with SweepProgress(total, done, parallel) as p:
    runner.run(..., on_event=p)``."""

    def __init__(self, total: int, already_done: int = 0, parallel: int = 1, console: Console | None = None):
        self.total, self.parallel = total, max(1, parallel)
        self.finished = already_done
        self.durations: list[float] = []
        self.failed = 0
        self.running: dict[str, str] = {}
        self.progress = Progress(TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[eta]}"), TimeElapsedColumn(),
                                 TextColumn("{task.fields[now]}"), console=console, transient=False)
        self.task: Any = None

    def __enter__(self) -> "SweepProgress":
        self.progress.start()
        self.task = self.progress.add_task("sweep", total=self.total, completed=self.finished,
                                           eta="ETA --", now="")
        return self

    def __exit__(self, *exc: Any) -> None:
        self._refresh()
        self.progress.stop()

    def eta_seconds(self) -> float | None:
        if not self.durations:
            return None
        left = self.total - self.finished
        return sum(self.durations) / len(self.durations) * left / self.parallel

    def __call__(self, event: Event) -> None:
        if event.kind == "start":
            self.running[event.trial] = "starting"
        elif event.kind == "stage":
            self.running[event.trial] = event.stage
        elif event.kind == "end":
            self.running.pop(event.trial, None)
            o = event.outcome
            if o is not None and o.state in ("done", "failed"):
                self.durations.append(o.wall_s)
                self.failed += o.state == "failed"
            self.finished += 1
            if o is not None and o.state == "failed":
                self.progress.console.print(f"[red]failed[/] {o.name}: {o.error}")
        self._refresh()

    def _refresh(self) -> None:
        if self.task is None:
            return
        eta = self.eta_seconds()
        eta_text = "ETA --" if eta is None else "ETA " + time.strftime("%H:%M:%S", time.gmtime(eta))
        now = "; ".join(f"{t} ({s})" for t, s in list(self.running.items())[:2])
        if len(self.running) > 2:
            now += f" +{len(self.running) - 2}"
        self.progress.update(self.task, completed=self.finished, eta=eta_text,
                             now=(f"[red]{self.failed} failed[/] " if self.failed else "") + now)
