"""The paper's figures as small matplotlib functions (Agg backend, PNG + SVG).

Reusable by any caller (the sweep report, the demo, a notebook). Every function draws into
``ax`` when given one, else into a new figure, and saves ``path`` (a stem: ``path.png`` and
``path.svg``) when given; it returns the axes. Output files are byte-stable for the same
input (no dates in SVG, fixed SVG id salt).

* ``metric_vs(frame, x, y, hue=None)`` -- mean over seeds with a one-standard-deviation band
  (Figures 2, 4, 5, 6 of the paper are all this shape).
* ``similarity_histogram(clean, triggered, ...)`` -- Figure 3 (right): pairwise cosine
  similarity of clean vs triggered images, with the normal fit to the clean pairs. Each
  argument is either a 1-D array of similarities or a ``Histogram(counts, edges)`` (what the
  evaluator's ``similarities.npz`` holds).
* ``same_label_curve(edges, pairs, same)`` -- Figure 3 (left): probability that two images
  share a label as a function of their similarity (log scale).
* ``rate_vs(series)`` -- pooled rates with 95% Wilson intervals (Figure 2 left).
* ``accuracy_comparison(groups)`` -- clean accuracy of poisoned and clean models per setting.
* ``save(fig, stem)`` -- PNG and SVG side by side.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # no display anywhere this runs (CI, cluster nodes)

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

plt.rcParams.update({"svg.hashsalt": "poisonclip", "figure.dpi": 100, "savefig.dpi": 110,
                     "axes.grid": True, "grid.alpha": 0.3, "font.size": 9})

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


@dataclass(frozen=True)
class Histogram:
    """Counts over bin ``edges`` (len(counts) == len(edges) - 1); ``mean``/``std`` are the
    exact moments when known (else estimated from the bins)."""

    counts: np.ndarray
    edges: np.ndarray
    mean: float | None = None
    std: float | None = None

    def moments(self) -> tuple[float, float]:
        if self.mean is not None and self.std is not None:
            return float(self.mean), float(self.std)
        centres = (self.edges[:-1] + self.edges[1:]) / 2
        w = self.counts / max(self.counts.sum(), 1)
        mean = float((centres * w).sum())
        return mean, float(math.sqrt(max(0.0, (w * (centres - mean) ** 2).sum())))


def save(fig: plt.Figure, stem: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``stem.png`` and ``stem.svg`` (atomically) and return both paths."""
    from poisonclip.io_utils import atomic_write_bytes

    stem = Path(stem)
    paths = []
    for ext, meta in (("png", {"Software": None}), ("svg", {"Date": None})):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, bbox_inches="tight", metadata=meta)
        paths.append(atomic_write_bytes(stem.with_suffix(f".{ext}"), buf.getvalue()))
    return paths[0], paths[1]


def png_bytes(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def _axes(ax: plt.Axes | None, size: tuple[float, float] = (4.8, 3.4)) -> plt.Axes:
    if ax is not None:
        return ax
    fig, ax = plt.subplots(figsize=size)
    return ax


def _finish(ax: plt.Axes, path: str | os.PathLike | None) -> plt.Axes:
    if path is not None:
        fig = ax.figure
        fig.tight_layout()
        save(fig, path)
    return ax


def line_band(ax: plt.Axes, x: Sequence[float], mean: Sequence[float], std: Sequence[float],
              label: str | None = None, color: str | None = None, marker: str = "o",
              linestyle: str = "-") -> None:
    """A mean line with a shaded one-standard-deviation band (nan std: no band there)."""
    x, mean, std = (np.asarray(a, dtype=float) for a in (x, mean, std))
    line, = ax.plot(x, mean, marker=marker, label=label, color=color, linestyle=linestyle, markersize=4)
    s = np.nan_to_num(std, nan=0.0)
    ax.fill_between(x, mean - s, mean + s, color=line.get_color(), alpha=0.2, linewidth=0)


def _sort_key(v: Any) -> tuple:
    return (0, float(v), "") if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) else (1, 0.0, str(v))


def metric_vs(frame: Any, x: str, y: str, hue: str | Sequence[str] | None = None,
              ax: plt.Axes | None = None, path: str | os.PathLike | None = None, *,
              xlabel: str | None = None, ylabel: str | None = None, title: str | None = None,
              logx: bool = False, label_fmt: str = "{hue}", baseline: tuple[float, float] | None = None,
              baseline_label: str = "clean models", ylim: tuple[float, float] | None = None,
              linestyle: str = "-", color_offset: int = 0) -> plt.Axes:
    """Mean of ``y`` over the rows sharing (hue, x) -- the seeds -- with a std band.

    ``frame`` is a pandas DataFrame with one row per trained model. ``baseline`` (mean, std)
    draws a dashed horizontal reference, e.g. the same metric on clean models.
    """
    ax = _axes(ax)
    data = frame.dropna(subset=[y, x])
    hues = [hue] if isinstance(hue, str) else list(hue or [])
    groups = [((), data)] if not hues else list(data.groupby(hues, sort=False, dropna=False))
    groups.sort(key=lambda g: tuple(_sort_key(v) for v in (g[0] if isinstance(g[0], tuple) else (g[0],))))
    for i, (key, sub) in enumerate(groups):
        agg = sub.groupby(x)[y].agg(["mean", "std", "count"])
        agg = agg.loc[sorted(agg.index, key=_sort_key)]
        key = key if isinstance(key, tuple) else (key,)
        label = None
        if hues:
            label = label_fmt.format(hue=", ".join(f"{h.rsplit('.', 1)[-1]}={v}" for h, v in zip(hues, key)),
                                     **{h.rsplit(".", 1)[-1]: v for h, v in zip(hues, key)})
        line_band(ax, agg.index.to_numpy(dtype=float), agg["mean"], agg["std"], label=label,
                  color=PALETTE[(i + color_offset) % len(PALETTE)], linestyle=linestyle)
    if baseline is not None and baseline[0] is not None and math.isfinite(baseline[0]):
        m, s = baseline
        ax.axhline(m, color="0.4", linestyle="--", linewidth=1, label=baseline_label)
        if s is not None and math.isfinite(s):
            ax.axhspan(m - s, m + s, color="0.5", alpha=0.12, linewidth=0)
    if logx:
        ax.set_xscale("log")
        _plain_ticks(ax.xaxis, sorted(set(data[x].astype(float))))
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    if ylim:
        ax.set_ylim(*ylim)
    if title:
        ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return _finish(ax, path)


def rate_vs(series: Sequence[tuple[str, Sequence[float], Sequence[int], Sequence[int]]], ax: plt.Axes | None = None,
            path: str | os.PathLike | None = None, *, xlabel: str = "", ylabel: str = "rate",
            title: str | None = None, logx: bool = True, linestyles: Sequence[str] | None = None) -> plt.Axes:
    """Rates with 95% Wilson intervals: per series ``(label, x, k, n)``, the pooled ``k/n`` at
    each x (Figure 2 left: targets hit out of (target, model) pairs)."""
    from poisonclip.evaluate.stats import wilson_interval

    ax = _axes(ax)
    xs_all: set[float] = set()
    for i, (label, xs, ks, ns) in enumerate(series):
        xs, ks, ns = np.asarray(xs, dtype=float), np.asarray(ks, dtype=int), np.asarray(ns, dtype=int)
        xs_all.update(xs[ns > 0].tolist())
        # side by side, so equal rates of two series do not hide each other's interval
        xs = xs * (1 + 0.04 * (i - (len(series) - 1) / 2)) if logx else xs + 0.04 * (i - (len(series) - 1) / 2)
        keep = ns > 0
        if not keep.any():
            continue
        xs, ks, ns = xs[keep], ks[keep], ns[keep]
        rate = ks / ns
        ci = np.array([wilson_interval(int(k), int(n)) for k, n in zip(ks, ns)])
        ls = linestyles[i] if linestyles else "-"
        ax.errorbar(xs, rate, yerr=[rate - ci[:, 0], ci[:, 1] - rate], marker="o", markersize=4, capsize=3,
                    linestyle=ls, color=PALETTE[i % len(PALETTE)], label=label)
    if logx and xs_all and min(xs_all) > 0:
        ax.set_xscale("log")
        _plain_ticks(ax.xaxis, sorted(xs_all))
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return _finish(ax, path)


def _plain_ticks(axis: Any, values: Sequence[float] | None = None) -> None:
    """Label a log axis with plain numbers (1500, not 1.5x10^3), at ``values`` if given."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    if values is not None and 0 < len(values) <= 12:
        axis.set_ticks(values)
    # whole numbers as they are (1500), fractions to two digits (0.091, not 0.090626)
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}" if float(v).is_integer() else f"{v:.2g}"))
    axis.set_minor_formatter(NullFormatter())


def _as_hist(h: Any, edges: np.ndarray | None) -> Histogram:
    if isinstance(h, Histogram):
        return h
    if isinstance(h, Mapping):
        return Histogram(np.asarray(h["counts"]), np.asarray(h["edges"]), h.get("mean"), h.get("std"))
    values = np.asarray(h, dtype=float).ravel()
    if edges is None:
        edges = np.linspace(-1.0, 1.0, 101)
    counts, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)
    return Histogram(counts, edges, float(values.mean()), float(values.std()))


def _rebin(h: Histogram, max_bins: int) -> Histogram:
    """Merge adjacent bins so a 200-bin histogram of a few hundred pairs stays readable."""
    n = len(h.counts)
    if n <= max_bins:
        return h
    f = math.ceil(n / max_bins)
    pad = (-n) % f
    counts = np.concatenate([h.counts, np.zeros(pad, dtype=h.counts.dtype)]).reshape(-1, f).sum(axis=1)
    step = h.edges[1] - h.edges[0]
    edges = np.concatenate([h.edges[::f], [h.edges[-1] + pad * step]])[: len(counts) + 1]
    return Histogram(counts, edges, h.mean, h.std)


def similarity_histogram(clean: Any, triggered: Any, ax: plt.Axes | None = None,
                         path: str | os.PathLike | None = None, *, edges: np.ndarray | None = None,
                         labels: tuple[str, str] = ("natural images", "with trigger"),
                         fit_normal: bool = True, max_bins: int = 80, title: str | None = None,
                         xlim: tuple[float, float] | None = None) -> plt.Axes:
    """Figure 3 (right): densities of pairwise cosine similarity, clean vs triggered images,
    with N(mean, std) of the clean pairs and the backdoor z-score in the legend."""
    ax = _axes(ax)
    hc, ht = (_rebin(_as_hist(h, edges), max_bins) for h in (clean, triggered))
    for h, label, color in ((hc, labels[0], PALETTE[0]), (ht, labels[1], PALETTE[1])):
        widths = np.diff(h.edges)
        density = h.counts / max(h.counts.sum(), 1) / widths
        ax.bar(h.edges[:-1], density, width=widths, align="edge", alpha=0.55, color=color,
               label=f"{label} histogram", linewidth=0)
    mc, sc = hc.moments()
    mt, _ = ht.moments()
    if fit_normal and sc > 0:
        grid = np.linspace(hc.edges[0], hc.edges[-1], 600)
        pdf = np.exp(-0.5 * ((grid - mc) / sc) ** 2) / (sc * math.sqrt(2 * math.pi))
        ax.plot(grid, pdf, color=PALETTE[2], linewidth=1.5, label=f"N({mc:.2f}, {sc:.2f}²) fit")
        ax.axvline(mt, color=PALETTE[1], linestyle=":", linewidth=1,
                   label=f"triggered mean, z = {(mt - mc) / sc:.1f}")
    lo = min(_first_nonzero(hc), _first_nonzero(ht))
    hi = max(_last_nonzero(hc), _last_nonzero(ht))
    ax.set_xlim(*(xlim or (max(-1.0, lo - 0.05), min(1.0, hi + 0.05))))
    ax.set_xlabel("pairwise cosine similarity")
    ax.set_ylabel("density")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7)
    return _finish(ax, path)


def _first_nonzero(h: Histogram) -> float:
    nz = np.flatnonzero(h.counts)
    return float(h.edges[nz[0]]) if nz.size else float(h.edges[0])


def _last_nonzero(h: Histogram) -> float:
    nz = np.flatnonzero(h.counts)
    return float(h.edges[nz[-1] + 1]) if nz.size else float(h.edges[-1])


def same_label_curve(edges: np.ndarray, pairs: np.ndarray, same: np.ndarray, ax: plt.Axes | None = None,
                     path: str | os.PathLike | None = None, *, min_pairs: int = 20, max_bins: int = 40,
                     label: str = "same true label", title: str | None = None) -> plt.Axes:
    """Figure 3 (left): fraction of pairs with the same label per similarity bin (log y).
    Bins with fewer than ``min_pairs`` pairs are left out (their fraction is noise)."""
    ax = _axes(ax)
    hp = _rebin(Histogram(np.asarray(pairs), np.asarray(edges, dtype=float)), max_bins)
    hs = _rebin(Histogram(np.asarray(same), np.asarray(edges, dtype=float)), max_bins)
    centres = (hp.edges[:-1] + hp.edges[1:]) / 2
    keep = (hp.counts >= min_pairs) & (hs.counts > 0)
    p = hs.counts[keep] / hp.counts[keep]
    ax.plot(centres[keep], p, marker="o", markersize=3, color=PALETTE[0], label=label)
    ax.set_yscale("log")
    if p.size:
        lo, hi = float(p.min()), float(p.max())
        # within one decade a log axis has no labelled major tick: place a few plain ones
        _plain_ticks(ax.yaxis, sorted({float(f"{v:.2g}") for v in np.geomspace(lo, hi, 5)})
                     if hi < 10 * lo else None)
    ax.set_xlabel("cosine similarity of the two images")
    ax.set_ylabel("P(same label)")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7)
    return _finish(ax, path)


def accuracy_comparison(groups: Sequence[tuple[str, Sequence[float], Sequence[float]]],
                        ax: plt.Axes | None = None, path: str | os.PathLike | None = None, *,
                        ylabel: str = "clean zero-shot top-1", title: str | None = None) -> plt.Axes:
    """Per setting ``(label, poisoned values, clean values)``: every model as a dot, the mean
    as a bar outline; poisoned and clean side by side."""
    ax = _axes(ax, (max(4.8, 0.9 * len(groups) + 2), 3.4))
    for i, (label, poisoned, clean) in enumerate(groups):
        for off, vals, color, name in ((-0.18, clean, PALETTE[0], "clean models"),
                                       (0.18, poisoned, PALETTE[3], "poisoned models")):
            vals = np.asarray(vals, dtype=float)
            if vals.size == 0:
                continue
            jitter = np.linspace(-0.06, 0.06, vals.size) if vals.size > 1 else np.zeros(1)
            ax.scatter(i + off + jitter, vals, s=12, color=color, label=name if i == 0 else None, zorder=3)
            ax.hlines(vals.mean(), i + off - 0.13, i + off + 0.13, color=color, linewidth=2)
    ax.set_xticks(range(len(groups)), [g[0] for g in groups], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if groups:
        ax.legend(fontsize=7)
    return _finish(ax, path)


def close(ax_or_fig: Any) -> None:
    """Free a figure made by these functions (pyplot keeps every figure alive otherwise)."""
    plt.close(ax_or_fig.figure if hasattr(ax_or_fig, "figure") and not isinstance(ax_or_fig, plt.Figure)
              else ax_or_fig)


def precision_recall(scoring: Mapping[str, Any], ax: plt.Axes | None = None,
                     path: str | os.PathLike | None = None) -> plt.Axes:
    """Each detector's precision/recall curve against the manifest (``detect.json``'s
    ``scoring``: method -> ``contracts.DetectionScoring``), with its average precision in the
    legend and the share of poisons as the chance line a random ranking would give."""
    ax = _axes(ax, (4.8, 3.6))
    chance = None
    for method, sc in scoring.items():
        if not sc.recall:
            continue
        ap = "" if sc.average_precision is None else f" (AP {sc.average_precision:.2f})"
        ax.step(sc.recall, sc.precision, where="post", label=f"{method}{ap}")
        total = sc.n_poisons + sc.n_clean
        chance = sc.n_poisons / total if total else chance
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle=":", linewidth=1, label=f"chance ({chance:.1%} poisons)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall (share of the poisons flagged)")
    ax.set_ylabel("precision")
    ax.set_title("detectors against the manifest")
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    return _finish(ax, path)
