"""kill -9 of `poisonclip train` leaves no orphan trainer behind.

The trainer (open_clip_train) runs in its own session so that poisonclip can stop its whole
process group; without more care a ``kill -9`` of poisonclip would leave it training on as an
orphan. The test starts `poisonclip train` as a real subprocess, waits (a bounded poll, not a
sleep) until its trainer child is training, kills poisonclip with SIGKILL and requires the
trainer and every process of its group to be gone within a bounded time. Linux only (/proc).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from poisonclip.data.corpus import write_corpus
from poisonclip.data.synthetic import SynthConfig
from poisonclip.train.run import LAUNCH_MODULE

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; the guard is Linux-only")]

ROOT = Path(__file__).resolve().parents[2]


def _procs() -> dict[int, tuple[str, int, int]]:
    """pid -> (state, ppid, process group) of every live process, from /proc/<pid>/stat."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        out[int(d.name)] = (fields[0], int(fields[1]), int(fields[2]))
    return out


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pgrp: int) -> list[int]:
    """Processes of the group that still run (a zombie has finished; its reaper is not ours)."""
    return [pid for pid, (state, _, g) in _procs().items() if g == pgrp and state != "Z"]


def _poll(what: str, cond, proc: subprocess.Popen | None, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"poisonclip train exited ({proc.returncode}) before {what}: "
                        f"{proc.stdout.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def test_kill_9_of_train_leaves_no_orphan_trainer(tmp_path):
    write_corpus(SynthConfig(n_train=128, n_test=8, resolution=32, seed=1), tmp_path / "c", formats=("csv",))
    run = tmp_path / "run"
    # 500 epochs: minutes of training, so a surviving trainer would still be running at the check
    cmd = [sys.executable, "-c", "from poisonclip.cli import main; main()", "train", str(tmp_path / "c"),
           "--out", str(run), "--model", "poisonclip-test", "--epochs", "500", "--batch-size", "64",
           "--gpus", "0", "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    trainer = None
    try:
        # the trainer child, once it has exec'd open_clip_train (its death signal is set by then)
        trainer = _poll("starting the trainer", lambda: next(
            (pid for pid, (_, ppid, _) in _procs().items() if ppid == proc.pid and LAUNCH_MODULE in _cmdline(pid)),
            None), proc, 120)
        assert trainer is not None, "no trainer child appeared within 120 s"
        # ... and training: open_clip logged a step
        log = run / "out.log"
        training = _poll("the first training step",
                         lambda: log.is_file() and "Train Epoch" in log.read_text(errors="replace"), proc, 180)
        assert training, "the trainer logged no step within 180 s"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        gone = _poll("", lambda: not _alive(trainer), None, 60)
        left = _alive(trainer)
        assert gone and not left, f"orphans still running 60 s after the kill: {[_cmdline(p) for p in left]}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if trainer is not None and _alive(trainer):  # do not leave an orphan training on a failure
            try:
                os.killpg(trainer, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.stdout:
            proc.stdout.close()
