"""The paper's measurements as pure functions on numpy arrays.

Nothing here knows about models or files: ``scores`` are (n_images, n_classes) classifier
outputs (zero-shot cosines or probe logits), ``emb`` are (n_images, dim) image embeddings.
Definitions as in docs/evaluation.md; the docstrings say where a choice was made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from poisonclip.evaluate.stats import Rate

DEFAULT_EDGES = np.linspace(-1.0, 1.0, 201)  # 0.01-wide bins over the whole cosine range


def predict(scores: np.ndarray) -> np.ndarray:
    """Arg-max class per row (the first of tied maxima, as numpy does)."""
    scores = _2d(scores, "scores")
    return scores.argmax(axis=1)


def top1(scores: np.ndarray, labels: np.ndarray) -> Rate:
    """Clean accuracy: images whose arg-max class is their true label."""
    labels = _labels(labels, scores)
    return Rate(int((predict(scores) == labels).sum()), int(labels.size))


def label_rank(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """1-based rank of ``labels[i]`` in row ``i`` (1 = predicted).

    Ties are broken as ``argmax`` breaks them (lower index first), so ``rank == 1`` exactly
    when the prediction equals the label.
    """
    scores = _2d(scores, "scores")
    labels = _labels(labels, scores)
    own = scores[np.arange(len(labels)), labels][:, None]
    idx = np.arange(scores.shape[1])[None, :]
    ahead = (scores > own) | ((scores == own) & (idx < labels[:, None]))
    return ahead.sum(axis=1).astype(np.int64) + 1


@dataclass(frozen=True)
class TargetResult:
    success: bool   # classified as the target label
    rank: int       # rank of the target label (1 = success)
    predicted: int  # the class it was classified as


def targeted_success(scores: np.ndarray, target_labels: np.ndarray) -> list[TargetResult]:
    """Targeted poisoning, one row per target image x': is z(f(x')) == y', and y''s rank."""
    ranks = label_rank(scores, target_labels)
    pred = predict(scores)
    return [TargetResult(bool(r == 1), int(r), int(p)) for r, p in zip(ranks, pred)]


def backdoor_asr(triggered_scores: np.ndarray, labels: np.ndarray, target: int) -> Rate:
    """Attack success rate: of the images whose TRUE label is not ``target``, the fraction
    classified as ``target`` with the trigger applied.

    Images of the target class are excluded: they would count as "successes" without any
    attack. ``triggered_scores`` rows are the triggered versions of the images in ``labels``.
    """
    labels = _labels(labels, triggered_scores)
    n_classes = triggered_scores.shape[1]
    if not 0 <= target < n_classes:
        raise ValueError(f"target {target} is not a class index below {n_classes}")
    keep = labels != target
    if not keep.any():
        raise ValueError("every image has the target label; ASR is undefined")
    hits = predict(triggered_scores)[keep] == target
    return Rate(int(hits.sum()), int(keep.sum()))


@dataclass(frozen=True)
class PairStats:
    """Cosine similarities over all unordered pairs u != v of one image set.

    Mean and standard deviation over unordered pairs equal those over ordered pairs u != v
    (each similarity appears twice there). ``std`` is the population value (ddof=0); with
    n(n-1)/2 pairs the difference is immaterial. ``counts`` is the exact histogram of every
    pair's similarity over ``edges`` (values outside are clipped into the end bins).
    """

    n_images: int
    n_pairs: int
    mean: float
    std: float
    counts: np.ndarray   # int64, len(edges) - 1
    edges: np.ndarray


def _normalise(emb: np.ndarray, dtype: type) -> np.ndarray:
    emb = _2d(emb, "embeddings").astype(dtype, copy=True)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError("an embedding is all zeros; cosine similarity is undefined")
    emb /= norms
    return emb


def _pair_blocks(emb: np.ndarray, chunk: int, labels: np.ndarray | None = None):
    """Yield (similarities, same_label or None) as 1-D arrays over pairs i < j, tile by tile.

    The pair matrix is cut into chunk x chunk tiles on and above the diagonal; each tile is one
    matrix product (no Python loop over pairs) and memory stays O(chunk^2) instead of O(n^2).
    """
    n = emb.shape[0]
    for i0 in range(0, n, chunk):
        i1 = min(n, i0 + chunk)
        rows = emb[i0:i1]
        for j0 in range(i0, n, chunk):
            j1 = min(n, j0 + chunk)
            tile = rows @ emb[j0:j1].T
            if j0 == i0:  # diagonal tile: strictly upper triangle only
                iu = np.triu_indices(i1 - i0, k=1)
                vals = tile[iu]
                same = None if labels is None else (labels[i0:i1][iu[0]] == labels[j0:j1][iu[1]])
            else:
                vals = tile.ravel()
                same = None if labels is None else (labels[i0:i1, None] == labels[None, j0:j1]).ravel()
            yield vals, same


class _Binner:
    """Histogram bin index per value. Uniform edges (the default) are binned arithmetically,
    ~10x faster than ``searchsorted``; values within rounding of an edge may fall either side."""

    def __init__(self, edges: np.ndarray):
        self.edges = np.asarray(edges, dtype=np.float64)
        self.nbins = len(self.edges) - 1
        if self.nbins < 1 or np.any(np.diff(self.edges) <= 0):
            raise ValueError("edges must be increasing, at least two of them")
        step = (self.edges[-1] - self.edges[0]) / self.nbins
        self.uniform = bool(np.allclose(np.diff(self.edges), step, rtol=1e-9, atol=0))
        self.lo, self.scale = self.edges[0], 1.0 / step

    def __call__(self, v: np.ndarray) -> np.ndarray:
        if self.uniform:
            x = v - self.lo
            x *= self.scale
            idx = x.astype(np.intp)
        else:
            idx = np.searchsorted(self.edges, v, side="right") - 1
        np.clip(idx, 0, self.nbins - 1, out=idx)
        return idx


def pairwise_similarity(emb: np.ndarray, edges: np.ndarray = DEFAULT_EDGES, chunk: int = 2048,
                        dtype: type = np.float64) -> PairStats:
    """Mean, std and histogram of cosine similarity over all pairs u != v.

    Embeddings are L2-normalised here (the definition uses normalised f). Sums are kept in
    float64; ``dtype`` is the precision of the matrix products (float32 halves time and memory
    at ~1e-7 error per similarity).
    """
    emb = _normalise(emb, dtype)
    edges = np.asarray(edges, dtype=np.float64)
    n = emb.shape[0]
    if n < 2:
        raise ValueError("need at least two images for pairwise similarity")
    total, total_sq, count = 0.0, 0.0, 0
    binner = _Binner(edges)
    counts = np.zeros(binner.nbins, dtype=np.int64)
    for vals, _ in _pair_blocks(emb, chunk):
        v = vals.astype(np.float64, copy=False)
        total += float(v.sum())
        total_sq += float(np.dot(v, v))
        count += v.size
        counts += np.bincount(binner(v), minlength=binner.nbins)
    mean = total / count
    var = max(0.0, total_sq / count - mean * mean)
    return PairStats(n, count, mean, float(np.sqrt(var)), counts, edges)


@dataclass(frozen=True)
class ZScore:
    z: float
    mean_triggered: float
    mean_clean: float
    std_clean: float
    clean: PairStats
    triggered: PairStats

    def to_dict(self) -> dict[str, float | int]:
        return {"z": self.z, "mean_triggered": self.mean_triggered, "mean_clean": self.mean_clean,
                "std_clean": self.std_clean, "std_triggered": self.triggered.std,
                "n_images": self.clean.n_images, "n_pairs": self.clean.n_pairs}


def backdoor_zscore(clean_emb: np.ndarray, triggered_emb: np.ndarray,
                    edges: np.ndarray = DEFAULT_EDGES, chunk: int = 2048,
                    dtype: type = np.float64, clean: PairStats | None = None) -> ZScore:
    """The paper's Definition 1 over pairs u != v of one image set X:

        (Mean <f(u+bd), f(v+bd)> - Mean <f(u), f(v)>) / Std <f(u), f(v)>

    ``triggered_emb[i]`` must be the embedding of image ``i`` of ``clean_emb`` with the trigger.
    Pass ``clean`` to reuse clean statistics across trigger placements.
    """
    if np.shape(clean_emb) != np.shape(triggered_emb):
        raise ValueError(f"clean {np.shape(clean_emb)} and triggered {np.shape(triggered_emb)} "
                         "embeddings must be the same images")
    clean = clean if clean is not None else pairwise_similarity(clean_emb, edges, chunk, dtype)
    trig = pairwise_similarity(triggered_emb, edges, chunk, dtype)
    if clean.std == 0:
        raise ValueError("clean pairwise similarities have zero spread; the z-score is undefined")
    return ZScore((trig.mean - clean.mean) / clean.std, trig.mean, clean.mean, clean.std, clean, trig)


@dataclass(frozen=True)
class SameLabelCurve:
    """Per similarity bin: how many pairs, how many share a label, and the fraction."""

    edges: np.ndarray
    pairs: np.ndarray       # int64 per bin
    same: np.ndarray        # int64 per bin
    p_same: np.ndarray      # same / pairs, nan for empty bins


def similarity_vs_same_label(emb: np.ndarray, labels: np.ndarray, edges: np.ndarray = DEFAULT_EDGES,
                             chunk: int = 2048, dtype: type = np.float64) -> SameLabelCurve:
    """The paper's Figure 3 (left): probability that two images share a label, by similarity.

    ``labels`` may be true labels or a classifier's predictions z(f(x)) (the paper uses both
    readings); every unordered pair u != v is counted once.
    """
    emb = _normalise(emb, dtype)
    labels = np.asarray(labels)
    if labels.shape != (emb.shape[0],):
        raise ValueError(f"labels {labels.shape} do not match {emb.shape[0]} embeddings")
    edges = np.asarray(edges, dtype=np.float64)
    binner = _Binner(edges)
    pairs = np.zeros(binner.nbins, dtype=np.int64)
    same = np.zeros_like(pairs)
    for vals, eq in _pair_blocks(emb, chunk, labels):
        idx = binner(vals.astype(np.float64, copy=False))
        pairs += np.bincount(idx, minlength=binner.nbins)
        same += np.bincount(idx[eq], minlength=binner.nbins)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(pairs > 0, same / np.maximum(pairs, 1), np.nan)
    return SameLabelCurve(edges, pairs, same, p)


def _2d(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, k), got shape {a.shape}")
    return a


def _labels(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.int64)
    scores = _2d(scores, "scores")
    if labels.shape != (scores.shape[0],):
        raise ValueError(f"labels {labels.shape} do not match {scores.shape[0]} score rows")
    if labels.size and (labels.min() < 0 or labels.max() >= scores.shape[1]):
        raise ValueError(f"labels must be class indices below {scores.shape[1]}")
    return labels


# --- retrieval -------------------------------------------------------------------------------

RECALL_KS = (1, 5, 10)


def _top_hits(query: np.ndarray, cands: np.ndarray, positive, ks: tuple[int, ...], chunk: int
              ) -> dict[int, np.ndarray]:
    """For each query row, whether a positive candidate is among its top k by cosine, per k.

    ``positive(rows)`` gives the boolean (len(rows), n_candidates) mask of each query's
    positives. Candidates are ordered by similarity, ties broken by candidate index (a stable
    sort), so the result is deterministic; memory is O(chunk x n_candidates).
    """
    q, c = _normalise(query, np.float32), _normalise(cands, np.float32)
    if q.shape[1] != c.shape[1]:
        raise ValueError(f"query dim {q.shape[1]} differs from candidate dim {c.shape[1]}")
    kmax = min(max(ks), c.shape[0])
    out = {k: np.zeros(q.shape[0], dtype=bool) for k in ks}
    for i0 in range(0, q.shape[0], chunk):
        rows = np.arange(i0, min(q.shape[0], i0 + chunk))
        order = np.argsort(-(q[rows] @ c.T), axis=1, kind="stable")[:, :kmax]
        hit = np.take_along_axis(positive(rows), order, axis=1)
        for k in ks:
            out[k][rows] = hit[:, :k].any(axis=1)
    return out


def retrieval_recall(image_emb: np.ndarray, text_emb: np.ndarray, text_image: np.ndarray,
                     ks: tuple[int, ...] = RECALL_KS, chunk: int = 2048) -> dict[str, dict[int, Rate]]:
    """Image-to-text and text-to-image recall@k, as CLIP_benchmark computes it.

    ``text_image[j]`` is the index of the image text ``j`` describes (an image may have several
    texts). Image-to-text: an image counts at k when any of its own texts is among the k texts
    most similar to it; text-to-image: a text counts when its image is among its k nearest
    images. Images without a text are left out of image-to-text. Ties go to the lower index.
    """
    text_image = np.asarray(text_image, dtype=np.int64)
    n_img, n_txt = _2d(image_emb, "image_emb").shape[0], _2d(text_emb, "text_emb").shape[0]
    if text_image.shape != (n_txt,) or (n_txt and (text_image.min() < 0 or text_image.max() >= n_img)):
        raise ValueError(f"text_image must give an image index below {n_img} for each of the {n_txt} texts")
    if min(ks) <= 0:
        raise ValueError(f"k must be positive, got {ks}")
    with_text = np.unique(text_image)
    images = np.arange(n_img)
    # positives built per chunk of queries: memory O(chunk x n), never the whole n x n matrix
    i2t = _top_hits(image_emb[with_text], text_emb, lambda r: text_image[None, :] == with_text[r][:, None], ks, chunk)
    t2i = _top_hits(text_emb, image_emb, lambda r: images[None, :] == text_image[r][:, None], ks, chunk)
    return {"image_to_text": {k: Rate(int(v.sum()), int(v.size)) for k, v in i2t.items()},
            "text_to_image": {k: Rate(int(v.sum()), int(v.size)) for k, v in t2i.items()}}


def target_retrieval(query_emb: np.ndarray, cand_emb: np.ndarray, cand_is_target: np.ndarray,
                     ks: tuple[int, ...] = RECALL_KS, chunk: int = 2048) -> dict[int, Rate]:
    """Of the queries, those whose k nearest candidates include one of the target concept, per k.

    The retrieval form of an attack's success: triggered images as queries and the captions
    of target-class images as the targets (a backdoor), or trigger-token captions as queries
    and target-class images as the targets (a text backdoor). Ties go to the lower index.
    """
    is_target = np.asarray(cand_is_target, dtype=bool)
    if is_target.shape != (_2d(cand_emb, "cand_emb").shape[0],):
        raise ValueError("cand_is_target must hold one flag per candidate")
    if min(ks) <= 0:
        raise ValueError(f"k must be positive, got {ks}")
    hits = _top_hits(query_emb, cand_emb, lambda r: np.broadcast_to(is_target, (len(r), is_target.size)), ks, chunk)
    return {k: Rate(int(v.sum()), int(v.size)) for k, v in hits.items()}


def recall_dict(rates: dict[int, Rate]) -> dict[str, Any]:
    """``{"R@1": rate, ...}`` as metrics.json writes it."""
    return {f"R@{k}": r.to_dict() for k, r in sorted(rates.items())}


# --- encoder geometry (which encoder a poison moved: section 3.2) ----------------------------

def centroid(emb: np.ndarray) -> np.ndarray:
    """The unit-length mean direction of a set of embeddings (each normalised first)."""
    e = _normalise(emb, np.float64)
    if e.shape[0] == 0:
        raise ValueError("the centroid of no embeddings is undefined")
    m = e.mean(axis=0)
    n = np.linalg.norm(m)
    if n == 0:
        raise ValueError("the embeddings cancel out; their centroid is undefined")
    return m / n


def mean_cosine(emb: np.ndarray, direction: np.ndarray) -> float:
    """Mean cosine of each embedding to one direction (both normalised)."""
    d = np.asarray(direction, dtype=np.float64).reshape(1, -1)
    return float((_normalise(emb, np.float64) @ _normalise(d, np.float64)[0]).mean())


def mean_paired_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine of row i of ``a`` to row i of ``b``."""
    a, b = _normalise(a, np.float64), _normalise(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return float(np.mean(np.sum(a * b, axis=1)))
