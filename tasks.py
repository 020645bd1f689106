#!/usr/bin/env python3
"""Set-up and run in one step, with nothing but Python 3.10+ and pip.

    python3 tasks.py demo [DEMO OPTIONS]   # create .venv if needed, install, run the demo
    python3 tasks.py test [PYTEST OPTIONS] # create .venv if needed, install, run the tests

The virtual environment is (re)installed only when pyproject.toml changed since the last
install (a stamp file holds its hash), so the second call starts at once.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("POISONCLIP_VENV", ROOT / ".venv"))
STAMP = VENV / ".poisonclip-installed"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")


def _wanted() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def ensure_venv() -> None:
    if STAMP.exists() and STAMP.read_text().strip() == _wanted():
        return
    if sys.version_info < (3, 10):
        sys.exit(f"poisonclip needs Python 3.10 or newer; this is {sys.version.split()[0]}")
    if not (BIN / "python").exists():
        print(f"creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("installing poisonclip and its dependencies (first run takes a few minutes)", flush=True)
    subprocess.run([str(BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check",
                    "-q", "-e", f"{ROOT}[dev]"], check=True)
    STAMP.write_text(_wanted())


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test", "setup"}:
        print(__doc__.strip())
        return 2
    ensure_venv()
    cmd, rest = argv[0], argv[1:]
    if cmd == "setup":
        return 0
    if cmd == "demo":
        return subprocess.call([str(BIN / "poisonclip"), "demo", *rest])
    return subprocess.call([str(BIN / "python"), "-m", "pytest", *rest], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
