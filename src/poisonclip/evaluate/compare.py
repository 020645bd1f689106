"""Many models' metrics at once: summaries over seeds and the poisoned-vs-clean comparison.

``poisonclip eval-compare`` reads metrics.json files (``load_metrics``), summarises each group
(mean +- std over models and pooled Wilson intervals; each registered attack's evaluation
summarises its own metrics) and tests the clean-accuracy difference.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from poisonclip.errors import UserError
from poisonclip.contracts import METRICS_FILE, read_metrics
from poisonclip.evaluate.stats import Rate, compare_accuracy, mean_std, pooled_rate


def load_metrics(paths: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """metrics.json files; a folder stands for every metrics.json below it (sorted)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.rglob(METRICS_FILE))
            if not found:
                raise UserError(f"{p}: no {METRICS_FILE} below this folder")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"{p}: not found; give metrics.json files or folders holding them")
    return [{**read_metrics(f).to_json(), "_path": str(f)} for f in files]


def rates(ms: Sequence[Mapping[str, Any]], *keys: str) -> list[Rate]:
    """The rate at ``keys`` of every model, or [] when one model lacks it (not summarised)."""
    out = []
    for m in ms:
        node: Any = m
        for k in keys:
            node = node.get(k) if isinstance(node, Mapping) else None
        if node is None:
            return []  # a metric not every model has is not summarised
        out.append(Rate.from_dict(node))
    return out


def rate_summary(rs: Sequence[Rate]) -> dict[str, Any] | None:
    """Mean +- std of the per-model rates and the pooled Wilson interval (None: no rates)."""
    if not rs:
        return None
    return {"per_model": mean_std([r.rate for r in rs]).to_dict(), "pooled": pooled_rate(rs).to_dict()}


def summarise(ms: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean +- std over models (seeds) and pooled Wilson intervals for every shared metric."""
    from poisonclip.evaluate.hooks import all_evaluations

    if not ms:
        raise ValueError("no metrics to summarise")
    out: dict[str, Any] = {"n_models": len(ms)}
    for head in ("zeroshot", "probe"):
        out[f"clean_top1_{head}"] = rate_summary(rates(ms, "clean", head, "top1"))
    for ev in all_evaluations():
        out.update(ev.summarise(ms))
    return {k: v for k, v in out.items() if v is not None}


def _seed_pairs(poisoned: Sequence[Mapping[str, Any]], clean: Sequence[Mapping[str, Any]]
                ) -> tuple[list[int], list[int]] | None:
    """Index pairs (poisoned, clean) of models trained with the same seed, when the two groups
    hold exactly the same seeds once each (``model.train_seed``, from run.json); else None."""
    def seeds(ms: Sequence[Mapping[str, Any]]) -> list[Any]:
        return [(m.get("model") or {}).get("train_seed") for m in ms]

    sp, sc = seeds(poisoned), seeds(clean)
    if None in sp or None in sc or len(set(sp)) != len(sp) or sorted(sp) != sorted(sc):
        return None
    order = sorted(sp)
    return [sp.index(s) for s in order], [sc.index(s) for s in order]


def compare(poisoned: Sequence[Mapping[str, Any]], clean: Sequence[Mapping[str, Any]],
            alpha: float = 0.05) -> dict[str, Any]:
    """Summaries of both groups and the test of clean accuracy, poisoned vs clean models:
    paired by training seed when both groups hold the same seeds, unpaired (Welch) otherwise."""
    res: dict[str, Any] = {"poisoned": summarise(poisoned), "clean": summarise(clean), "accuracy_tests": {}}
    pairs = _seed_pairs(poisoned, clean)
    for head in ("zeroshot", "probe"):
        rp, rc = rates(poisoned, "clean", head, "top1"), rates(clean, "clean", head, "top1")
        if rp and rc:
            if pairs is not None:
                rp, rc = [rp[i] for i in pairs[0]], [rc[i] for i in pairs[1]]
            res["accuracy_tests"][head] = compare_accuracy(
                [r.rate for r in rp], [r.rate for r in rc], alpha, rp, rc, paired=pairs is not None).to_dict()
    return res
