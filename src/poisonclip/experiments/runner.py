"""Run a sweep's trials: one trial function, three ways to schedule it.

``run_trial`` is the whole of a trial (shared artefacts built under a lock, then evaluation,
then one atomic ``result.json``). The runners only decide where it runs:

* ``LocalRunner``: in this process, one trial after another (progress per stage);
* ``PoolRunner``: a ``concurrent.futures`` process pool sized to the machine, each worker with
  ``cores // workers`` torch threads so the pool does not oversubscribe the CPU;
* ``poisonclip.experiments.cluster.SubmititRunner``: one cluster job per trial through
  submitit (Slurm, or its local executor).

Resume is a property of ``run_trial``, not of the runners: a trial whose ``result.json``
matches its config is skipped, a trial another process is running is left alone (its lock is
held), and a shared artefact without its ``.done`` marker is rebuilt from scratch.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
import traceback
import uuid
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import yaml

from poisonclip.contracts import TrialResult, remove_trial_result, write_trial_result
from poisonclip.errors import UserError
from poisonclip.experiments.locks import hold
from poisonclip.experiments.spec import SweepSpec
from poisonclip.experiments.stages import (Stages, TrainEvents, finetune_config, load_stages, pretrain_config,
                                           takes_train_events)
from poisonclip.experiments.store import (ARCHIVE_DIR, CACHE_DIR, DB_FILE, ERROR_FILE, EVAL_DIRS, LOCK_FILE,
                                          SPEC_FILE, START_FILE, SWEEP_LOCK_FILE, TRIALS_DIR, TRIALS_FILE,
                                          ResultsStore, State, SweepDir, read_json, read_result, trial_state)
from poisonclip.experiments.trials import Trial, expand
from poisonclip.io_utils import atomic_write_json, atomic_write_text, check_place


@dataclass(frozen=True)
class Event:
    """What a runner reports: ``kind`` is "start", "stage" (``stage`` names it) or "end"
    (``outcome`` set)."""

    kind: str
    trial: str
    stage: str = ""
    outcome: "Outcome | None" = None


EventSink = Callable[[Event], None]


def no_events(_: Event) -> None:
    pass


@dataclass(frozen=True)
class Outcome:
    name: str
    state: str            # "done", "skipped" (already done), "busy" (another process runs it), "failed"
    wall_s: float = 0.0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "wall_s": self.wall_s, "error": self.error}


# --- shared artefacts ----------------------------------------------------------------------

def ensure_artefact(sweep: SweepDir, kind: str, key: str, build: Callable[[Path], Mapping[str, Any] | None],
                    describe: Mapping[str, Any]) -> tuple[Path, dict[str, Any]]:
    """Return the folder of artefact ``kind/key``, building it first if it is not complete.

    Each build attempt writes into a folder of its own (``<key>-<attempt>``) and the artefact
    is complete once the marker ``<key>.json`` naming that folder exists (written atomically
    last). The stage writes straight into its folder because its outputs record absolute paths
    (``poison.json``'s train_data, ``run.json``'s checkpoint), so the folder can never be
    renamed; and a fresh folder per attempt means a straggler of a killed attempt (a trainer
    subprocess that outlived its sweep) cannot write into the attempt that replaces it. The
    lock makes a second worker wait for the first instead of building the same thing.
    """
    marker = sweep.cache_marker(kind, key)
    if (info := read_json(marker)) is not None:
        return marker.parent / info["folder"], info
    with hold(marker.parent / f"{key}.lock"):
        if (info := read_json(marker)) is not None:
            return marker.parent / info["folder"], info
        _clear_attempts(marker.parent, key)
        folder = marker.parent / f"{key}-{uuid.uuid4().hex[:8]}"
        t0 = time.time()
        extra = build(folder) or {}
        if not folder.is_dir():
            raise RuntimeError(f"the {kind} stage returned without writing {folder}")
        info = {"kind": kind, "key": key, "folder": folder.name, **dict(describe), "info": dict(extra),
                "built_s": round(time.time() - t0, 3), "host": socket.gethostname()}
        atomic_write_json(marker, info)
    return folder, info


def _clear_attempts(parent: Path, key: str) -> None:
    """Remove what interrupted builds of ``key`` left: attempt folders and atomic_dir temps."""
    for stray in [*parent.glob(f"{key}-*"), *parent.glob(f".{key}-*")]:
        shutil.rmtree(stray, ignore_errors=True) if stray.is_dir() else stray.unlink(missing_ok=True)


# --- one trial -----------------------------------------------------------------------------

def run_trial(sweep_root: str | os.PathLike, trial: Trial, stages: Stages,
              on_event: EventSink = no_events, store: ResultsStore | None = None,
              train_events: TrainEvents | None = None) -> Outcome:
    """Run one trial to completion unless it is done or running elsewhere. Never raises for a
    failing stage: the error is written to ``error.json`` and returned as a failed outcome.
    ``train_events``: handed to ``stages.train`` as ``on_event`` (when it takes one) for each
    model this trial trains."""
    sweep = SweepDir(Path(sweep_root))
    folder = sweep.trial(trial.name)
    folder.mkdir(parents=True, exist_ok=True)
    with hold(folder / LOCK_FILE, blocking=False) as held:
        if not held:
            return Outcome(trial.name, "busy")
        record = read_result(folder)
        if record is not None and record.config_hash == trial.config_hash:
            return Outcome(trial.name, "skipped")
        store = store or ResultsStore(sweep.db)
        on_event(Event("start", trial.name))
        started = time.time()
        (folder / ERROR_FILE).unlink(missing_ok=True)
        remove_trial_result(folder)
        atomic_write_json(folder / START_FILE, {**trial.to_dict(), "started": started,
                                                "host": socket.gethostname(), "pid": os.getpid()})
        try:
            metrics = _stages_of_trial(sweep, trial, stages, lambda s: on_event(Event("stage", trial.name, s)),
                                       train_events)
        except Exception as e:  # noqa: BLE001 - any stage failure is the trial's result, not the sweep's
            error = {"type": type(e).__name__, "message": str(e), "traceback": traceback.format_exc(),
                     "started": started, "time": time.time(), "host": socket.gethostname()}
            atomic_write_json(folder / ERROR_FILE, error)
            store.record_failed(trial.name, trial.config_hash, trial.params, error)
            outcome = Outcome(trial.name, "failed", time.time() - started, f"{type(e).__name__}: {e}")
            on_event(Event("end", trial.name, outcome=outcome))
            return outcome
        finished = time.time()
        result = TrialResult(name=trial.name, config_hash=trial.config_hash, params=dict(trial.params),
                             metrics=metrics, config=trial.to_dict()["config"], started=started,
                             finished=finished, wall_s=round(finished - started, 3), host=socket.gethostname())
        write_trial_result(folder, result)   # the "done" marker: last, atomic
        store.record_done(result.to_json())
        outcome = Outcome(trial.name, "done", finished - started)
        on_event(Event("end", trial.name, outcome=outcome))
        return outcome


def _stages_of_trial(sweep: SweepDir, trial: Trial, stages: Stages, stage_event: Callable[[str], None],
                     train_events: TrainEvents | None = None) -> dict[str, Any]:
    cfg, keys = trial.config, trial.keys
    folder = sweep.trial(trial.name)
    # a Stages without the on_event parameter trains as before, unwatched
    watch = {"on_event": train_events} if train_events is not None and takes_train_events(stages) else {}

    stage_event("corpus")
    corpus, _ = ensure_artefact(sweep, "corpus", keys.corpus,
                                lambda out: stages.corpus(cfg["corpus"], out),
                                {"config": cfg["corpus"]})
    stage_event("poison")
    poison, poison_info = ensure_artefact(sweep, "poison", keys.poison,
                                          lambda out: stages.poison(cfg["poison"], corpus, out),
                                          {"config": cfg["poison"], "corpus": keys.corpus})
    train_cfg, pre_info = cfg["train"], None
    pre_cfg = pretrain_config(train_cfg)
    if pre_cfg is not None and keys.pretrain is not None:
        # the fine-tuning threat model: a clean model pre-trained on the corpus (shared with any
        # clean model of the same settings), then fine-tuned on the poisoned set and, as the
        # control, on the clean corpus
        stage_event("pretrain")
        pre, pre_info = ensure_artefact(sweep, "model", keys.pretrain,
                                        lambda out: stages.train(pre_cfg, corpus, out, **watch),
                                        {"config": pre_cfg, "data": keys.corpus})
        train_cfg = finetune_config(train_cfg, pre)
    stage_event("train")
    model, model_info = ensure_artefact(sweep, "model", keys.model,
                                        lambda out: stages.train(train_cfg, poison, out, **watch),
                                        {"config": cfg["train"], "data": keys.poison})
    metrics: dict[str, Any] = {"data": poison_info["info"], "model": model_info["info"]}
    if pre_info is not None:
        metrics["pretrain_model"] = pre_info["info"]
    if trial.baseline:
        stage_event("train-clean")
        clean, clean_info = ensure_artefact(sweep, "model", keys.clean_model,
                                            lambda out: stages.train(train_cfg, corpus, out, **watch),
                                            {"config": cfg["train"], "data": keys.corpus})
        metrics["clean_model"] = clean_info["info"]
    stage_event("eval")
    metrics["poisoned"] = _evaluate(stages, cfg["eval"], model, corpus, poison, folder / EVAL_DIRS["poisoned"])
    if trial.baseline:
        stage_event("eval-clean")
        metrics["clean"] = _evaluate(stages, cfg["eval"], clean, corpus, poison, folder / EVAL_DIRS["clean"])
    return metrics


def _evaluate(stages: Stages, cfg: Mapping[str, Any], run: Path, corpus: Path, poison: Path,
              out: Path) -> dict[str, Any]:
    if out.exists():
        shutil.rmtree(out)    # left by an interrupted attempt; evaluation is cheap to redo
    return dict(stages.evaluate(cfg, run, corpus, poison, out))


# --- the sweep -----------------------------------------------------------------------------

class Runner(Protocol):
    def run(self, sweep_root: Path, trials: Sequence[Trial], stages_ref: str,
            on_event: EventSink) -> list[Outcome]: ...


@dataclass
class LocalRunner:
    """Trials one after another in this process. ``train_events`` sees every training run's
    events (a live progress bar: ``train.progress.RichReporter``); only this runner has one, the
    others train in processes of their own."""

    stages: Stages | None = None   # injected (tests); otherwise loaded from the spec
    train_events: TrainEvents | None = None

    def run(self, sweep_root: Path, trials: Sequence[Trial], stages_ref: str,
            on_event: EventSink = no_events) -> list[Outcome]:
        stages = self.stages or load_stages(stages_ref)
        store = ResultsStore(SweepDir(sweep_root).db)
        return [run_trial(sweep_root, t, stages, on_event, store, self.train_events) for t in trials]


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_threads(threads: int | None) -> None:
    """Limit this process (and the processes it starts) to ``threads`` compute threads."""
    if not threads:
        return
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)


def run_trial_job(sweep_root: str, trial: dict[str, Any], stages_ref: str,
                  threads: int | None = None) -> dict[str, Any]:
    """Entry point of a worker process or cluster job: plain data in, plain data out."""
    set_threads(threads)
    outcome = run_trial(sweep_root, Trial.from_dict(trial), load_stages(stages_ref))
    return outcome.to_dict()


@dataclass
class PoolRunner:
    """A process pool; ``workers`` defaults to half the cores (at least one), each worker gets
    ``cores // workers`` threads. Processes are spawned, not forked, so no torch state is
    shared with the parent."""

    workers: int | None = None

    def run(self, sweep_root: Path, trials: Sequence[Trial], stages_ref: str,
            on_event: EventSink = no_events) -> list[Outcome]:
        cores = cpu_count()
        workers = max(1, min(self.workers or max(1, cores // 2), len(trials) or 1))
        threads = max(1, cores // workers)
        outcomes = []
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = {}
            for t in trials:  # no "start" events: a queued trial is not a running one
                futures[pool.submit(run_trial_job, str(sweep_root), t.to_dict(), stages_ref, threads)] = t
            for fut in as_completed(futures):
                t = futures[fut]
                try:
                    outcome = Outcome(**fut.result())
                except Exception as e:  # noqa: BLE001 - a dead worker fails its trial only
                    outcome = Outcome(t.name, "failed", error=f"worker died: {type(e).__name__}: {e}")
                outcomes.append(outcome)
                on_event(Event("end", t.name, outcome=outcome))
        return outcomes


@dataclass
class SweepResult:
    sweep: SweepDir
    trials: list[Trial]
    outcomes: list[Outcome] = field(default_factory=list)
    already_done: int = 0

    def count(self, state: str) -> int:
        return sum(1 for o in self.outcomes if o.state == state)


@contextmanager
def sweep_lock(out: str | os.PathLike) -> Iterator[Path]:
    """Hold the sweep folder's lock (``.sweep.lock``) for the block, or refuse at once.

    One ``sweep run`` per folder: two would both write ``spec.yaml``, ``trials.json`` and the
    results table. The lock is an flock, dropped by the kernel when its holder dies. A new
    folder that ends up with nothing but the lock (a refused start) is removed again.
    """
    root = check_place(out).resolve()
    created = not root.exists()
    if not created and root.is_dir() and not (root / SPEC_FILE).exists() \
            and any(p.name != SWEEP_LOCK_FILE for p in root.iterdir()):
        # a sweep adds its files to its folder: never into a folder of someone else's files
        raise UserError(f"{root}: exists, holds other files and is not a sweep folder (no {SPEC_FILE}); "
                        "choose a new or empty folder")
    root.mkdir(parents=True, exist_ok=True)
    lock = root / SWEEP_LOCK_FILE
    made_lock = not lock.exists()
    try:
        with hold(lock, blocking=False) as held:
            if not held:
                raise UserError(f"{root}: another `poisonclip sweep run` is working on this sweep folder "
                                f"(it holds {SWEEP_LOCK_FILE}); wait for it to end, or use another --out")
            yield root
    finally:
        # A start refused before the folder became a sweep folder leaves nothing of ours behind.
        if made_lock and not (root / SPEC_FILE).exists():
            lock.unlink(missing_ok=True)
            if created:
                try:
                    root.rmdir()
                except OSError:
                    pass


def _owner(sweep: SweepDir, spec: SweepSpec, force: bool) -> str | None:
    """The name of another spec that owns the sweep folder (to archive, with ``force``), or
    None when the folder holds no spec yet or this spec's. Refuses otherwise."""
    from poisonclip.experiments.spec import read_spec_name

    spec_file = sweep.root / SPEC_FILE
    if not spec_file.is_file():
        return None
    old = read_spec_name(spec_file)
    if old == spec.name:
        return None
    if not force:
        raise UserError(f"{sweep.root}: holds the trials of sweep spec {old!r}, not {spec.name!r}; a sweep "
                        "folder belongs to one spec: use another --out, or pass --force to move that spec's "
                        f"results table to {ARCHIVE_DIR}/ and run this spec here")
    return old or "unnamed"


def _archive(sweep: SweepDir, old: str) -> Path:
    """Move another spec's spec.yaml, trials.json and results table aside (never deleted)."""
    safe = re.sub(r"[^A-Za-z0-9._+=-]", "_", old).lstrip(".") or "unnamed"
    dest = sweep.root / ARCHIVE_DIR / f"{safe}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    dest.mkdir(parents=True)
    for name in (SPEC_FILE, TRIALS_FILE, DB_FILE):
        if (sweep.root / name).exists():
            os.replace(sweep.root / name, dest / name)
    return dest


def prepare(spec: SweepSpec, out: str | os.PathLike, stages: Stages | None = None,
            rerun_changed: bool = False, cache: str | os.PathLike | None = None, force: bool = False,
            note: Callable[[str], None] | None = None) -> tuple[SweepDir, list[Trial]]:
    """Expand the spec, write ``spec.yaml`` and ``trials.json``, and refuse to mix results of
    a changed config into an existing folder unless asked to rerun them.

    A sweep folder belongs to one spec (by ``name``): another spec's folder is refused unless
    ``force``, which moves that spec's ``spec.yaml``, ``trials.json`` and results table to
    ``previous/<name>-<time>/`` (its trial folders and cached artefacts stay; ``note`` is told).
    Trials of this spec already in the folder with a different configuration are refused
    unless ``rerun_changed``.

    ``cache``: a folder of shared artefacts (corpora, poisoned datasets, trained models) used
    by several sweeps, e.g. the paper's Fig. 2 and Fig. 4 presets, whose corner-placement models
    are the same; it becomes the sweep's ``cache`` as a symbolic link, so workers and cluster
    jobs that only know the sweep folder find it too."""
    stages = stages or load_stages(spec.stages)
    trials = expand(spec, stages.resolve, getattr(stages, "link", None))
    sweep = SweepDir(Path(out).resolve())
    old_owner = _owner(sweep, spec, force)
    changed = []
    for t in trials:
        record = read_result(sweep.trial(t.name))
        if record is not None and record.config_hash != t.config_hash:
            changed.append(t.name)
    if changed and not rerun_changed:
        raise UserError(f"{sweep.root}: {len(changed)} finished trial(s) ran with a different configuration "
                        f"(e.g. {changed[0]}); use a new --out, or pass --rerun-changed to redo them")
    if cache is not None:
        link_cache(sweep, Path(cache))   # checks first, so a refused --cache creates nothing
    if old_owner is not None:
        dest = _archive(sweep, old_owner)
        (note or (lambda _m: None))(
            f"{sweep.root} held sweep {old_owner!r}: its spec, trial list and results table are now in {dest}; "
            f"its trial folders stay in {TRIALS_DIR}/ (a trial of the same name is rerun only with "
            "--rerun-changed) and its cached artefacts are reused where they match")
    sweep.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(sweep.root / SPEC_FILE, yaml.safe_dump(spec.to_dict(), sort_keys=False))
    sweep.save_trials(trials)
    return sweep, trials


def count_done(spec: SweepSpec, out: str | os.PathLike, stages: Stages | None = None) -> tuple[int, int]:
    """(trials of ``spec``, how many of them ``out`` already holds finished), writing nothing:
    what a progress view needs before the run starts."""
    stages = stages or load_stages(spec.stages)
    trials = expand(spec, stages.resolve, getattr(stages, "link", None))
    sweep = SweepDir(Path(out).resolve())
    return len(trials), sum(trial_state(sweep, t) is State.done for t in trials)


def link_cache(sweep: SweepDir, cache: Path) -> None:
    """Point ``sweep``'s cache at a shared folder; refuse to replace a cache it already has."""
    target = cache.resolve()
    link = sweep.root / CACHE_DIR
    if link.is_symlink():
        if link.resolve() == target:
            return
        raise UserError(f"{sweep.root}: its cache already points to {link.resolve()}, not {target}; "
                        "use that --cache or a new --out")
    if link.exists():
        raise UserError(f"{sweep.root}: already has its own cache folder; --cache only works for a new "
                        "sweep folder (use a new --out)")
    if target.exists() and not target.is_dir():
        raise UserError(f"--cache {cache}: exists and is not a folder")
    sweep.root.mkdir(parents=True, exist_ok=True)
    target.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target, target_is_directory=True)


def run_sweep(spec: SweepSpec, out: str | os.PathLike, runner: Runner | None = None,
              on_event: EventSink = no_events, stages: Stages | None = None,
              retry_failed: bool = True, rerun_changed: bool = False,
              cache: str | os.PathLike | None = None, force: bool = False,
              note: Callable[[str], None] | None = None, lock: bool = True) -> SweepResult:
    """Run every trial of ``spec`` that is not done yet; returns what happened to each.

    ``lock``: hold the sweep folder's lock for the run (``sweep_lock``); False only when the
    caller already holds it. ``force``, ``note``: see ``prepare``."""
    if lock:
        with sweep_lock(out):
            return run_sweep(spec, out, runner, on_event, stages, retry_failed, rerun_changed, cache,
                             force, note, lock=False)
    sweep, trials = prepare(spec, out, stages, rerun_changed, cache, force, note)
    runner = runner or LocalRunner(stages)
    todo, done = [], 0
    for t in trials:
        state = trial_state(sweep, t)
        if state is State.done:
            done += 1
        elif state is State.failed and not retry_failed:
            continue
        else:
            todo.append(t)
    outcomes = runner.run(sweep.root, todo, spec.stages, on_event) if todo else []
    ResultsStore(sweep.db).sync(sweep, trials)
    return SweepResult(sweep, trials, outcomes, done)
