"""Atomic file and folder writes, what an output may replace, and content hashes.

Every output of the project goes through here so an interrupted run never leaves a file or
dataset that looks complete but is not: data is written to a temporary sibling and renamed.
``check_out`` is the one rule for what a command may replace (docs/safety.md): only an
earlier output of the same kind (``OutputKind``: its completion file present), never the
working or home directory, never the command's own input.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from poisonclip.errors import UserError

# mkstemp creates files readable by the owner only; outputs should get the permissions an
# ordinary open() would give them (shared datasets on a cluster are read by other users).
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, replace: bool = True) -> Path:
    """Write ``data`` to ``path`` through a temporary sibling, so readers see all or nothing.

    ``replace=False``: raise ``FileExistsError`` (and write nothing) if ``path`` exists when the
    data is in place, even if it appeared while the data was being written (a hard link is
    made atomically or not at all).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise
            except OSError:   # no hard links on this file system: check, then rename
                if os.path.lexists(path):
                    raise FileExistsError(path) from None
                os.replace(tmp, path)
            Path(tmp).unlink(missing_ok=True)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, replace: bool = True) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), replace=replace)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, replace: bool = True) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n",
                             replace=replace)


@dataclass(frozen=True)
class OutputKind:
    """What a folder written by one poisonclip command looks like once it is complete.

    ``markers``: (file name, keys its JSON object must hold) pairs; a folder is an output of
    this kind when any one of them is present and valid. The first marker is the completion
    file, written last.
    """

    name: str
    markers: tuple[tuple[str, tuple[str, ...]], ...]

    def recognises(self, folder: Path) -> bool:
        for fname, keys in self.markers:
            f = folder / fname
            if f.is_file() and not f.is_symlink():
                try:
                    data = json.loads(f.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    continue
                if isinstance(data, dict) and all(k in data for k in keys):
                    return True
        return False

    @property
    def marker(self) -> str:
        return self.markers[0][0]


def input_paths(spec: str | os.PathLike) -> list[Path]:
    """The file system paths a dataset argument names: ``::``-joined parts, and for a brace
    or glob pattern the folder it lies in (``shards/{000..009}.tar`` -> ``shards``)."""
    out = []
    for part in str(spec).split("::"):
        if not part:
            continue
        cut = min((i for i in (part.find(c) for c in "{*?[") if i >= 0), default=-1)
        if cut >= 0:
            part = os.path.dirname(part[:cut]) or "."
        out.append(Path(part))
    return out


def _real(p: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.expanduser(p)))


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """``a`` and ``b`` name the same file (after ``~``, links and ``..``)."""
    return _real(a) == _real(b)


def _within(child: Path, parent: Path) -> bool:
    """``child`` is ``parent`` or lies inside it (both real, absolute paths)."""
    return child == parent or parent in child.parents


def check_place(out: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), what: str = "--out") -> Path:
    """Refuse an output location whose replacement could take other data with it: ``out`` is,
    or holds, the file system root, the home directory or the working directory; or ``out``
    is, holds or lies inside one of ``inputs``. Returns ``out`` made absolute."""
    absolute = Path(os.path.abspath(os.path.expanduser(out)))
    real = _real(absolute)
    for label, p in (("the file system root", "/"), ("your home directory", "~"),
                     ("the working directory", os.curdir)):
        if _within(_real(p), real):
            raise UserError(f"{what} {out}: is or holds {label}; choose a new folder for the output")
    for inp in inputs:
        r = _real(inp)
        if _within(r, real) or (r.is_dir() and _within(real, r)):
            raise UserError(f"{what} {out}: is, holds or lies inside the input {inp}; "
                            "write the output somewhere else")
    return absolute


def check_out(out: str | os.PathLike, kind: OutputKind | None, *, overwrite: bool,
              inputs: Iterable[str | os.PathLike] = (), what: str = "--out") -> Path:
    """The one rule for every folder poisonclip may replace; returns ``out`` made absolute.

    Refused (``UserError``, nothing touched): ``out`` is, or holds, the file system root, the
    home directory or the working directory; ``out`` is, holds, or lies inside one of
    ``inputs`` (what the command reads); ``out`` exists and ``overwrite`` is off; ``out``
    exists and is not an output of ``kind`` (its marker file present and valid) nor empty.
    ``kind=None``: only an empty folder may be replaced.
    """
    absolute = check_place(out, inputs, what)
    if not os.path.lexists(absolute):
        return absolute
    kind_name = kind.name if kind else "output"
    if not overwrite:
        raise UserError(f"{what} {out}: already exists; choose another {what} or pass --overwrite "
                        f"(which replaces only a previous {kind_name})")
    if absolute.is_symlink():
        raise UserError(f"{what} {out}: is a symbolic link; give the folder itself")
    if not absolute.is_dir():
        raise UserError(f"{what} {out}: exists and is not a folder; refusing to replace it")
    if not any(absolute.iterdir()):
        return absolute
    if kind is None or not kind.recognises(absolute):
        marker = f" (no valid {kind.marker})" if kind else ""
        raise UserError(f"{what} {out}: not a {kind_name} written by poisonclip{marker}; --overwrite "
                        "replaces only those, so this folder is left untouched: choose another "
                        f"{what} or remove it yourself")
    return absolute


@contextmanager
def atomic_dir(final: str | os.PathLike, overwrite: bool = False, *, kind: OutputKind | None = None,
               inputs: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``final`` only if the block completes.

    ``check_out`` decides first whether ``final`` may be written (``kind``: what may be
    replaced; ``inputs``: what the command reads). When the block completes the check is
    made again: a folder that appeared meanwhile is never replaced without ``overwrite`` (the
    new content is then discarded and the command fails), and with ``overwrite`` it must still
    be an output of ``kind``. The old folder goes only after the new one is in place.
    """
    inputs = list(inputs)
    final = check_out(final, kind, overwrite=overwrite, inputs=inputs)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)   # mkdtemp makes it owner-only; outputs get the umask
        yield tmp
        if os.path.lexists(final):
            if not overwrite:
                raise UserError(f"--out {final}: appeared while this command ran; left it untouched and "
                                "discarded the new output (choose another --out)")
            check_out(final, kind, overwrite=True, inputs=inputs)
            trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            os.replace(final, trash / "old")
            try:
                os.rename(tmp, final)
            except OSError:
                os.replace(trash / "old", final)   # put the old output back
                raise
            shutil.rmtree(trash, ignore_errors=True)
        else:
            try:
                os.rename(tmp, final)   # fails if a non-empty folder appeared since the check
            except OSError as e:
                raise UserError(f"--out {final}: appeared while this command ran ({e.strerror}); left it "
                                "untouched and discarded the new output (choose another --out)") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
