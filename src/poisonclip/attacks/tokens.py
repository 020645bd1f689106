"""Text triggers: a trigger token put into a caption (the text backdoor's transform).

Free of registry imports, like ``triggers.py``: the registry hands this one function to the
evaluator (``registry.insert_trigger_token``), the planner writes its poisons with it.
"""

from __future__ import annotations

import numpy as np

POSITIONS = ("random", "start", "end")


def insert_token(caption: str, token: str, position: str, rng: np.random.Generator | None = None) -> str:
    """``caption`` with ``token`` as a word of its own: first, last, or at a word boundary drawn
    from ``rng`` (``position`` "start", "end", "random"). Whitespace runs become one space.
    Poisons and evaluation queries are made by this one function."""
    words = caption.split()
    if position == "start":
        at = 0
    elif position == "end":
        at = len(words)
    elif position == "random":
        if rng is None:
            raise ValueError("a random position needs a generator")
        at = int(rng.integers(0, len(words) + 1))
    else:
        raise ValueError(f"position {position!r} is not one of {', '.join(POSITIONS)}")
    return " ".join(words[:at] + [token] + words[at:])
