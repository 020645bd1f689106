"""``python -m poisonclip`` is the same command line as the ``poisonclip`` script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def _python_m(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "poisonclip", *args], capture_output=True, text=True,
                          cwd=cwd, env=env)


def test_python_m_runs_the_cli_with_its_commands_and_its_error_handling(tmp_path):
    import typer

    from poisonclip.cli import app

    r = _python_m("--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "python -m poisonclip" in r.stdout
    commands = typer.main.get_command(app).commands   # every command and sub-app of the script
    assert len(commands) >= 8 and all(name in r.stdout for name in commands)
    # a mistake is one error line on stderr and exit status 2, as from the script; nothing is written
    bad = _python_m("demo", "--seeds", "0", "--quiet", "--out", str(tmp_path / "demo"), cwd=tmp_path)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == ["error: --seeds: must be at least 1, got 0"]
    assert not (tmp_path / "demo").exists()
