""""One image, many captions about one label": the targeted attack's signature.

Near-identical images (perceptual hashes within a few bits, so the evasion's noise does not
hide them) are grouped into clusters; a cluster whose captions share one content word (the
concept: "moon") is what the attack writes, while a clean image that happens to recur carries
captions about different things or a single caption. A member's score is how many *other*
members of its cluster mention the cluster's concept; 0 when no concept is shared by at least
``min_agreement`` of the cluster. Caption edits that keep the label (the evasion's
``perturb_captions``) keep the concept.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

import numpy as np

from poisonclip.detect.phash import hamming_blocks, phash_bits
from poisonclip.detect.registry import DetectInput, register_detector

# Words that say nothing about what an image shows (templates' and scraped captions' filler).
STOPWORDS = frozenset("""
a an the of in on at to for with and or by from as is are be this that these those it its
photo photos picture pictures image images pic picture drawing painting rendering sketch
there here my your our their his her some one two three row background plain close up closeup
""".split())
_WORD = re.compile(r"[a-z]+")


def concept_words(caption: str) -> set[str]:
    """The caption's content words, lower-cased, a plural's trailing 's' dropped."""
    out = set()
    for w in _WORD.findall(caption.lower()):
        if len(w) < 3 or w in STOPWORDS:
            continue
        if w.endswith("s") and not w.endswith("ss") and len(w) > 3:
            w = w[:-1]
        out.add(w)
    return out


def clusters(bits: np.ndarray, max_distance: int) -> np.ndarray:
    """Cluster label per image: connected components of 'hashes within max_distance bits'."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows, cols = [], []
    for start, d in hamming_blocks(bits):
        r, c = np.nonzero(d <= max_distance)
        rows.append(r + start)
        cols.append(c)
    r, c = np.concatenate(rows), np.concatenate(cols)
    n = len(bits)
    graph = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def agreement_scores(labels: np.ndarray, captions: Sequence[str], min_agreement: float) -> np.ndarray:
    """Per sample: other members of its cluster whose caption holds the cluster's concept."""
    scores = np.zeros(len(labels), dtype=np.float64)
    members: dict[int, list[int]] = {}
    for i, c in enumerate(labels):
        members.setdefault(int(c), []).append(i)
    for idx in members.values():
        if len(idx) < 2:
            continue
        words = [concept_words(captions[i]) for i in idx]
        df = Counter(w for ws in words for w in ws)
        if not df:
            continue
        concept, count = max(df.items(), key=lambda kv: (kv[1], kv[0]))
        if count / len(idx) < min_agreement:
            continue
        for i, ws in zip(idx, words):
            scores[i] = count - (1 if concept in ws else 0)
    return scores


@register_detector("caption-agreement", "near-identical images (perceptual hash) whose captions agree on one "
                   "concept: how many others in its cluster name it", hash_size=8, max_distance=6,
                   min_agreement=0.5)
def caption_agreement(inputs: DetectInput, hash_size: int, max_distance: int, min_agreement: float) -> np.ndarray:
    return agreement_scores(clusters(phash_bits(inputs, hash_size), max_distance), inputs.captions, min_agreement)
