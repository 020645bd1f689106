"""Each metric on hand-made inputs whose answer is known in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest

from poisonclip.evaluate import metrics as M


def _orthonormal(n: int, d: int, seed: int = 0) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, n)))
    return q.T  # n orthonormal rows


# ---- classification metrics -----------------------------------------------------------------

def test_top1_counts_argmax_matches():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4], [0.5, 0.1, 0.4]])
    r = M.top1(scores, [0, 1, 1, 2])
    assert (r.k, r.n) == (2, 4)


def test_label_rank_and_ties_follow_argmax():
    scores = np.array([[0.1, 0.5, 0.3],
                       [0.5, 0.5, 0.1],
                       [0.5, 0.5, 0.1],
                       [0.2, 0.2, 0.2]])
    ranks = M.label_rank(scores, [2, 1, 0, 2])
    assert ranks.tolist() == [2, 2, 1, 3]
    # rank 1 exactly when the prediction is the label
    pred = M.predict(scores)
    assert ((ranks == 1) == (pred == np.array([2, 1, 0, 2]))).all()


def test_targeted_success_reports_hit_rank_and_prediction():
    scores = np.array([[0.0, 0.9, 0.1], [0.8, 0.1, 0.5]])
    res = M.targeted_success(scores, np.array([1, 2]))
    assert [(r.success, r.rank, r.predicted) for r in res] == [(True, 1, 1), (False, 2, 0)]


def test_asr_is_zero_when_only_untriggered_images_map_to_target():
    labels = np.array([0, 1, 2, 0, 1, 2])
    target = 2
    # Clean images (no trigger) of every class go to the target ...
    clean = np.tile([0.0, 0.0, 1.0], (6, 1))
    # ... but with the trigger each image goes to its own true label.
    triggered = np.eye(3)[labels]
    assert M.backdoor_asr(clean, labels, target).rate == 1.0
    asr = M.backdoor_asr(triggered, labels, target)
    assert (asr.k, asr.n) == (0, 4)


def test_asr_excludes_images_whose_true_label_is_the_target():
    labels = np.array([0, 1, 1, 2, 2, 2])
    triggered = np.tile([0.0, 1.0, 0.0], (6, 1))  # everything -> class 1
    asr = M.backdoor_asr(triggered, labels, target=1)
    assert (asr.k, asr.n) == (4, 4)  # the two class-1 images count neither way
    half = triggered.copy()
    half[3:] = [0.0, 0.0, 1.0]
    assert (M.backdoor_asr(half, labels, 1).k, M.backdoor_asr(half, labels, 1).n) == (1, 4)


def test_asr_rejects_undefined_inputs():
    with pytest.raises(ValueError):
        M.backdoor_asr(np.eye(2), [1, 1], target=1)
    with pytest.raises(ValueError):
        M.backdoor_asr(np.eye(2), [0, 1], target=5)


# ---- all-pairs similarity and the z-score --------------------------------------------------

def _two_groups(m: int, cos2: float, d: int = 64, seed: int = 0) -> np.ndarray:
    """2m unit vectors: within a group cosine == cos2, across groups 0."""
    basis = _orthonormal(2 * m + 2, d, seed)
    g = basis[:2]
    o = basis[2:]
    c, s = math.sqrt(cos2), math.sqrt(1 - cos2)
    return np.vstack([c * g[0] + s * o[:m], c * g[1] + s * o[m:]])


def _all_equal(n: int, cos2: float, d: int = 64, seed: int = 1) -> np.ndarray:
    basis = _orthonormal(n + 1, d, seed)
    return math.sqrt(cos2) * basis[0] + math.sqrt(1 - cos2) * basis[1:]


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_zscore_matches_closed_form(chunk):
    m, c, s = 6, 0.4, 0.8
    clean = _two_groups(m, c)
    trig = _all_equal(2 * m, s)
    # Unordered pairs: m(m-1) within groups at cosine c, m^2 across at 0.
    p = (m - 1) / (2 * m - 1)
    mean_clean, std_clean = c * p, c * math.sqrt(p * (1 - p))
    z = M.backdoor_zscore(clean, trig, chunk=chunk)
    assert z.clean.n_pairs == z.triggered.n_pairs == (2 * m) * (2 * m - 1) // 2
    assert z.mean_clean == pytest.approx(mean_clean, abs=1e-12)
    assert z.std_clean == pytest.approx(std_clean, abs=1e-12)
    assert z.mean_triggered == pytest.approx(s, abs=1e-12)
    assert z.z == pytest.approx((s - mean_clean) / std_clean, rel=1e-9)


def test_pair_stats_agree_with_brute_force_on_random_embeddings():
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(57, 16)) * rng.uniform(0.5, 3, size=(57, 1))  # not normalised
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sims = (unit @ unit.T)[np.triu_indices(57, k=1)]
    edges = np.linspace(-1, 1, 41)
    st = M.pairwise_similarity(emb, edges, chunk=10)
    assert st.n_pairs == sims.size == 57 * 56 // 2
    assert st.mean == pytest.approx(sims.mean(), abs=1e-12)
    assert st.std == pytest.approx(sims.std(), abs=1e-12)
    assert st.counts.tolist() == np.histogram(sims, edges)[0].tolist()
    # ordered pairs u != v give the same mean and std
    full = unit @ unit.T
    off = full[~np.eye(57, dtype=bool)]
    assert st.mean == pytest.approx(off.mean(), abs=1e-12)
    assert st.std == pytest.approx(off.std(), abs=1e-12)
    assert M.pairwise_similarity(emb, edges, chunk=4, dtype=np.float32).mean == pytest.approx(st.mean, abs=1e-6)


def test_zscore_of_identical_sets_is_zero_and_rejects_mismatched_shapes():
    emb = np.random.default_rng(0).normal(size=(20, 8))
    assert M.backdoor_zscore(emb, emb.copy()).z == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        M.backdoor_zscore(emb, emb[:10])


def test_histogram_counts_every_pair_including_exact_ones():
    emb = np.ones((5, 4))  # all identical: every cosine is exactly 1.0
    st = M.pairwise_similarity(emb, np.linspace(-1, 1, 11))
    assert st.counts[-1] == 10 and st.counts.sum() == 10
    assert st.std == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="zero spread"):
        M.backdoor_zscore(emb, emb)


def test_similarity_vs_same_label_on_clustered_embeddings():
    basis = _orthonormal(3, 8)
    labels = np.array([0, 0, 1, 1, 1, 2])
    emb = basis[labels]  # same label: cosine 1; different: 0
    curve = M.similarity_vs_same_label(emb, labels, np.linspace(-1, 1, 4), chunk=2)
    # bins [-1, -1/3) [-1/3, 1/3) [1/3, 1]; orthogonal pairs land in the middle one
    same_pairs = 1 + 3
    total = 15
    assert curve.pairs.tolist() == [0, total - same_pairs, same_pairs]
    assert curve.same.tolist() == [0, 0, same_pairs]
    assert np.isnan(curve.p_same[0]) and curve.p_same[1] == 0.0 and curve.p_same[2] == 1.0
    pred = np.array([0, 0, 0, 1, 1, 1])  # classifier's labels: the curve follows what it is given
    assert M.similarity_vs_same_label(emb, pred, np.linspace(-1, 1, 4)).same.tolist() == [0, 4, 2]
