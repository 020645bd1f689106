"""The results table's columns of one evaluation: ``metrics.json`` -> flat {name: number}.

A sweep tabulates every trial as one row; this is where an evaluation's nested metrics become
the row's cells (names in docs/sweeps.md, "Columns of the results table").
"""

from __future__ import annotations

import math
from typing import Any, Mapping


def _rate(prefix: str, node: Any, out: dict[str, Any]) -> None:
    if isinstance(node, Mapping) and "k" in node and "n" in node:
        out[prefix] = node.get("rate")
        out[f"{prefix}_k"] = node["k"]
        out[f"{prefix}_n"] = node["n"]


def flat_metrics(m: Mapping[str, Any]) -> dict[str, Any]:
    """The evaluator's metrics.json -> the sweep table's columns (names in docs/sweeps.md, "Columns of the results table").

    Test placements: ``as_trained`` (the trigger placed as in the poisons), ``random``, and
    ``corner`` (the paper's consistent placement: the as-trained measurement when training
    used the corner, or the evaluator's own corner measurement where it makes one).
    """
    out: dict[str, Any] = {}
    for head in ("zeroshot", "probe"):
        _rate(f"top1_{head}", m.get("clean", {}).get(head, {}).get("top1"), out)
    sim = m.get("similarity", {}).get("clean", {})
    if sim:
        out["sim_clean_mean"], out["sim_clean_std"] = sim.get("mean"), sim.get("std")
    bd = m.get("backdoor")
    if bd:
        names = [("train_placement", "as_trained"), ("random", "random"), ("corner", "corner")]
        if bd.get("train_placement") == "corner":
            names.append(("train_placement", "corner"))
        for key, place in names:
            for head in ("zeroshot", "probe"):
                _rate(f"asr_{place}_{head}", bd.get("asr", {}).get(key, {}).get(head), out)
            z = bd.get("zscore", {}).get(key)
            if z:
                out[f"z_{place}"] = z.get("z")
                out[f"sim_triggered_{place}_mean"] = z.get("mean_triggered")
        for head in ("zeroshot", "probe"):
            _rate(f"target_rate_clean_images_{head}", bd.get("target_rate_without_trigger", {}).get(head), out)
    tg = m.get("targeted")
    if tg:
        for head, s in tg.get("summary", {}).items():
            _rate(f"targeted_success_{head}", s.get("success"), out)
            out[f"targeted_rank_{head}"] = s.get("mean_rank")
        # which targets stand behind the rate: distinct ones are counted over seeds in the report
        out["targeted_targets"] = target_ids(tg.get("targets", []))
    ex = m.get("excluded_targets")
    if ex:
        out["excluded_targets"] = ex.get("data", 0) + ex.get("probe_train", 0)
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


def target_ids(rows: Any) -> str:
    """One target's identity is its image (sha256 of the source bytes, else its id) and its label;
    the targets of one model as a ';'-joined, sorted string (a table cell)."""
    ids = sorted(f"{(r.get('source_sha256') or r.get('id') or '')[:16]}:{r.get('label')}" for r in rows or ())
    return ";".join(ids)
