"""`poisonclip poison` (placeholder until its stage lands)."""

from __future__ import annotations

from poisonclip.cli.common import App


def register(root: App) -> None:
    """Add this stage's commands to the root app."""
