"""Is a figure's effect real? The significance tests behind each of the paper's toy figures.

Each test takes the trained model as its unit (one row of the results table is one poisoned
model), because what varies between runs of the same setting is the model: test images
scored by one model are not independent draws of that setting, so pooling them would count
one model's luck many times over. With 2-3 seeds per point the per-point comparisons have few
degrees of freedom; the trend tests use every model of the figure at once.

* ``trend``: does the metric move with the figure's axis? Ordinary least squares of the
  per-model metric on log2(x) (the paper's axes are logarithmic), its slope per doubling with
  a t-based 95% interval and p-value, and Spearman's rank correlation (no linearity or
  normality assumed) beside it. A "flat" finding (Fig. 5 left) is read from the slope's
  interval: how large a change per doubling the data still allow.
* ``interaction``: does the better placement change with the number of poisons (Fig. 4's
  crossover)? OLS of the metric on placement, log2(poisons) and their product; the t-test of
  the product's coefficient.
* ``per_point``: the two placements at each count, Welch's t-test over models.
* ``adjacent``: each patch size against the next larger one (Fig. 6), Welch's t-test.
* ``targets_vs_clean``: targeted poisoning, per count, each target as scored by the poisoned
  model and by the clean model of the same seed: the exact McNemar test (a binomial test on
  the targets where the two disagree). Targets of one model share it, so this p-value counts
  targets as independent; read it with the per-model trend test.

scipy computes every p-value; what is written here is only which rows feed which test.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

Row = dict[str, Any]


def _clean(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0)
    return x[keep], y[keep]


def trend(x: Sequence[float], y: Sequence[float], *, figure: str, metric: str, axis: str) -> Row | None:
    """OLS slope of ``y`` per doubling of ``x`` (with 95% CI and p) and Spearman's rho."""
    from scipy import stats

    x, y = _clean(x, y)
    if len(x) < 3 or len(np.unique(x)) < 2:
        return None
    lx = np.log2(x)
    row: Row = {"figure": figure, "metric": metric, "axis": axis, "n_models": int(len(x)),
                "test": "OLS on log2(x); Spearman"}
    if np.ptp(y) == 0:
        return {**row, "estimate": 0.0, "note": "every model has the same value: no trend to test"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fit = stats.linregress(lx, y)
        rho = stats.spearmanr(x, y)
    t = stats.t.ppf(0.975, len(x) - 2)
    return {**row, "estimate": float(fit.slope), "ci95_lo": float(fit.slope - t * fit.stderr),
            "ci95_hi": float(fit.slope + t * fit.stderr), "p_value": float(fit.pvalue),
            "spearman_rho": _f(rho.statistic), "spearman_p": _f(rho.pvalue),
            "note": f"slope per doubling of {axis} over {len(x)} models (df={len(x) - 2})"}


def interaction(x: Sequence[float], group: Sequence[Any], y: Sequence[float], *, figure: str, metric: str,
                axis: str, levels: tuple[Any, Any]) -> Row | None:
    """OLS ``y ~ g + log2(x) + g*log2(x)`` with g = 1 for ``levels[1]``; the product's t-test:
    does the difference between the two groups grow (or shrink) per doubling of x?"""
    from scipy import stats

    x, y, g = np.asarray(x, dtype=float), np.asarray(y, dtype=float), np.asarray(group, dtype=object)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & np.isin(g, list(levels))
    x, y, g = x[keep], y[keep], (g[keep] == levels[1]).astype(float)
    n = len(y)
    if n < 6 or len(np.unique(x)) < 2 or g.min() == g.max():
        return None
    lx = np.log2(x)
    design = np.column_stack([np.ones(n), g, lx, g * lx])
    beta, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ beta
    df = n - design.shape[1]
    s2 = float(resid @ resid) / df
    cov = s2 * np.linalg.pinv(design.T @ design)
    se = math.sqrt(max(cov[3, 3], 0.0))
    row: Row = {"figure": figure, "metric": metric, "axis": axis, "n_models": n,
                "test": "OLS interaction t-test",
                "note": f"change per doubling of {axis} of ({levels[1]} - {levels[0]}); df={df}"}
    if se == 0:
        return {**row, "estimate": float(beta[3]), "note": row["note"] + "; no residual spread"}
    t = float(beta[3] / se)
    q = stats.t.ppf(0.975, df)
    return {**row, "estimate": float(beta[3]), "ci95_lo": float(beta[3] - q * se),
            "ci95_hi": float(beta[3] + q * se), "statistic": t, "p_value": float(2 * stats.t.sf(abs(t), df))}


def per_point(x: Sequence[Any], group: Sequence[Any], y: Sequence[float], *, figure: str, metric: str,
              axis: str, levels: tuple[Any, Any]) -> list[Row]:
    """At each x: mean of ``levels[1]`` minus ``levels[0]``, Welch's t-test over models."""
    from scipy import stats

    x, g, y = np.asarray(x, dtype=object), np.asarray(group, dtype=object), np.asarray(y, dtype=float)
    rows = []
    for value in sorted(set(x.tolist()), key=lambda v: (str(type(v)), v)):
        a = y[(x == value) & (g == levels[0]) & np.isfinite(y)]
        b = y[(x == value) & (g == levels[1]) & np.isfinite(y)]
        if len(a) == 0 or len(b) == 0:
            continue
        row: Row = {"figure": figure, "metric": metric, "axis": f"{axis} = {value}", "n_models": int(len(a) + len(b)),
                    "test": "Welch t-test", "estimate": float(b.mean() - a.mean()),
                    "note": f"{levels[1]} - {levels[0]} ({len(b)} vs {len(a)} models)"}
        if len(a) >= 2 and len(b) >= 2 and (a.std() > 0 or b.std() > 0):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                r = stats.ttest_ind(b, a, equal_var=False)
            ci = r.confidence_interval(0.95)
            row.update(statistic=float(r.statistic), p_value=float(r.pvalue), ci95_lo=_f(ci.low), ci95_hi=_f(ci.high))
        rows.append(row)
    return rows


def adjacent(x: Sequence[float], y: Sequence[float], *, figure: str, metric: str, axis: str) -> list[Row]:
    """Each value of the axis against the next larger one: Welch's t-test over models (does one
    more step of the axis still change the metric? Fig. 6: is 16x16 better than 4x4?)."""
    x, y = _clean(x, y)
    values = sorted(set(x.tolist()))
    rows = []
    for a, b in zip(values, values[1:]):
        keep = np.isin(x, [a, b])
        rows += [{**r, "axis": f"{axis}: {a:g} -> {b:g}"} for r in
                 per_point(np.zeros(keep.sum()), x[keep], y[keep], figure=figure, metric=metric, axis=axis,
                           levels=(a, b))]
    return rows


def targets_vs_clean(pairs: Iterable[tuple[Any, bool, bool]], *, figure: str, metric: str, axis: str) -> list[Row]:
    """``pairs``: (x, success on the poisoned model, success on its seed's clean model) per
    target; per x the exact McNemar test (binomial on the discordant targets)."""
    from scipy import stats

    by: dict[Any, list[tuple[bool, bool]]] = {}
    for x, p, c in pairs:
        by.setdefault(x, []).append((bool(p), bool(c)))
    rows = []
    for x in sorted(by):
        got = by[x]
        b = sum(p and not c for p, c in got)
        c_ = sum(c and not p for p, c in got)
        row: Row = {"figure": figure, "metric": metric, "axis": f"{axis} = {x}", "n_targets": len(got),
                    "test": "exact McNemar (targets)",
                    "estimate": (sum(p for p, _ in got) - sum(c for _, c in got)) / len(got),
                    "note": f"{b} targets hit only by the poisoned model, {c_} only by the clean one"}
        if b + c_ > 0:
            row["p_value"] = float(stats.binomtest(b, b + c_, 0.5).pvalue)
        else:
            row["p_value"] = 1.0
        rows.append(row)
    return rows


def _f(x: Any) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def figure_tests(df: Any, axes: Mapping[str, str], varying: Sequence[str],
                 target_pairs: Mapping[str, list[tuple[Any, bool, bool]]] | None = None) -> list[Row]:
    """Every test that the sweep's axes call for (see the module docstring)."""
    rows: list[Row] = []

    def col(name: str) -> str | None:
        return name if name in df.columns and df[name].notna().any() else None

    poisons, placement = axes["poisons"], axes["placement"]
    backdoor = col("poisoned.z_as_trained") is not None
    targeted = col("poisoned.targeted_success_zeroshot") is not None

    def add_trends(figure: str, x: str, metrics: Sequence[str], sub: Any = None, label: str = "") -> None:
        data = df if sub is None else sub
        for m in metrics:
            if col(m) and x in data.columns:
                r = trend(data[x], data[m], figure=figure, metric=m + label, axis=x)
                if r:
                    rows.append(r)

    if targeted and poisons in varying:
        add_trends("Fig. 2 left", poisons, ["poisoned.targeted_success_zeroshot", "poisoned.targeted_success_probe"])
        for head, pairs in (target_pairs or {}).items():
            rows.extend(targets_vs_clean(pairs, figure="Fig. 2 left", metric=f"targeted success ({head}), "
                                         "poisoned vs clean model", axis=poisons))
    if backdoor and poisons in varying:
        y = ["poisoned.asr_as_trained_zeroshot", "poisoned.z_as_trained"]
        if placement in varying:
            for level in sorted(df[placement].dropna().unique()):
                add_trends("Fig. 4", poisons, y, df[df[placement] == level], f" (placed: {level})")
            levels = ("corner", "random") if set(df[placement].dropna()) >= {"corner", "random"} else None
            if levels:
                for m in ("poisoned.z_as_trained", "poisoned.asr_as_trained_zeroshot"):
                    if col(m):
                        r = interaction(df[poisons], df[placement], df[m], figure="Fig. 4",
                                        metric=m + " (each tested as placed)", axis=poisons, levels=levels)
                        if r:
                            rows.append(r)
                        rows.extend(per_point(df[poisons], df[placement], df[m], figure="Fig. 4",
                                              metric=m + " (each tested as placed)", axis=poisons, levels=levels))
        else:
            add_trends("Fig. 2 right", poisons, y)
    if backdoor and axes["data_size"] in varying:
        x = "data.n_clean" if col("data.n_clean") else axes["data_size"]
        add_trends("Fig. 5 left", x, ["poisoned.z_as_trained", "poisoned.asr_as_trained_zeroshot"])
    if backdoor and axes["model"] in varying:
        x = "model.vision_params" if col("model.vision_params") else ("model.n_params" if col("model.n_params") else None)
        if x:
            add_trends("Fig. 5 right", x, ["poisoned.z_as_trained", "poisoned.asr_as_trained_zeroshot"])
            rows.extend(adjacent(df[x], df["poisoned.z_as_trained"], figure="Fig. 5 right",
                                 metric="poisoned.z_as_trained", axis=x))
    if backdoor and axes["patch"] in varying:
        add_trends("Fig. 6", axes["patch"], ["poisoned.z_as_trained", "poisoned.asr_as_trained_zeroshot"])
        if col("poisoned.z_as_trained"):
            rows.extend(adjacent(df[axes["patch"]], df["poisoned.z_as_trained"], figure="Fig. 6",
                                 metric="poisoned.z_as_trained", axis=axes["patch"]))
    return rows
