"""The model zoo: open_clip JSON configs shipped in ``model_configs/``.

Architectures are data, as in open_clip: each file is an open_clip model config, registered
with ``open_clip.add_model_config`` so open_clip's own factory and trainer build them by name.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"


@lru_cache(maxsize=None)
def register_models() -> tuple[str, ...]:
    """Make our configs known to open_clip in this process; returns their names."""
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)
    return tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
