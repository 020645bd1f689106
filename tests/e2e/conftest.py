"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from poisonclip.cli import app


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory):
    """One `poisonclip demo --quick` run (a few minutes), shared by every test that reads it:
    (output folder, CLI result)."""
    out = tmp_path_factory.mktemp("quick") / "demo"
    r = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), "--quiet"])
    return out, r

