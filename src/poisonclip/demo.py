"""The demo: the paper's two attacks end to end on the embedded corpus, as a sweep.

The demo is data, not code of its own: ``specs/demo.yaml`` and ``specs/demo-quick.yaml``
(shipped with the package) say what runs -- per seed a clean, a backdoored and a
targeted-poisoned model, the clean model measured against both attacks as the control --
and the sweep engine (``poisonclip.experiments``) runs them with its content-keyed artefacts
and resume, as it runs every other sweep. The page and ``summary.json`` come from the one
report builder (``poisonclip.report.sweep_report``, the specs' ``report: {table: attacks}``).
What is left here is applying the command's options to the spec.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping

from poisonclip.errors import SettingError, UserError
from poisonclip.experiments.runner import (EventSink, LocalRunner, Outcome, Runner, SweepResult, no_events,
                                          run_sweep)
from poisonclip.experiments.spec import SEED_AXIS, SweepSpec, load_spec, parse_spec, read_spec_name
from poisonclip.experiments.stages import TrainEvents
from poisonclip.experiments.store import SPEC_FILE
from poisonclip.report.sweep_report import SUMMARY_JSON, build_report

SPECS = {False: "demo.yaml", True: "demo-quick.yaml"}
NAMES = ("demo", "demo-quick")   # the packaged specs' names: a demo folder may hold either in turn
MIN_TRAIN = 100


def spec_file(quick: bool = False) -> Path:
    """The packaged spec of the demo (``quick``: the test-sized one)."""
    return Path(str(resources.files("poisonclip") / "specs" / SPECS[quick]))


def demo_spec(quick: bool = False, seeds: int = 1, epochs: int | None = None, n_train: int | None = None,
              raw: Mapping[str, Any] | None = None) -> SweepSpec:
    """The demo's spec with seeds 0..seeds-1 in every sub-grid, and the training epochs and
    the corpus' training size replaced where given. ``raw``: start from this spec data
    instead of the packaged one (tests shrink the demo this way)."""
    for setting, value, minimum in (("seeds", seeds, 1), ("epochs", epochs, 1), ("n_train", n_train, MIN_TRAIN)):
        if value is not None and value < minimum:
            raise SettingError(setting, f"must be at least {minimum}, got {value}")
    source = spec_file(quick)
    data = dict(raw) if raw is not None else load_spec(source).to_dict()
    grids = data.get("grid") or [{}]
    grids = [dict(g) for g in (grids if isinstance(grids, list) else [grids])]
    for g in grids:
        g[SEED_AXIS] = list(range(seeds))
    data["grid"] = grids
    if epochs is not None:
        data["train"] = {**(data.get("train") or {}), "epochs": epochs}
    if n_train is not None:
        data["corpus"] = {**(data.get("corpus") or {}), "n_train": n_train}
    return parse_spec(data, source=str(source))


@dataclass(frozen=True)
class DemoResult:
    out: Path
    sweep: SweepResult
    summary: dict[str, Any]       # what summary.json holds: the clean-vs-attack table
    report: Path
    wall_s: float

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.sweep.outcomes if o.state == "failed"]


def run_demo(spec: SweepSpec, out: str | Path, on_event: EventSink = no_events, runner: Runner | None = None,
             note: Callable[[str], None] | None = None, train_events: TrainEvents | None = None) -> DemoResult:
    """Run (or resume) the demo in ``out`` and write ``out/report.html`` and
    ``out/summary.json``. A finished step is reused; a changed setting builds what it
    changes (the artefacts are keyed by their configs), so the folder can be rerun with other
    options, or hold the quick and the full demo in turn (the other one's results table moves
    to ``previous/``, its artefacts stay and are reused where they match). A folder of any
    other sweep is refused. ``train_events`` sees every training run's events (the command's
    per-step progress bar); the trials then run in this process (``LocalRunner``)."""
    if train_events is not None:
        if runner is not None:
            raise ValueError("train_events needs the demo's own LocalRunner; give one or the other")
        runner = LocalRunner(train_events=train_events)
    t0 = time.perf_counter()
    out = Path(out).absolute()
    owner = read_spec_name(out / SPEC_FILE)
    if owner is not None and owner != spec.name and owner not in NAMES:
        raise UserError(f"{out}: holds the sweep {owner!r}, not a demo; give the demo a folder of its own")
    result = run_sweep(spec, out, runner, on_event, rerun_changed=True, force=True, note=note)
    report = build_report(out, out)
    summary = report.summary if report.summary is not None else {}
    return DemoResult(out, result, summary, report.html, time.perf_counter() - t0)


__all__ = ["DemoResult", "SUMMARY_JSON", "demo_spec", "run_demo", "spec_file"]
