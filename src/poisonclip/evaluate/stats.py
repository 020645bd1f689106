"""Uncertainty for every reported number: rates with Wilson intervals, means over seeds, and
the test behind "no significant loss of clean accuracy".

One trained model is one draw; a claim about an attack is a claim about the distribution over
seeds, so everything here takes several models' values. Pure functions on numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import stats as _st

Z95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclass(frozen=True)
class Rate:
    """``k`` successes out of ``n`` trials."""

    k: int
    n: int

    def __post_init__(self) -> None:
        if self.n < 0 or not 0 <= self.k <= max(self.n, 0):
            raise ValueError(f"need 0 <= k <= n, got k={self.k}, n={self.n}")

    @property
    def rate(self) -> float:
        return self.k / self.n if self.n else math.nan

    @property
    def ci95(self) -> tuple[float, float]:
        return wilson_interval(self.k, self.n)

    def to_dict(self) -> dict[str, Any]:
        lo, hi = self.ci95
        return {"k": self.k, "n": self.n, "rate": _finite(self.rate), "ci95": [_finite(lo), _finite(hi)]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Rate":
        return cls(int(d["k"]), int(d["n"]))


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (nan, nan when n == 0).

    Chosen over the normal (Wald) interval because rates here are often 0 or 1 with few
    trials, where Wald collapses to a zero-width interval.
    """
    if n == 0:
        return (math.nan, math.nan)
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    z = Z95 if confidence == 0.95 else float(_st.norm.ppf(0.5 + confidence / 2))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Clamp rounding noise; at k == 0 (k == n) the bound is exactly 0 (1).
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return (lo, hi)


def pooled_rate(rates: Sequence[Rate]) -> Rate:
    """All trials of several models together (e.g. targeted success over (model, target) pairs)."""
    return Rate(sum(r.k for r in rates), sum(r.n for r in rates))


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (ddof=1) of one quantity over models/seeds."""

    mean: float
    std: float      # nan when n < 2
    n: int
    min: float
    max: float

    def to_dict(self) -> dict[str, Any]:
        return {"mean": _finite(self.mean), "std": _finite(self.std), "n": self.n,
                "min": _finite(self.min), "max": _finite(self.max)}


def mean_std(values: Sequence[float]) -> Summary:
    """Summary over seeds; non-finite values (a metric a model could not compute) are errors."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no values to summarise")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"non-finite values in {a.tolist()}")
    std = float(a.std(ddof=1)) if a.size > 1 else math.nan
    return Summary(float(a.mean()), std, int(a.size), float(a.min()), float(a.max()))


@dataclass(frozen=True)
class Comparison:
    """Clean accuracy of poisoned models against clean models (with the same seeds: paired)."""

    test: str                 # "paired_t", "welch_t", "fisher_exact", or "none"
    mean_poisoned: float
    mean_clean: float
    diff: float               # poisoned - clean
    p_value: float | None
    statistic: float | None
    diff_ci95: tuple[float, float] | None
    alpha: float
    note: str
    paired: bool = False      # the two groups are models trained with the same seeds, pair by pair
    n_pairs: int | None = None
    n_poisoned: int = 0
    n_clean: int = 0
    wilcoxon_p: float | None = None   # paired: Wilcoxon signed-rank p, where n pairs allows (see below)

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value < self.alpha

    @property
    def significant_loss(self) -> bool:
        """The statement the paper makes: poisoned models are significantly *less* accurate."""
        return self.significant and self.diff < 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "test": self.test, "paired": self.paired, "n_pairs": self.n_pairs,
            "n_poisoned": self.n_poisoned, "n_clean": self.n_clean,
            "mean_poisoned": _finite(self.mean_poisoned),
            "mean_clean": _finite(self.mean_clean), "diff": _finite(self.diff),
            "p_value": _finite(self.p_value) if self.p_value is not None else None,
            "statistic": _finite(self.statistic) if self.statistic is not None else None,
            "diff_ci95": [_finite(x) for x in self.diff_ci95] if self.diff_ci95 else None,
            "wilcoxon_p": _finite(self.wilcoxon_p) if self.wilcoxon_p is not None else None,
            "alpha": self.alpha, "significant": self.significant,
            "significant_loss": self.significant_loss, "note": self.note,
        }


# The smallest number of pairs at which the exact two-sided Wilcoxon signed-rank test can
# reach p < 0.05 (with n pairs its smallest p is 2 / 2**n: 0.0625 at 5, 0.03125 at 6).
WILCOXON_MIN_PAIRS = 6


def compare_accuracy(poisoned: Sequence[float], clean: Sequence[float], alpha: float = 0.05,
                     poisoned_counts: Sequence[Rate] | None = None,
                     clean_counts: Sequence[Rate] | None = None, paired: bool = False) -> Comparison:
    """Two-sided test of mean clean accuracy, poisoned vs clean models.

    * ``paired=True``: ``poisoned[i]`` and ``clean[i]`` are models trained with the same seed
      (the same initialisation and data order up to the poisons), so their accuracies are
      not independent. With >= 2 pairs, the paired t-test over the per-seed differences
      (``scipy.stats.ttest_rel``) with the 95% interval of the mean difference; with
      ``WILCOXON_MIN_PAIRS`` (6) or more pairs the Wilcoxon signed-rank p-value is reported
      beside it (``wilcoxon_p``) as a check that does not assume normal differences. The
      pairing removes the seed-to-seed variation both models share, which Welch's test
      would count as noise.
    * Unpaired, both groups with >= 2 models: Welch's unequal-variance t-test over per-model
      accuracies (``scipy.stats.ttest_ind(equal_var=False)``), which counts seed-to-seed
      variation; its 95% interval for the difference is reported too.
    * A group with a single model (or a single pair): no seed variance can be estimated, so
      the t-tests are undefined. If per-model correct/total counts are given, Fisher's exact
      test on the pooled 2x2 table (correct/incorrect x poisoned/clean) is used instead; it
      only measures test-set sampling noise and says nothing about seed-to-seed variation
      (stated in ``note``). Without counts no test is run (``test == "none"``).
    * No spread (all values, or all paired differences, identical): t is undefined; p is
      reported as None with the reason.
    A non-significant result with few models is weak evidence of "no loss": read the
    interval of the difference, not only p.
    """
    p = np.asarray(poisoned, dtype=np.float64)
    c = np.asarray(clean, dtype=np.float64)
    if p.size == 0 or c.size == 0:
        raise ValueError("need at least one poisoned and one clean model")
    if paired and p.size != c.size:
        raise ValueError(f"paired comparison needs as many clean as poisoned models, got {p.size} and {c.size}")
    mp, mc = float(p.mean()), float(c.mean())
    base: dict[str, Any] = dict(mean_poisoned=mp, mean_clean=mc, diff=mp - mc, alpha=alpha, paired=paired,
                                n_pairs=int(p.size) if paired else None, n_poisoned=int(p.size),
                                n_clean=int(c.size))
    if paired and p.size >= 2:
        d = p - c
        if d.std() == 0:
            return Comparison("none", p_value=None, statistic=None, diff_ci95=None,
                              note=f"paired over {p.size} seeds, but every pair differs by the same amount; "
                                   "the paired t statistic is undefined", **base)
        r = _st.ttest_rel(p, c)
        ci = r.confidence_interval(0.95)
        wil = None
        if p.size >= WILCOXON_MIN_PAIRS:
            try:
                wil = float(_st.wilcoxon(p, c).pvalue)
            except ValueError:  # too few non-zero differences
                wil = None
        note = f"paired t-test over {p.size} pairs of models with the same seed (df={p.size - 1})"
        note += (f"; Wilcoxon signed-rank p={wil:.3g}" if wil is not None else
                 f"; Wilcoxon signed-rank not run (needs >= {WILCOXON_MIN_PAIRS} pairs to reach p < 0.05)")
        return Comparison("paired_t", p_value=float(r.pvalue), statistic=float(r.statistic),
                          diff_ci95=(float(ci.low), float(ci.high)), note=note, wilcoxon_p=wil, **base)
    if not paired and p.size >= 2 and c.size >= 2:
        if p.std() == 0 and c.std() == 0:
            return Comparison("none", p_value=None, statistic=None, diff_ci95=None,
                              note="no spread within either group; the t statistic is undefined", **base)
        r = _st.ttest_ind(p, c, equal_var=False)
        ci = r.confidence_interval(0.95)
        return Comparison("welch_t", p_value=float(r.pvalue), statistic=float(r.statistic),
                          diff_ci95=(float(ci.low), float(ci.high)),
                          note=f"Welch's t-test (unpaired) over {p.size} poisoned and {c.size} clean models "
                               f"(df={float(r.df):.1f})", **base)
    if poisoned_counts and clean_counts:
        kp, kc = pooled_rate(poisoned_counts), pooled_rate(clean_counts)
        table = [[kp.k, kp.n - kp.k], [kc.k, kc.n - kc.k]]
        r = _st.fisher_exact(table)
        return Comparison("fisher_exact", p_value=float(r.pvalue), statistic=float(r.statistic),
                          diff_ci95=None,
                          note="a group has one model, so seed variance is unknown: Fisher's exact test "
                               "on pooled correct/incorrect test images (test-set noise only)", **base)
    return Comparison("none", p_value=None, statistic=None, diff_ci95=None,
                      note="a group has one model and no counts were given; no test possible", **base)


def _finite(x: float | None) -> float | None:
    """JSON has no NaN: undefined numbers are written as null."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None
