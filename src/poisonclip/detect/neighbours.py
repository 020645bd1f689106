"""Near duplicates in a model's image-embedding space (scikit-learn's exact neighbour search).

Many copies of one image, noisy or not, embed almost on top of each other, while a clean
sample's nearest neighbours are other images. The score is the mean cosine similarity of a
sample's ``k`` nearest neighbours: near 1 for a sample with ``k`` near-copies.
"""

from __future__ import annotations

import numpy as np

from poisonclip.detect.registry import DetectInput, register_detector


def knn_similarity(emb: np.ndarray, k: int) -> np.ndarray:
    """Mean cosine similarity of each row's ``k`` nearest other rows (unit vectors)."""
    from sklearn.neighbors import NearestNeighbors

    n = len(emb)
    if n < 2:
        return np.zeros(n)
    k = min(k, n - 1)
    nn = NearestNeighbors(n_neighbors=k + 1, metric="cosine").fit(emb)
    dist, _ = nn.kneighbors(emb)
    # Sorted distances; the first is the row itself (or an exact copy at the same distance 0).
    return 1.0 - dist[:, 1:].mean(axis=1)


@register_detector("embedding-neighbours", "mean cosine similarity of its k nearest images under a model "
                   "(needs --model)", needs_model=True, k=5)
def embedding_neighbours(inputs: DetectInput, k: int) -> np.ndarray:
    return knn_similarity(inputs.image_embeddings("embedding-neighbours"), k)
