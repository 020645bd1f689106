"""The package's import structure, as pyproject.toml's import-linter contracts state it:
layered stages, the evaluator reaching attacks through the registry only, and no cycles."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _lint(config: Path, path: Path) -> subprocess.CompletedProcess:
    """``lint-imports CONFIG`` with ``path`` first on sys.path (the package under test)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                           "sys.exit(lint_imports_command())", str(config), "--no-cache"],
                          capture_output=True, text=True, cwd=config.parent, env=env)


def test_the_import_contracts_hold():
    pytest.importorskip("importlinter")
    r = _lint(ROOT / "pyproject.toml", ROOT / "src")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 kept, 0 broken" in r.stdout


def test_a_stage_importing_a_later_stage_breaks_the_contract(tmp_path):
    """The linter sees imports inside functions: a package laid out like ours with one
    function-level import of a later stage fails the same kind of contract."""
    pytest.importorskip("importlinter")
    pkg = tmp_path / "toypkg"
    for sub in ("train", "evaluate"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "evaluate" / "api.py").write_text("from toypkg.train import models\n")
    (pkg / "train" / "models.py").write_text("def f():\n    from toypkg.evaluate import api\n    return api\n")
    cfg = tmp_path / "contracts.toml"
    cfg.write_text('[tool.importlinter]\nroot_packages = ["toypkg"]\n\n[[tool.importlinter.contracts]]\n'
                   'name = "layers"\ntype = "layers"\nlayers = ["toypkg.evaluate", "toypkg.train"]\n')
    r = _lint(cfg, tmp_path)
    assert r.returncode != 0
    assert "toypkg.train.models -> toypkg.evaluate.api" in r.stdout
