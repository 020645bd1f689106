"""Linear probe: logistic regression on frozen image embeddings, as in CLIP's paper.

scikit-learn's L-BFGS logistic regression; the inverse regularisation strength C is chosen
on a held-out validation split from a log-spaced grid, then the probe is refit on all its
training images with that C. Same inputs, same probe: the split comes from an explicit
Generator and L-BFGS is deterministic.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEFAULT_CS: tuple[float, ...] = tuple(float(10.0 ** k) for k in range(-2, 5))  # 1e-2 .. 1e4


@dataclass(frozen=True)
class ProbeConfig:
    cs: tuple[float, ...] = DEFAULT_CS
    val_fraction: float = 0.2   # of the probe's training images, for choosing C
    max_iter: int = 1000
    seed: int = 0


@dataclass(frozen=True)
class Probe:
    classifier: Any                      # fitted sklearn LogisticRegression
    n_classes: int
    C: float
    val_top1: dict[float, float] = field(default_factory=dict)   # C -> validation accuracy
    converged: bool = True

    def scores(self, emb: np.ndarray) -> np.ndarray:
        """(n, n_classes) decision values; classes the probe never saw score -inf."""
        out = np.full((len(emb), self.n_classes), -np.inf, dtype=np.float64)
        dec = self.classifier.decision_function(_unit(emb))
        classes = self.classifier.classes_
        if dec.ndim == 1:  # sklearn returns one column for two classes: score of classes_[1]
            dec = np.stack([-dec, dec], axis=1) / 2
        out[:, classes] = dec
        return out

    def info(self) -> dict[str, Any]:
        return {"C": self.C, "val_top1": {f"{c:g}": a for c, a in self.val_top1.items()},
                "converged": self.converged, "n_train_classes": int(len(self.classifier.classes_))}


def stratified_split(labels: np.ndarray, fraction: float, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Indices (a, b): about ``fraction`` of every class in ``a``, the rest in ``b``, sorted.

    Hand-written because sklearn's stratified splitter refuses classes with a single member
    and takes a legacy RandomState instead of a Generator. A class with one image goes to b.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    labels = np.asarray(labels)
    a: list[np.ndarray] = []
    b: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(fraction * len(idx)))
        k = min(max(k, 1 if len(idx) > 1 else 0), len(idx) - 1)
        a.append(idx[:k])
        b.append(idx[k:])
    return np.sort(np.concatenate(a)), np.sort(np.concatenate(b))


def _unit(emb: np.ndarray) -> np.ndarray:
    e = np.asarray(emb, dtype=np.float64)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def _fit(x: np.ndarray, y: np.ndarray, c: float, max_iter: int) -> tuple[Any, bool]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, max_iter=max_iter, solver="lbfgs")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(x, y)
    return clf, not any(issubclass(w.category, ConvergenceWarning) for w in caught)


def fit_probe(emb: np.ndarray, labels: np.ndarray, n_classes: int,
              cfg: ProbeConfig = ProbeConfig()) -> Probe:
    """Choose C on a stratified validation split, then refit on all of ``emb``.

    Ties in validation accuracy go to the smallest C (the strongest regularisation).
    """
    x = _unit(emb)
    y = np.asarray(labels, dtype=np.int64)
    if len(np.unique(y)) < 2:
        raise ValueError("the probe needs training images of at least two classes")
    if not cfg.cs:
        raise ValueError("no C values to try")
    rng = np.random.default_rng([cfg.seed, 0x9B0BE])
    val, tr = stratified_split(y, cfg.val_fraction, rng)
    val_top1: dict[float, float] = {}
    if len(cfg.cs) > 1 and len(val) and len(np.unique(y[tr])) >= 2:
        for c in sorted(cfg.cs):
            clf, _ = _fit(x[tr], y[tr], c, cfg.max_iter)
            val_top1[c] = float((clf.predict(x[val]) == y[val]).mean())
        best = max(sorted(val_top1), key=lambda c: (val_top1[c], -c))
    else:
        best = float(cfg.cs[0])
    clf, converged = _fit(x, y, best, cfg.max_iter)
    return Probe(clf, n_classes, float(best), val_top1, converged)
