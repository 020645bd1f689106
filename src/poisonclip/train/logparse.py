"""Read open_clip_train's log lines back into numbers (loss, samples/s per step and epoch).

open_clip_train reports progress only as formatted log lines (``train.py``,
``train_one_epoch``); it has no structured results file for training. Parsing its lines is
how we show progress and fill ``run.json`` without touching the trainer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

_NUM = r"[-+0-9.eEnaif]+"
_STEP = re.compile(
    rf"Train Epoch: (?P<epoch>\d+) \[\s*(?P<samples>\d+)/(?P<epoch_samples>\d+) \((?P<pct>\d+)%\)\] "
    rf"Data \(t\): (?P<data_t>{_NUM}) Batch \(t\): (?P<batch_t>{_NUM}), (?P<sps>{_NUM})/s, .*?"
    rf"LR: (?P<lr>{_NUM}) Logit Scale: (?P<scale>{_NUM}) .*\bLoss: (?P<loss>{_NUM}) \((?P<loss_avg>{_NUM})\)")
_START = re.compile(r"\| INFO \| Start epoch (?P<epoch>\d+)\s*$")
_RESUME = re.compile(r"=> resuming checkpoint '(?P<path>.*)' \(epoch (?P<epoch>\d+)\)")


@dataclass(frozen=True)
class StepLog:
    """One logged step (every ``--log-every-n-steps`` optimizer steps)."""

    epoch: int
    step: int  # optimizer steps done in this epoch, counting this one
    steps_in_epoch: int  # steps this epoch will take
    loss: float
    loss_avg: float  # mean of the logged losses of this epoch so far
    samples_per_s: float  # open_clip's figure for the last step
    data_time: float  # mean seconds per step waiting for data, over the log window
    batch_time: float  # mean seconds per step, over the log window
    window: int  # steps covered by this line (since the previous line of the epoch)
    lr: float
    logit_scale: float


@dataclass(frozen=True)
class EpochStart:
    epoch: int


@dataclass(frozen=True)
class Resumed:
    epoch: int  # epochs already completed in the checkpoint
    checkpoint: str


Event = StepLog | EpochStart | Resumed


class LogParser:
    """Turns open_clip log lines into events; one instance per stream (keeps window state)."""

    def __init__(self, global_batch: int):
        self.global_batch = global_batch
        self._last: dict[int, int] = {}  # epoch -> steps at the previous line

    def feed(self, line: str) -> Event | None:
        if m := _STEP.search(line):
            epoch, samples = int(m["epoch"]), int(m["samples"])
            step = samples // self.global_batch
            pct = int(m["pct"])
            steps_in_epoch = step if pct == 100 else max(step, int(m["epoch_samples"]) // self.global_batch)
            window = max(1, step - self._last.get(epoch, 0))
            self._last[epoch] = step
            return StepLog(
                epoch=epoch, step=step, steps_in_epoch=steps_in_epoch, loss=float(m["loss"]),
                loss_avg=float(m["loss_avg"]), samples_per_s=float(m["sps"]),
                data_time=float(m["data_t"]), batch_time=float(m["batch_t"]), window=window,
                lr=float(m["lr"]), logit_scale=float(m["scale"]))
        if m := _START.search(line):
            self._last.pop(int(m["epoch"]), None)
            return EpochStart(int(m["epoch"]))
        if m := _RESUME.search(line):
            return Resumed(int(m["epoch"]), m["path"])
        return None


@dataclass
class EpochStats:
    epoch: int
    batch_size: int  # global
    steps: int = 0
    loss: float = float("nan")  # mean of the logged step losses
    train_time_s: float = 0.0  # sum of step times (excludes start-up and checkpointing)
    data_time_s: float = 0.0  # part of train_time_s spent waiting for data
    losses: list[float] = field(default_factory=list)  # the logged step losses, in order

    @property
    def samples_per_s(self) -> float:
        return 0.0 if self.train_time_s <= 0 else self.steps * self.batch_size / self.train_time_s

    def as_dict(self) -> dict:
        return {"epoch": self.epoch, "steps": self.steps, "loss": self.loss,
                "samples_per_s": round(self.samples_per_s, 3), "train_time_s": round(self.train_time_s, 3),
                "data_time_s": round(self.data_time_s, 3)}


def summarize(lines: Iterable[str], global_batch: int) -> tuple[list[EpochStats], int | None]:
    """Per-epoch statistics from a whole log (several runs appended after resumes).

    A restarted epoch replaces what an interrupted run had logged for it. Returns the epochs
    in order and the epoch the last resume started from (None if never resumed).
    """
    parser = LogParser(global_batch)
    epochs: dict[int, EpochStats] = {}
    resumed = None
    for line in lines:
        ev = parser.feed(line)
        if isinstance(ev, EpochStart):
            epochs[ev.epoch] = EpochStats(ev.epoch, global_batch)
        elif isinstance(ev, Resumed):
            resumed = ev.epoch
        elif isinstance(ev, StepLog):
            st = epochs.setdefault(ev.epoch, EpochStats(ev.epoch, global_batch))
            st.steps = ev.step
            st.loss = ev.loss_avg
            st.train_time_s += ev.batch_time * ev.window
            st.data_time_s += ev.data_time * ev.window
            st.losses.append(ev.loss)
    return [epochs[k] for k in sorted(epochs)], resumed


def summarize_file(path: str | Path, global_batch: int) -> tuple[list[EpochStats], int | None]:
    with open(path, encoding="utf-8", errors="replace") as f:
        return summarize(f, global_batch)
