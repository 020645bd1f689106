"""The results table's columns of one evaluation: ``metrics.json`` -> flat {name: number}.

A sweep tabulates every trial as one row; this is where an evaluation's nested metrics become
the row's cells (names in docs/sweeps.md, "Columns of the results table"). Clean accuracy and
similarity are every model's; each registered attack's evaluation adds the columns of its own
metrics (``AttackEvaluation.columns``), so a new attack's numbers reach the table unasked.
"""

from __future__ import annotations

import math
from typing import Any, Mapping


def rate_columns(prefix: str, node: Any) -> dict[str, Any]:
    """A rate ({k, n, rate, ci95}) as three cells: ``prefix``, ``prefix_k``, ``prefix_n``."""
    if isinstance(node, Mapping) and "k" in node and "n" in node:
        return {prefix: node.get("rate"), f"{prefix}_k": node["k"], f"{prefix}_n": node["n"]}
    return {}


# metrics.json's retrieval directions -> their column prefixes
RETRIEVAL_DIRECTIONS = {"image_to_text": "i2t", "text_to_image": "t2i"}


def retrieval_columns(m: Mapping[str, Any]) -> dict[str, Any]:
    """Clean retrieval recall as ``retrieval_i2t_r1``, ``retrieval_t2i_r10``, ... (with _k, _n)."""
    out: dict[str, Any] = {}
    ret = m.get("retrieval") or {}
    for direction, short in RETRIEVAL_DIRECTIONS.items():
        for key, node in (ret.get(direction) or {}).items():
            out.update(rate_columns(f"retrieval_{short}_r{key.removeprefix('R@')}", node))
    return out


def geometry_columns(prefix: str, geometry: Any) -> dict[str, Any]:
    """An attack's encoder geometry ({side: {name: cosine}}) as ``<prefix>_<side>_<name>`` cells."""
    if not isinstance(geometry, Mapping):
        return {}
    return {f"{prefix}_{side}_{name}": v for side, node in geometry.items() if isinstance(node, Mapping)
            for name, v in node.items()}


def flat_metrics(m: Mapping[str, Any]) -> dict[str, Any]:
    """The evaluator's metrics.json -> the sweep table's columns; non-finite numbers -> None."""
    from poisonclip.evaluate.hooks import all_evaluations

    out: dict[str, Any] = {}
    for head in ("zeroshot", "probe"):
        out.update(rate_columns(f"top1_{head}", m.get("clean", {}).get(head, {}).get("top1")))
    sim = m.get("similarity", {}).get("clean", {})
    if sim:
        out["sim_clean_mean"], out["sim_clean_std"] = sim.get("mean"), sim.get("std")
    out.update(retrieval_columns(m))
    for ev in all_evaluations():
        out.update(ev.columns(m))
    ex = m.get("excluded_targets")
    if ex:
        out["excluded_targets"] = ex.get("data", 0) + ex.get("probe_train", 0)
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}
