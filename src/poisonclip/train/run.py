"""Train a CLIP model from scratch with open_clip's own trainer, on one CPU or many GPUs.

``train(TrainConfig)`` checks the request, writes the resolved config into the run folder,
starts ``python -m poisonclip.train.launch`` (or ``torchrun ... -m poisonclip.train.launch``)
as a child process, follows its log, and writes ``run.json`` when training has finished.

Why a child process rather than calling ``open_clip_train.main.main`` here: the trainer
configures the root logger (handlers accumulate across calls, so a second run in the same
process would also write into the first run's ``out.log``), seeds the global RNGs and needs
the working directory of a CSV table; a child keeps all of that out of the caller, and the
same command line runs under torchrun and Slurm. The price is one interpreter start-up
(a few seconds; ``bench/bench_train_overhead.py`` measures it), not a slower step.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from poisonclip.contracts import RUN_INFO_FILE, RunInfo, read_run_info, write_run_info
from poisonclip.data.csv_io import CsvFormat
from poisonclip.errors import SettingError, UserError
from poisonclip.io_utils import OutputKind, atomic_write_json, check_out, check_place, input_paths, sha256_file
from poisonclip.train import dataset as dataset_mod
from poisonclip.train.dataset import TrainData
from poisonclip.train.logparse import EpochStats, EpochStart, LogParser, Resumed, StepLog, summarize_file
from poisonclip.train.presets import CPU_TINY, DEFAULT_PRESET, HYPER_FIELDS, Preset, get_preset

CONFIG_FILE = "config.json"
LOG_FILE = "out.log"  # written by open_clip_train itself
CONSOLE_FILE = "console.log"  # everything the trainer printed, warnings and tracebacks included
CHECKPOINT_DIR = "checkpoints"
LATEST_CHECKPOINT = "epoch_latest.pt"
PRECISIONS = ("fp32", "amp", "amp_bf16", "amp_bfloat16", "bf16", "fp16", "pure_bf16", "pure_fp16")
LAUNCH_MODULE = "poisonclip.train.launch"
# What `--overwrite` may delete: a finished run (run.json) or one this command started and
# that stopped before the end (config.json as written below, never another tool's).
RUN_KIND = OutputKind("training run (`poisonclip train`)",
                      ((RUN_INFO_FILE, ("model", "checkpoint", "epochs", "train_data")),
                       (CONFIG_FILE, ("config", "data", "placement", "command", "steps_per_epoch"))))


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Hyperparameter defaults are the ``cpu-tiny`` preset's."""

    data: str  # CSV/TSV, shards, poisoned dataset folder or corpus folder
    out: str  # the run folder
    preset: str = DEFAULT_PRESET  # recorded only; from_preset() copies its numbers
    model: str = CPU_TINY.model
    epochs: int = CPU_TINY.epochs
    batch_size: int = CPU_TINY.batch_size  # global, over all processes
    lr: float = CPU_TINY.lr
    wd: float = CPU_TINY.wd
    warmup: int = CPU_TINY.warmup
    beta1: float | None = CPU_TINY.beta1
    beta2: float | None = CPU_TINY.beta2
    eps: float | None = CPU_TINY.eps
    opt: str = CPU_TINY.opt
    momentum: float | None = CPU_TINY.momentum
    lr_scheduler: str = CPU_TINY.lr_scheduler
    grad_clip_norm: float | None = CPU_TINY.grad_clip_norm
    precision: str = CPU_TINY.precision
    workers: int = CPU_TINY.workers
    gpus: int | None = CPU_TINY.gpus  # None: 1 if CUDA is visible else CPU; 0: CPU
    log_every_n_steps: int = CPU_TINY.log_every_n_steps
    crop_scale: float | None = CPU_TINY.crop_scale
    seed: int = 0
    threads: int | None = None  # CPU threads per process (OMP_NUM_THREADS); None: torch's default
    cpu_procs: int = 1  # CPU processes per node (gloo); for testing the distributed path
    nodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None  # host:port of the rendezvous, needed with nodes > 1
    rdzv_id: str | None = None  # default: the run folder's name
    rdzv_backend: str = "c10d"
    resume: bool = False
    overwrite: bool = False
    save_frequency: int = 1
    keep_checkpoints: bool = False  # else only the newest epoch's checkpoint is kept
    hash_data: bool = True
    img_key: str = "filepath"
    caption_key: str = "title"
    csv_sep: str | None = None  # None: tab for .tsv, else sniffed
    extra_args: tuple[str, ...] = ()  # passed verbatim to open_clip_train, last
    init: str | None = None  # fine-tune: start from this checkpoint (or a run folder's) instead of random weights

    @classmethod
    def from_preset(cls, preset: str | Preset, data: str, out: str, **overrides) -> TrainConfig:
        """The preset's numbers, then ``overrides`` (None values are ignored)."""
        p = get_preset(preset) if isinstance(preset, str) else preset
        base = {k: getattr(p, k) for k in HYPER_FIELDS}
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(data=str(data), out=str(out), preset=p.name, **base)


@dataclass(frozen=True)
class Processes:
    """The processes one training run is spread over (where a trigger goes is
    ``attacks.triggers.Placement``, another thing)."""

    device: str  # "cpu" | "cuda"
    procs_per_node: int
    nodes: int

    @property
    def world_size(self) -> int:
        return self.procs_per_node * self.nodes

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


@dataclass(frozen=True)
class Launched:
    """Sent once the trainer process has been started."""

    command: tuple[str, ...]
    run_dir: Path
    data: TrainData
    processes: Processes
    model: str
    epochs: int
    steps_per_epoch: int
    batch_size: int  # global


@dataclass(frozen=True)
class Output:
    """A line the trainer printed that is not a progress line."""

    line: str


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    checkpoint: Path | None
    epochs: tuple[EpochStats, ...]
    steps: int
    wall_time_s: float
    samples_per_s: float
    resumed_from_epoch: int | None
    skipped: bool = False  # --resume found the run already finished; nothing was trained

    @property
    def loss_curve(self) -> list[float]:
        return [e.loss for e in self.epochs]

    @property
    def run_json(self) -> Path:
        return self.run_dir / RUN_INFO_FILE


class TrainingFailed(RuntimeError):
    """open_clip_train exited with an error; the message holds the last lines it printed."""


EventHandler = Callable[[object], None]


def validate(cfg: TrainConfig) -> None:
    for name in ("epochs", "batch_size", "log_every_n_steps", "cpu_procs", "nodes", "save_frequency"):
        if getattr(cfg, name) < 1:
            raise SettingError(name, f"must be at least 1, got {getattr(cfg, name)}")
    if cfg.threads is not None and cfg.threads < 1:
        raise SettingError("threads", f"must be at least 1, got {cfg.threads}")
    for name in ("warmup", "workers", "node_rank"):
        if getattr(cfg, name) < 0:
            raise SettingError(name, f"must not be negative, got {getattr(cfg, name)}")
    if cfg.lr <= 0:
        raise SettingError("lr", f"must be positive, got {cfg.lr}")
    if cfg.wd < 0:
        raise SettingError("wd", f"must not be negative, got {cfg.wd}")
    if cfg.crop_scale is not None and not 0 < cfg.crop_scale <= 1:
        raise SettingError("crop_scale", f"must be in (0, 1], got {cfg.crop_scale}")
    if cfg.gpus is not None and cfg.gpus < 0:
        raise SettingError("gpus", f"must not be negative, got {cfg.gpus}")
    if cfg.precision not in PRECISIONS:
        raise SettingError("precision", f"{cfg.precision!r}: choose one of {', '.join(PRECISIONS)}")
    if cfg.nodes > 1 and not cfg.rdzv_endpoint:
        raise SettingError("nodes", f"{cfg.nodes}: multi-node training needs `rdzv_endpoint` HOST:PORT "
                           "(a host all nodes reach, e.g. the first node of the job)")
    if cfg.node_rank >= cfg.nodes:
        raise SettingError("node_rank", f"{cfg.node_rank} must be below `nodes` ({cfg.nodes})")
    if cfg.resume and cfg.overwrite:
        raise SettingError("resume", "`resume` and `overwrite` contradict each other; pick one")


def _may_have_gpu() -> bool:
    """False only when this machine certainly has no CUDA/ROCm device.

    Saves the parent process torch's import (seconds of CPU on a small machine) in the
    common CPU case; whenever a GPU is possible, torch itself decides.
    """
    if sys.platform == "darwin":
        return False
    if sys.platform.startswith("linux"):
        return any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/proc/driver/nvidia"))
    return True


def processes(cfg: TrainConfig) -> Processes:
    """Where the run goes: CPU unless GPUs are asked for (or visible, when not specified)."""
    if cfg.gpus == 0 or (cfg.gpus is None and not _may_have_gpu()):
        return Processes("cpu", cfg.cpu_procs, cfg.nodes)
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpus = cfg.gpus if cfg.gpus is not None else min(visible, 1)
    if gpus == 0:
        return Processes("cpu", cfg.cpu_procs, cfg.nodes)
    if visible == 0:
        raise SettingError("gpus", f"{gpus} asked for, but no CUDA GPU is visible here (torch.cuda.is_available() "
                           "is False); set `gpus` to 0 to train on the CPU")
    if gpus > visible:
        raise SettingError("gpus", f"{gpus} asked for, but only {visible} CUDA GPU(s) are visible on this node")
    if cfg.cpu_procs != 1:
        raise SettingError("cpu_procs", "is for CPU training; with `gpus` each GPU gets one process")
    return Processes("cuda", gpus, cfg.nodes)


def resolve_init(cfg: TrainConfig, check: bool = True) -> Path | None:
    """The checkpoint fine-tuning starts from: ``init`` itself, or a run folder's final
    checkpoint (its run.json); checked to fit ``model`` before anything starts. None: train
    from scratch. Local files only: nothing is downloaded."""
    if cfg.init is None:
        return None
    path = Path(cfg.init).expanduser()
    if path.is_dir():
        try:
            info = read_run_info(path)
        except UserError:
            raise SettingError("init", f"{path}: a folder without a finished run (run.json); give a checkpoint "
                               "file or a run folder of `poisonclip train`") from None
        ckpt = info.checkpoint_path()
        if ckpt is None:
            raise SettingError("init", f"{path}: its run.json names no checkpoint; give the checkpoint file")
        if info.model != cfg.model:
            raise SettingError("init", f"{path}: that run trained model {info.model!r}, not {cfg.model!r}; "
                               f"set `model` to {info.model!r}")
        path = ckpt
    if not path.is_file():
        raise SettingError("init", f"{path}: checkpoint not found; give a local .pt/.safetensors file or a run folder")
    if check:
        from poisonclip.train.models import check_init

        check_init(cfg.model, path)
    return path.resolve()


def open_clip_argv(cfg: TrainConfig, data: TrainData, place: Processes, run_dir: Path,
                   init: Path | None = None) -> list[str]:
    """The open_clip_train command line for this run (the same on every rank and node)."""
    per_proc = cfg.batch_size // place.world_size
    argv = ["--model", cfg.model, *data.open_clip_args(),
            "--batch-size", str(per_proc), "--epochs", str(cfg.epochs),
            "--lr", repr(cfg.lr), "--wd", repr(cfg.wd), "--warmup", str(cfg.warmup),
            "--opt", cfg.opt, "--lr-scheduler", cfg.lr_scheduler,
            "--precision", cfg.precision, "--workers", str(cfg.workers), "--device", place.device,
            "--seed", str(cfg.seed),
            "--logs", str(run_dir.parent), "--name", run_dir.name,
            "--save-frequency", str(cfg.save_frequency), "--save-most-recent",
            "--log-every-n-steps", str(cfg.log_every_n_steps), "--report-to", "none"]
    for flag, value in (("--beta1", cfg.beta1), ("--beta2", cfg.beta2), ("--eps", cfg.eps),
                        ("--momentum", cfg.momentum), ("--grad-clip-norm", cfg.grad_clip_norm)):
        if value is not None:
            argv += [flag, repr(float(value))]
    if cfg.crop_scale is not None:
        # scale 1.0: the whole image, so at the model's resolution the "crop" is the identity
        # (open_clip's own RandomResizedCrop has no aspect-ratio option to pin; it needs none).
        argv += ["--aug-cfg", f"scale=({float(cfg.crop_scale)!r}, 1.0)"]
    if not cfg.keep_checkpoints:
        argv.append("--delete-previous-checkpoint")
    if init is not None:
        # open_clip builds the model, then loads this file strictly (weights_only) before training
        argv += ["--pretrained", str(init)]
    if cfg.resume:
        argv += ["--resume", "latest"]
    return argv + list(cfg.extra_args)


def launch_command(cfg: TrainConfig, place: Processes, argv: list[str], run_dir: Path) -> list[str]:
    """One process, or torchrun (``torch.distributed.run``) when there are several."""
    py = sys.executable
    if not place.distributed and not cfg.rdzv_endpoint:
        return [py, "-m", LAUNCH_MODULE, *argv]
    cmd = [py, "-m", "torch.distributed.run", "--nproc-per-node", str(place.procs_per_node)]
    if cfg.nodes == 1 and not cfg.rdzv_endpoint:
        cmd += ["--standalone", "--nnodes", "1"]
    else:
        cmd += ["--nnodes", str(cfg.nodes), "--node-rank", str(cfg.node_rank),
                "--rdzv-backend", cfg.rdzv_backend, "--rdzv-endpoint", str(cfg.rdzv_endpoint),
                "--rdzv-id", cfg.rdzv_id or run_dir.name]
    # "--" ends torchrun's own options: without it argparse reads open_clip's --logs as an
    # ambiguous abbreviation of torchrun's --logs-specs and refuses to start.
    return [*cmd, "-m", LAUNCH_MODULE, "--", *argv]


def check_fit(cfg: TrainConfig, data: TrainData, place: Processes) -> int:
    """Steps per epoch, after checking the batch splits over processes and fits the data."""
    world = place.world_size
    if cfg.batch_size % world:
        raise SettingError("batch_size", f"{cfg.batch_size} (global) does not split evenly over "
                           f"{world} processes; use a multiple of {world}")
    if data.num_samples < cfg.batch_size:
        raise UserError(f"{data.source}: {data.num_samples} samples, fewer than one batch of "
                        f"{cfg.batch_size}; lower `batch_size`")
    if data.dataset_type == "webdataset":
        # Each rank (and each loader worker) reads whole shards; one left without a shard
        # would stall the others at the first gradient all-reduce.
        readers = max(1, cfg.workers) * world
        if data.num_shards < readers:
            raise UserError(f"{data.source}: {data.num_shards} shard(s) for {max(1, cfg.workers)} loader "
                            f"worker(s) x {world} process(es); open_clip needs at least one shard each "
                            "(lower `workers` or write more, smaller shards)")
        # open_clip rounds an epoch up to whole batches per worker (get_wds_dataset).
        batches, workers = math.ceil(data.num_samples / cfg.batch_size), max(1, cfg.workers)
        return math.ceil(batches / workers) * workers
    per_rank = -(-data.num_samples // world) if world > 1 else data.num_samples
    return per_rank // (cfg.batch_size // world)


def _versions() -> dict[str, str]:
    # Package metadata, not imports: the parent process should not pay for open_clip's import.
    from importlib.metadata import PackageNotFoundError, version

    import poisonclip

    out = {"poisonclip": poisonclip.__version__, "python": platform.python_version()}
    for key, dist in (("open_clip", "open_clip_torch"), ("torch", "torch")):
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            out[key] = "unknown"
    return out


def _prepare_run_dir(cfg: TrainConfig, run_dir: Path, data: TrainData) -> None:
    inputs = [*input_paths(cfg.data), *input_paths(data.checked_from or data.train_data)]
    check_place(run_dir, inputs)   # never the working/home directory, never the data's folder
    if run_dir.exists() and not run_dir.is_dir():
        raise SettingError("out", f"{run_dir} exists and is not a folder")
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return
    if cfg.overwrite:
        check_out(run_dir, RUN_KIND, overwrite=True, inputs=inputs)   # only ever a poisonclip run
        shutil.rmtree(run_dir)
    elif not cfg.resume:
        raise SettingError("out", f"{run_dir} already holds a run; set `resume` to continue it "
                           "or `overwrite` to start again")


_MUST_MATCH = ("model", "batch_size", "seed", "lr", "wd", "warmup", "opt", "precision", "init")


def _check_resume(cfg: TrainConfig, run_dir: Path, data: TrainData) -> None:
    import json

    cfg_file = run_dir / CONFIG_FILE
    if not cfg_file.is_file():
        return
    old = json.loads(cfg_file.read_text())
    before = old.get("config", {})
    diff = [k for k in _MUST_MATCH if k in before and before[k] != getattr(cfg, k)]
    if old.get("data", {}).get("train_data") not in (None, data.train_data):
        diff.append("data")
    if diff:
        k = diff[0]
        was = old["data"]["train_data"] if k == "data" else before[k]
        raise SettingError("resume", f"this run was started with {k}={was!r}; resuming with a "
                           f"different {', '.join(diff)} would mix two runs (use a new `out` folder)")


def _completed(run_dir: Path, epochs: int) -> float | None:
    """The recorded wall time if ``run_dir`` holds a run finished at ``epochs``, else None."""
    if not (run_dir / RUN_INFO_FILE).is_file():
        return None
    try:
        info = read_run_info(run_dir)
    except UserError:   # a damaged run.json: the run is not known to be finished, so it resumes
        return None
    return float(info.wall_time_s or 0.0) if info.epochs == epochs else None


def _die_with_parent() -> None:
    """In the trainer's process, before exec: SIGTERM it when its parent dies.

    The trainer runs in its own session (so we can stop its whole process group), which
    also means a ``kill -9`` of the caller (a sweep, the demo) would leave it training as an
    orphan. Linux's PR_SET_PDEATHSIG ends it instead; elsewhere it stays an orphan.
    """
    import ctypes
    import signal as _signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(_signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass


def _terminate(proc: subprocess.Popen) -> None:
    """Stop the trainer and everything it started (torchrun ranks, loader workers)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, PermissionError):
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _result(cfg: TrainConfig, run_dir: Path, wall: float) -> RunResult:
    epochs, resumed = summarize_file(run_dir / LOG_FILE, cfg.batch_size)
    steps = sum(e.steps for e in epochs)
    t = sum(e.train_time_s for e in epochs)
    ckpt = run_dir / CHECKPOINT_DIR / f"epoch_{cfg.epochs}.pt"
    return RunResult(run_dir=run_dir, checkpoint=ckpt if ckpt.is_file() else None, epochs=tuple(epochs),
                     steps=steps, wall_time_s=wall,
                     samples_per_s=steps * cfg.batch_size / t if t > 0 else 0.0,
                     resumed_from_epoch=resumed)


def _link_latest(run_dir: Path, epochs: int) -> None:
    """After the last epoch, make epoch_latest.pt a hard link to the final checkpoint.

    Both hold the same bytes; the link keeps `--resume` with more epochs working (open_clip
    looks for epoch_latest.pt) without storing the checkpoint twice.
    """
    ck = run_dir / CHECKPOINT_DIR
    final, latest = ck / f"epoch_{epochs}.pt", ck / LATEST_CHECKPOINT
    if not (final.is_file() and latest.is_file()):
        return
    tmp = ck / f".{LATEST_CHECKPOINT}.link"
    try:
        tmp.unlink(missing_ok=True)
        os.link(final, tmp)
        os.replace(tmp, latest)
    except OSError:
        tmp.unlink(missing_ok=True)


def _write_run_json(cfg: TrainConfig, data: TrainData, place: Processes, res: RunResult,
                    init: tuple[Path, str] | None = None) -> None:
    write_run_info(res.run_dir, RunInfo(
        model=cfg.model,
        checkpoint=str(res.checkpoint) if res.checkpoint else None,
        seed=cfg.seed,
        epochs=cfg.epochs,
        steps=res.steps,
        batch_size=cfg.batch_size,
        world_size=place.world_size,
        device=place.device,
        precision=cfg.precision,
        preset=cfg.preset,
        data=data.source,
        data_origin=data.origin,
        dataset_type=data.dataset_type,
        train_data=data.train_data,
        num_samples=data.num_samples,
        dataset_sha256=data.sha256,
        poison_json=data.poison_json,
        poison_json_sha256=data.poison_json_sha256,
        init=str(init[0]) if init else None,
        init_sha256=init[1] if init else None,
        wall_time_s=round(res.wall_time_s, 3),
        samples_per_s=round(res.samples_per_s, 3),
        train_time_s=round(sum(e.train_time_s for e in res.epochs), 3),
        resumed_from_epoch=res.resumed_from_epoch,
        loss_curve=tuple(res.loss_curve),
        epoch_stats=tuple(e.as_dict() for e in res.epochs),
        config=CONFIG_FILE,
        log=LOG_FILE,
        versions=_versions(),
    ))


def prepare(cfg: TrainConfig) -> tuple[TrainData, Processes, list[str], int]:
    """Every check that needs no training: returns data, processes, command and steps/epoch."""
    from poisonclip.train.models import check_model

    validate(cfg)
    check_model(cfg.model)
    init = resolve_init(cfg)
    place = processes(cfg)
    # Only node 0 writes run.json, so only node 0 reads the whole dataset to hash it.
    data = dataset_mod.resolve(cfg.data, CsvFormat(cfg.img_key, cfg.caption_key, cfg.csv_sep),
                               hash_data=cfg.hash_data and cfg.node_rank == 0)
    run_dir = Path(cfg.out).expanduser().absolute()
    data = dataset_mod.use_checked_copy(data, run_dir)
    steps = check_fit(cfg, data, place)
    cmd = launch_command(cfg, place, open_clip_argv(cfg, data, place, run_dir, init), run_dir)
    return data, place, cmd, steps


def train(cfg: TrainConfig, on_event: EventHandler | None = None) -> RunResult:
    """Run open_clip_train for ``cfg``; returns when it has finished (or raises)."""
    data, place, cmd, steps = prepare(cfg)
    init_path = resolve_init(cfg, check=False)   # checked by prepare; its bytes pinned before training
    init = (init_path, sha256_file(init_path)) if init_path is not None else None
    run_dir = Path(cfg.out).expanduser().absolute()
    primary = cfg.node_rank == 0  # node 0 owns the run folder; other nodes only train
    emit = on_event or (lambda ev: None)
    if primary:
        if cfg.resume and run_dir.is_dir():
            # before the "already finished" shortcut: a finished run trained with other
            # settings is not the run asked for
            _check_resume(cfg, run_dir, data)
        done = _completed(run_dir, cfg.epochs) if cfg.resume else None
        if done is not None:
            return dataclasses.replace(_result(cfg, run_dir, done), skipped=True)
        _prepare_run_dir(cfg, run_dir, data)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RUN_INFO_FILE).unlink(missing_ok=True)  # a run.json only ever describes a finished run
        if data.checked_from:
            dataset_mod.write_checked_table(data)
        atomic_write_json(run_dir / CONFIG_FILE, {
            "config": dataclasses.asdict(cfg), "data": dataclasses.asdict(data),
            # (the key keeps its old name: run folders written before the rename resume by it)
            "placement": {**dataclasses.asdict(place), "world_size": place.world_size},
            "per_process_batch_size": cfg.batch_size // place.world_size,
            "steps_per_epoch": steps, "command": cmd, "cwd": data.cwd, "versions": _versions()})
    elif data.checked_from and not Path(data.train_data).is_file():
        raise UserError(f"{data.checked_from}: {len(data.drop_rows)} unusable row(s); node 0 writes the checked copy "
                        f"{data.train_data} that every node trains on: start node 0 first, or train on a copy "
                        "cleaned with `poisonclip data convert`")

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if cfg.threads:
        env["OMP_NUM_THREADS"] = str(cfg.threads)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=data.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", bufsize=1, start_new_session=True,
                            preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    tail: deque[str] = deque(maxlen=40)
    parser = LogParser(cfg.batch_size)
    console = open(run_dir / CONSOLE_FILE, "a", encoding="utf-8") if primary else None
    try:
        emit(Launched(tuple(cmd), run_dir, data, place, cfg.model, cfg.epochs, steps, cfg.batch_size))
        assert proc.stdout is not None
        for line in proc.stdout:
            if console:
                console.write(line)
            line = line.rstrip("\n")
            tail.append(line)
            ev = parser.feed(line)
            emit(ev if ev is not None else Output(line))
        rc = proc.wait()
    except BaseException:
        _terminate(proc)
        raise
    finally:
        if console:
            console.close()
        if proc.stdout:
            proc.stdout.close()
    wall = time.perf_counter() - t0
    if rc != 0:
        where = f"; full output in {run_dir / CONSOLE_FILE}" if primary else ""
        last = " | ".join(x.strip() for x in list(tail)[-8:] if x.strip())
        raise TrainingFailed(f"open_clip_train exited with code {rc}{where}; last lines: {last}")
    if not primary:
        return RunResult(run_dir, None, (), 0, wall, 0.0, None)
    _link_latest(run_dir, cfg.epochs)
    res = _result(cfg, run_dir, wall)
    if res.checkpoint is None:
        raise TrainingFailed(f"open_clip_train finished but wrote no {CHECKPOINT_DIR}/epoch_{cfg.epochs}.pt "
                             f"in {run_dir}; see {run_dir / CONSOLE_FILE}")
    _write_run_json(cfg, data, place, res, init)
    return res


__all__ = ["TrainConfig", "RunResult", "Processes", "Launched", "Output", "StepLog", "EpochStart",
           "Resumed", "TrainingFailed", "train", "prepare", "validate", "processes", "open_clip_argv",
           "launch_command", "resolve_init"]
