"""Retrieval recall@k and target retrieval on hand-made embeddings whose rankings are known."""

from __future__ import annotations

import numpy as np
import pytest

from poisonclip.evaluate import metrics as M


def _unit(*vecs):
    a = np.asarray(vecs, dtype=np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_recall_counts_each_images_own_captions_as_its_positives():
    # three images on the axes; texts: image 0 twice (one exact, one nearer image 1), image 1 near
    # image 2's direction, image 2 exact
    images = _unit([1, 0, 0], [0, 1, 0], [0, 0, 1])
    texts = _unit([1, 0, 0], [0.3, 1, 0], [0, 0.4, 1], [0, 0, 1])
    text_image = np.array([0, 0, 1, 2])
    r = M.retrieval_recall(images, texts, text_image, ks=(1, 2, 3))
    i2t, t2i = r["image_to_text"], r["text_to_image"]
    # image 0: nearest text is its own (text 0); image 1: nearest is text 1 (image 0's), its own
    # text 2 is second; image 2: nearest is text 3 (its own)
    assert (i2t[1].k, i2t[1].n) == (2, 3) and (i2t[2].k, i2t[2].n) == (3, 3)
    # text 0 -> image 0 (hit); text 1 -> image 1 first (miss at 1), image 0 second; text 2 ->
    # image 2 first (miss), image 1 second; text 3 -> image 2 (hit)
    assert (t2i[1].k, t2i[1].n) == (2, 4) and (t2i[2].k, t2i[2].n) == (4, 4) and t2i[3].k == 4


def test_recall_leaves_images_without_a_caption_out_of_image_to_text():
    images = _unit([1, 0], [0, 1], [1, 1])
    texts = _unit([1, 0.1], [0.1, 1])
    r = M.retrieval_recall(images, texts, np.array([0, 1]), ks=(1,))
    assert r["image_to_text"][1].n == 2 and r["text_to_image"][1].n == 2
    assert r["image_to_text"][1].k == 2 and r["text_to_image"][1].k == 2


def test_ties_go_to_the_lower_index_so_results_are_deterministic():
    images = _unit([1, 0], [1, 0])          # identical images: text 1 (of image 1) ties
    texts = _unit([1, 0], [1, 0])
    r = M.retrieval_recall(images, texts, np.array([0, 1]), ks=(1, 2))
    assert r["text_to_image"][1].k == 1 and r["text_to_image"][2].k == 2
    assert r["image_to_text"][1].k == 1


def test_chunking_does_not_change_the_result():
    rng = np.random.default_rng(0)
    images, texts = rng.normal(size=(37, 8)), rng.normal(size=(45, 8))
    text_image = rng.integers(0, 37, size=45)
    full = M.retrieval_recall(images, texts, text_image, chunk=4096)
    small = M.retrieval_recall(images, texts, text_image, chunk=5)
    assert {d: {k: (v.k, v.n) for k, v in x.items()} for d, x in full.items()} == \
           {d: {k: (v.k, v.n) for k, v in x.items()} for d, x in small.items()}
    for d in full.values():
        assert d[1].k <= d[5].k <= d[10].k


def test_target_retrieval_counts_queries_with_a_target_candidate_in_their_top_k():
    cands = _unit([1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 1, 1])
    is_target = np.array([False, False, True, False])
    queries = _unit([0, 0, 1], [0, 1, 0.9], [1, 0, 0])
    r = M.target_retrieval(queries, cands, is_target, ks=(1, 2, 4))
    # q0: target first; q1: [0,1,1] first, then [0,1,0] (0.74) vs target (0.67): target third; q2: last
    assert r[1].k == 1 and r[2].k == 1 and r[4].k == 3 and r[1].n == 3
    assert M.recall_dict(r)["R@1"]["k"] == 1


def test_bad_inputs_are_refused():
    images = _unit([1, 0], [0, 1])
    with pytest.raises(ValueError, match="text_image"):
        M.retrieval_recall(images, images, np.array([0, 2]))
    with pytest.raises(ValueError, match="one flag per candidate"):
        M.target_retrieval(images, images, np.array([True]))
    with pytest.raises(ValueError, match="dim"):
        M.target_retrieval(images, _unit([1, 0, 0], [0, 1, 0]), np.array([True, False]))
