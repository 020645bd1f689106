"""Detector scores measured against the ground truth (the poisoned folder's manifest), with
scikit-learn's metrics: AUROC, average precision, the precision/recall curve, and what a
threshold flagging 1% or 5% of the data would catch and throw away."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from poisonclip.contracts import DetectionScoring, FlaggedAt

FLAG_FRACTIONS = (0.01, 0.05)


def flagged_at(scores: np.ndarray, is_poison: np.ndarray, fraction: float) -> FlaggedAt:
    """A threshold at the score of the ``ceil(fraction * n)``-th most suspicious sample; it
    flags every sample scoring at least that much (ties included, as a real threshold would)."""
    n = len(scores)
    k = max(1, math.ceil(fraction * n))
    threshold = float(np.sort(scores)[::-1][k - 1])
    flagged = scores >= threshold
    found = int((flagged & is_poison).sum())
    n_poisons = int(is_poison.sum())
    return FlaggedAt(fraction=fraction, n_flagged=int(flagged.sum()), threshold=threshold, poisons_found=found,
                     recall=found / n_poisons if n_poisons else 0.0, precision=found / int(flagged.sum()),
                     clean_removed=int((flagged & ~is_poison).sum()))


def score_detector(scores: Sequence[float], is_poison: Sequence[bool],
                   fractions: Sequence[float] = FLAG_FRACTIONS) -> DetectionScoring:
    """How well ``scores`` (higher = more suspicious) separate the poisons from clean samples."""
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(is_poison, dtype=bool)
    if len(s) != len(y) or len(s) == 0:
        raise ValueError(f"{len(s)} scores for {len(y)} labels")
    n_pos = int(y.sum())
    both = 0 < n_pos < len(y)
    auroc = float(roc_auc_score(y, s)) if both else None
    ap = float(average_precision_score(y, s)) if both else None
    precision = recall = thresholds = np.zeros(0)
    if n_pos:
        precision, recall, thresholds = precision_recall_curve(y, s)
    return DetectionScoring(n_poisons=n_pos, n_clean=len(y) - n_pos, auroc=auroc, average_precision=ap,
                            precision=tuple(map(float, precision)), recall=tuple(map(float, recall)),
                            thresholds=tuple(map(float, thresholds)),
                            flagged=tuple(flagged_at(s, y, f) for f in fractions))
