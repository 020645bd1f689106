"""Advisory file locks, so two workers never build one artefact or run one trial twice.

``fcntl.flock`` (stdlib) is used because the kernel drops the lock when its holder dies, even
by ``kill -9``: a crashed worker can never leave a stale lock behind, which a lock *file*
(created with O_EXCL and deleted on exit) would. Linux NFS clients map flock onto NFS byte-range
locks, so the same code serialises Slurm jobs on a shared file system.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def hold(path: str | os.PathLike, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on ``path`` (created if needed) for the block.

    Yields True when held; with ``blocking=False`` yields False at once if another process
    holds it (the block then must not touch what the lock guards).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def is_held(path: str | os.PathLike) -> bool:
    """True while another process holds the lock on ``path`` (a running trial)."""
    path = Path(path)
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
