"""The sweep folder: where each trial's files live, its state, and the merged results table.

Layout of a sweep folder::

    spec.yaml            the spec as run (plain data); its name says which spec owns the folder
    .sweep.lock          held by the `sweep run` working on the folder (one at a time)
    previous/<name>-<time>/  spec, trials and table of another spec, moved there by --force
    trials.json          the expanded trials (what cluster jobs and ``status`` read)
    results.sqlite       one row per finished or failed trial: parameters + metrics
    cache/corpus/<key>.json      shared artefacts, by content key: the marker (written last)
    cache/corpus/<key>-<id>/     names the complete folder; other <key>-* are failed attempts
    cache/poison/...
    cache/model/...
    trials/<name>/       trial.json (start), result.json (done), error.json (failed),
                         eval/ and clean_eval/ (the evaluator's output), .lock (held while running)

A trial's ``result.json`` (``contracts.TrialResult``) is the source of truth for "done": it is written atomically as the
trial's last step, so a ``kill -9`` leaves either no file (the trial reruns) or a complete one.

Results store: **SQLite**, not Parquet. Trials finish one at a time in several processes (pool
workers, cluster jobs); SQLite gives each a transactional upsert of one row with file locking,
and its journal makes a write interrupted by ``kill -9`` roll back instead of corrupting the
file. Parquet files are immutable: every finished trial would rewrite the whole table or add a
file per trial, and concurrent writers need a lock of their own. The table can always be
rebuilt from the trial folders (``sync``), which is also how a row lost between
``result.json`` and the database (a kill in between, or SQLite on an NFS mount that does not
lock) comes back. Exports are CSV (``sweep table --csv``).
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Iterable, Mapping

from poisonclip.contracts import TrialResult, read_trial_result
from poisonclip.errors import UserError
from poisonclip.experiments.locks import is_held
from poisonclip.experiments.trials import Trial
from poisonclip.io_utils import atomic_write_json

TRIALS_DIR = "trials"
CACHE_DIR = "cache"
DB_FILE = "results.sqlite"
SPEC_FILE = "spec.yaml"
TRIALS_FILE = "trials.json"
ERROR_FILE = "error.json"
START_FILE = "trial.json"
LOCK_FILE = ".lock"
SWEEP_LOCK_FILE = ".sweep.lock"
ARCHIVE_DIR = "previous"
# A trial's evaluations: of its poisoned model, and of the clean model of its seed (baseline).
EVAL_DIRS = {"poisoned": "eval", "clean": "clean_eval"}


class State(str, Enum):
    done = "done"
    running = "running"
    failed = "failed"
    interrupted = "interrupted"   # started, not finished, nobody holds it: reruns next time
    pending = "pending"


@dataclass(frozen=True)
class SweepDir:
    root: Path

    def trial(self, name: str) -> Path:
        return self.root / TRIALS_DIR / name

    def cache_marker(self, kind: str, key: str) -> Path:
        """``<key>.json``: present once the artefact is complete; names its folder."""
        return self.root / CACHE_DIR / kind / f"{key}.json"

    def artefact(self, kind: str, key: str | None) -> Path | None:
        """The complete folder of a shared artefact (corpus, poison, model), None if not built."""
        if not key:
            return None
        info = read_json(self.cache_marker(kind, key))
        folder = self.cache_marker(kind, key).parent / str(info.get("folder", "")) if info else None
        return folder if folder is not None and folder.is_dir() else None

    @property
    def db(self) -> Path:
        return self.root / DB_FILE

    @property
    def trials_file(self) -> Path:
        return self.root / TRIALS_FILE

    def load_trials(self) -> list[Trial]:
        if not self.trials_file.is_file():
            raise UserError(f"{self.root}: not a sweep folder (no {TRIALS_FILE}); "
                            "run `poisonclip sweep run SPEC --out DIR` first")
        data = json.loads(self.trials_file.read_text(encoding="utf-8"))
        return [Trial.from_dict(d) for d in data["trials"]]

    def save_trials(self, trials: Iterable[Trial]) -> None:
        atomic_write_json(self.trials_file, {"trials": [t.to_dict() for t in trials]})


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file's content, or None if it is missing (or not JSON, which atomic writes rule
    out for our own files; a hand-edited one is then treated as absent)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def read_result(folder: Path) -> TrialResult | None:
    """A trial folder's result, or None if it has none (a damaged one counts as none: the
    trial runs again and replaces it)."""
    try:
        return read_trial_result(folder)
    except UserError:
        return None


def trial_state(sweep: SweepDir, trial: Trial) -> State:
    folder = sweep.trial(trial.name)
    if is_held(folder / LOCK_FILE):
        return State.running
    record = read_result(folder)
    if record is not None and record.config_hash == trial.config_hash:
        return State.done
    if (folder / ERROR_FILE).exists():
        return State.failed
    if (folder / START_FILE).exists() or record is not None:
        return State.interrupted
    return State.pending


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> one level with dotted keys; lists are kept as JSON text."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(v)
        else:
            out[key] = v
    return out


_SCHEMA = """
CREATE TABLE IF NOT EXISTS trials (
    name TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    params TEXT NOT NULL,
    metrics TEXT,
    error TEXT,
    started REAL,
    finished REAL,
    wall_s REAL,
    host TEXT
)
"""


class ResultsStore:
    """The SQLite table of finished and failed trials. One short transaction per write."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as con:
            con.execute(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a writer takes the
        # write lock up front and waits (timeout) instead of failing on a busy database.
        return sqlite3.connect(self.path, timeout=120, isolation_level=None)

    def _write(self, sql: str, rows: list[tuple]) -> None:
        with closing(self._connect()) as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                con.executemany(sql, rows)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def record_done(self, record: Mapping[str, Any]) -> None:
        self._write("INSERT OR REPLACE INTO trials VALUES (?,?,?,?,?,?,?,?,?,?)", [_done_row(record)])

    def record_failed(self, name: str, config_hash: str, params: Mapping[str, Any],
                      error: Mapping[str, Any]) -> None:
        self._write("INSERT OR REPLACE INTO trials VALUES (?,?,?,?,?,?,?,?,?,?)",
                    [_failed_row(name, config_hash, params, error)])

    def rows(self) -> list[dict[str, Any]]:
        with closing(self._connect()) as con:
            con.row_factory = sqlite3.Row
            cur = con.execute("SELECT * FROM trials ORDER BY name")
            out = []
            for r in cur.fetchall():
                d = dict(r)
                d["params"] = json.loads(d["params"])
                d["metrics"] = json.loads(d["metrics"]) if d["metrics"] else {}
                d["error"] = json.loads(d["error"]) if d["error"] else None
                out.append(d)
            return out

    def sync(self, sweep: SweepDir, trials: Iterable[Trial]) -> None:
        """Make the table agree with the trial folders (the source of truth): add rows whose
        write was lost, and drop rows of trials that are gone or no longer in the spec."""
        rows = []
        for trial in trials:
            folder = sweep.trial(trial.name)
            record = read_result(folder)
            if record is not None and record.config_hash == trial.config_hash:
                rows.append(_done_row(record.to_json()))
                continue
            error = read_json(folder / ERROR_FILE)
            if error is not None:
                rows.append(_failed_row(trial.name, trial.config_hash, trial.params, error))
        with closing(self._connect()) as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                con.execute("DELETE FROM trials")
                con.executemany("INSERT INTO trials VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def frame(self, status: str | None = "done"):
        """One row per trial: ``trial``, the parameter columns, then flattened metrics."""
        import pandas as pd

        records = []
        for r in self.rows():
            if status is not None and r["status"] != status:
                continue
            row: dict[str, Any] = {"trial": r["name"], "status": r["status"]}
            row.update(r["params"])
            row.update(flatten(r["metrics"]))
            row["wall_s"] = r["wall_s"]
            records.append(row)
        return pd.DataFrame.from_records(records)


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=_nan_to_none)


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return str(x)


def _done_row(record: Mapping[str, Any]) -> tuple:
    return (record["name"], State.done.value, record["config_hash"], _json(record["params"]),
            _json(record.get("metrics", {})), None, record.get("started"), record.get("finished"),
            record.get("wall_s"), record.get("host"))


def _failed_row(name: str, config_hash: str, params: Mapping[str, Any], error: Mapping[str, Any]) -> tuple:
    return (name, State.failed.value, config_hash, _json(dict(params)), None, _json(dict(error)),
            error.get("started"), error.get("time", time.time()), None, error.get("host"))
