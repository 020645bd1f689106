"""A training run on the console: one progress bar, one line per finished epoch.

Consumes the events ``poisonclip.train.run.train`` emits; the full trainer output stays in
the run folder (``out.log`` from open_clip, ``console.log`` with everything else).
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from poisonclip.train.logparse import EpochStart, Resumed, StepLog
from poisonclip.train.run import Launched, Output


class RichReporter:
    """Callable event handler; use as a context manager around ``train`` (or around several
    runs, as the demo does: each new run replaces the previous run's bar, whose epoch lines
    stay printed). Inside another live display (the demo's sweep bar) it shows below it."""

    def __init__(self, console: Console, verbose: bool = False):
        self.console = console
        self.verbose = verbose
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[sps]} samples/s"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
            # Redraw rarely: the trainer needs the cores; a step takes seconds on CPU anyway.
            refresh_per_second=2)
        self.task = None
        self.epochs = 0
        self.steps = 0
        self.batch = 0
        self._time = 0.0

    def __enter__(self) -> RichReporter:
        return self

    def __exit__(self, *exc) -> None:
        if self.task is not None:
            self.progress.stop()

    def __call__(self, ev: object) -> None:
        p = self.progress
        if isinstance(ev, Launched):
            pl = ev.processes
            where = f"{pl.device}" + (f" x {pl.world_size} processes" if pl.world_size > 1 else "")
            p.console.print(f"training [bold]{escape(ev.model)}[/] on {escape(ev.data.source)} "
                            f"({ev.data.num_samples} samples, {ev.data.dataset_type}), {ev.epochs} epochs x "
                            f"{ev.steps_per_epoch} steps, {where}")
            p.console.print(f"run folder: {escape(str(ev.run_dir))}")
            self.epochs, self.steps, self.batch = ev.epochs, ev.steps_per_epoch, ev.batch_size
            self._time = 0.0
            if self.task is not None:   # the previous run's bar
                p.remove_task(self.task)
            p.start()  # only now: a request refused before launch leaves the console clean
            self.task = p.add_task(f"epoch 1/{ev.epochs}", total=ev.epochs * ev.steps_per_epoch,
                                   loss="-", sps="-")
        elif self.task is None:
            if isinstance(ev, Output) and self.verbose:
                p.console.print(escape(ev.line), style="dim", highlight=False)
        elif isinstance(ev, Resumed):
            p.console.print(f"resuming after epoch {ev.epoch} from {escape(ev.checkpoint)}")
            p.update(self.task, completed=ev.epoch * self.steps)
        elif isinstance(ev, EpochStart):
            self._time = 0.0
            p.update(self.task, description=f"epoch {ev.epoch + 1}/{self.epochs}",
                     completed=ev.epoch * self.steps)
        elif isinstance(ev, StepLog):
            self._time += ev.batch_time * ev.window
            sps = ev.step * self.batch / self._time if self._time > 0 else 0.0
            p.update(self.task, completed=ev.epoch * self.steps + ev.step,
                     loss=f"{ev.loss:.4f}", sps=f"{sps:.0f}")
            if ev.step >= ev.steps_in_epoch:
                p.console.print(f"epoch {ev.epoch + 1}/{self.epochs}  loss {ev.loss_avg:.4f}  "
                                f"{sps:.1f} samples/s  {self._time:.1f} s")
        elif isinstance(ev, Output) and self.verbose:
            p.console.print(escape(ev.line), style="dim", highlight=False)
