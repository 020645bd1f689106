"""Numbers over seeds, in one place: every summary of a metric over several models and every
poisoned-vs-clean accuracy test is made here, whoever asks (the sweep report's tables, the
demo's table, ``poisonclip eval-compare``, an attack's ``AttackEvaluation.summarise``).

A ``Cell`` is one metric over the models of a group (one model per seed): mean and sample
standard deviation of the per-model values, for rates also the pooled k/n with its Wilson
interval, and for targeted success how many distinct targets stand behind the (target,
model) pairs, since pairs that share a target are not independent draws. It has two views:
``to_dict`` (a flat table cell, the report's) and ``to_summary`` (eval-compare's JSON).
Callers only pick the per-model values out of their own container (a results-table column,
metrics.json files); the maths is ``evaluate.stats``.
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from poisonclip.evaluate.stats import Comparison, Rate, Summary, compare_accuracy, mean_std, pooled_rate


def finite(x: Any) -> bool:
    """A real number a model actually has (not None, NaN, inf or a bool)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class Cell:
    """One metric over the models of a group."""

    values: Summary                          # mean, std (ddof=1) ... of the per-model values
    pooled: Rate | None = None               # rates: every model's trials together
    targets_per_model: float | None = None   # targeted success: targets behind each model's rate
    distinct_targets: int | None = None      # ... and how many distinct ones over all models

    def to_dict(self) -> dict[str, Any]:
        """The table cell: mean, std (None: one model), n_models; k, n, ci95 of a rate;
        n_targets_per_model and n_distinct_targets of targeted success."""
        s = self.values
        # JSON has no NaN: an undefined spread (one model) is None
        out: dict[str, Any] = {"mean": s.mean, "std": s.std if math.isfinite(s.std) else None, "n_models": s.n}
        if self.pooled is not None:
            out.update(k=self.pooled.k, n=self.pooled.n, ci95=list(self.pooled.ci95))
            if self.distinct_targets is not None:
                out.update(n_targets_per_model=self.targets_per_model, n_distinct_targets=self.distinct_targets)
        return out

    def to_summary(self) -> dict[str, Any]:
        """eval-compare's view: a value's mean/std/n/min/max; a rate's ``per_model`` summary and
        ``pooled`` rate (with ``n_distinct_targets`` for targeted success)."""
        if self.pooled is None:
            return self.values.to_dict()
        out: dict[str, Any] = {"per_model": self.values.to_dict(), "pooled": self.pooled.to_dict()}
        if self.distinct_targets is not None:
            out["n_distinct_targets"] = self.distinct_targets
        return out


def over_seeds(values: Sequence[Any], counts: Sequence[tuple[Any, Any]] | None = None,
               targets: Sequence[Any] | None = None) -> Cell | None:
    """One cell: ``values`` per model (None/NaN: the model has no such number), ``counts`` the
    (k, n) behind each rate, ``targets`` each model's target ids (';'-joined, as
    ``evaluate.targeted.target_ids`` writes them). None when no model has the number."""
    vals = [float(v) for v in values if finite(v)]
    if not vals:
        return None
    rates = [Rate(int(k), int(n)) for k, n in (counts or ()) if finite(k) and finite(n)]
    if not rates:
        return Cell(mean_std(vals))
    per_model = [str(t).split(";") for t in (targets or ()) if isinstance(t, str) and t]
    if not per_model:
        return Cell(mean_std(vals), pooled_rate(rates))
    sizes = [len(t) for t in per_model]
    return Cell(mean_std(vals), pooled_rate(rates),
                targets_per_model=sizes[0] if len(set(sizes)) == 1 else round(sum(sizes) / len(sizes), 2),
                distinct_targets=len({t for ts in per_model for t in ts}))


def rate_cell(rates: Sequence[Rate], targets: Sequence[Any] | None = None) -> Cell | None:
    """``over_seeds`` of one rate per model."""
    return over_seeds([r.rate for r in rates], [(r.k, r.n) for r in rates], targets)


def _missing(seed: Any) -> bool:
    return seed is None or (isinstance(seed, float) and math.isnan(seed))


def seed_pairs(poisoned_seeds: Sequence[Any], clean_seeds: Sequence[Any]) -> tuple[list[int], list[int]] | None:
    """Index pairs (poisoned, clean) of models trained with the same seed, in seed order, when
    the two groups hold exactly the same seeds once each; else None (no pairing)."""
    sp, sc = list(poisoned_seeds), list(clean_seeds)
    if any(map(_missing, sp + sc)) or len(set(sp)) != len(sp) or sorted(sp) != sorted(sc):
        return None
    order = sorted(sp)
    return [sp.index(s) for s in order], [sc.index(s) for s in order]


def accuracy_test(poisoned: Sequence[float], clean: Sequence[float], alpha: float = 0.05,
                  poisoned_counts: Sequence[Rate] | None = None, clean_counts: Sequence[Rate] | None = None,
                  poisoned_seeds: Sequence[Any] | None = None, clean_seeds: Sequence[Any] | None = None
                  ) -> Comparison:
    """Clean accuracy of poisoned models against clean models (``stats.compare_accuracy``):
    paired by training seed when both groups hold the same seeds once each (a poisoned and a
    clean model of one seed share initialisation and data order), else unpaired."""
    pairs = None
    if poisoned_seeds is not None and clean_seeds is not None:
        pairs = seed_pairs(poisoned_seeds, clean_seeds)
    if pairs is not None:
        ip, ic = pairs
        poisoned, clean = [poisoned[i] for i in ip], [clean[i] for i in ic]
        poisoned_counts = [poisoned_counts[i] for i in ip] if poisoned_counts else poisoned_counts
        clean_counts = [clean_counts[i] for i in ic] if clean_counts else clean_counts
    with warnings.catch_warnings():  # scipy warns when the few values are nearly equal
        warnings.simplefilter("ignore", RuntimeWarning)
        return compare_accuracy(poisoned, clean, alpha, poisoned_counts, clean_counts, paired=pairs is not None)


# --- metrics.json files (eval-compare and the attacks' summaries) ------------------------

def at(ms: Sequence[Mapping[str, Any]], *keys: str) -> list[Any]:
    """The node at ``keys`` of every model's metrics (None where a model lacks it)."""
    out = []
    for m in ms:
        node: Any = m
        for k in keys:
            node = node.get(k) if isinstance(node, Mapping) else None
        out.append(node)
    return out


def rates(ms: Sequence[Mapping[str, Any]], *keys: str) -> list[Rate]:
    """The rate at ``keys`` of every model, or [] when one model lacks it (not summarised)."""
    nodes = at(ms, *keys)
    if any(n is None for n in nodes):
        return []  # a metric not every model has is not summarised
    return [Rate.from_dict(n) for n in nodes]


def rate_summary(rs: Sequence[Rate], targets: Sequence[Any] | None = None) -> dict[str, Any] | None:
    """eval-compare's summary of one rate per model (None: no rates)."""
    cell = rate_cell(rs, targets) if rs else None
    return cell.to_summary() if cell is not None else None


def value_summary(ms: Sequence[Mapping[str, Any]], *keys: str) -> dict[str, Any] | None:
    """eval-compare's summary of the number at ``keys`` (None unless every model has it)."""
    vals = at(ms, *keys)
    if not vals or not all(finite(v) for v in vals):
        return None
    cell = over_seeds(vals)
    return cell.to_summary() if cell is not None else None
