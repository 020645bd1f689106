"""Encoder drift (paper section 3.2): the geometry cosines and their clean-vs-poisoned change."""

from __future__ import annotations

import numpy as np
import pytest

from poisonclip.evaluate import metrics as M
from poisonclip.evaluate.compare import compare, drift


def test_centroid_and_cosines_on_known_vectors():
    c = M.centroid(np.array([[2.0, 0.0], [0.0, 5.0]]))
    assert np.allclose(c, [2 ** -0.5, 2 ** -0.5])
    assert M.mean_cosine(np.array([[1.0, 0.0], [0.0, 3.0]]), np.array([1.0, 1.0])) == pytest.approx(2 ** -0.5)
    assert M.mean_paired_cosine(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[1.0, 0.0], [1.0, 0.0]])) == 0.5
    with pytest.raises(ValueError, match="cancel"):
        M.centroid(np.array([[1.0, 0.0], [-1.0, 0.0]]))
    with pytest.raises(ValueError, match="shapes differ"):
        M.mean_paired_cosine(np.ones((2, 2)), np.ones((3, 2)))


def _m(seed, image, text, cross=0.5, section="backdoor"):
    return {"model": {"train_seed": seed}, "clean": {"zeroshot": {}},
            section: {"geometry": {"image": {"triggered_to_target_images": image},
                                   "text": {"target_text_to_other_texts": text},
                                   "cross": {"target_text_to_triggered": cross}}}}


def test_drift_pairs_models_by_seed_and_reports_each_sides_change():
    poisoned = [_m(1, 0.9, 0.30), _m(0, 0.8, 0.20)]
    clean = [_m(0, 0.2, 0.25), _m(1, 0.5, 0.30)]
    d = drift(poisoned, clean)["backdoor"]
    assert d["paired"] is True and (d["n_poisoned"], d["n_clean"]) == (2, 2)
    img = d["image"]["triggered_to_target_images"]
    # seed 0: 0.8 - 0.2; seed 1: 0.9 - 0.5
    assert img["change"] == pytest.approx(0.5) and img["clean"] == pytest.approx(0.35)
    assert d["text"]["target_text_to_other_texts"]["change"] == pytest.approx(-0.025)
    assert d["image"]["max_abs_change"] == pytest.approx(0.5) and d["cross"]["max_abs_change"] == pytest.approx(0.0)
    assert "text_backdoor" not in drift(poisoned, clean)


def test_drift_without_shared_seeds_is_the_difference_of_means():
    d = drift([_m(None, 0.9, 0.3), _m(None, 0.7, 0.3)], [_m(None, 0.2, 0.1)])["backdoor"]
    assert d["paired"] is False and d["image"]["triggered_to_target_images"]["change"] == pytest.approx(0.6)
    assert d["text"]["target_text_to_other_texts"]["change"] == pytest.approx(0.2)


def test_a_model_without_the_geometry_leaves_the_section_out_and_compare_carries_it():
    skipped = {"model": {"train_seed": 0}, "clean": {"zeroshot": {}}, "backdoor": {"geometry": {"skipped": "x"}}}
    assert drift([skipped], [_m(0, 0.2, 0.1)]) == {}
    res = compare([_m(0, 0.9, 0.3, section="text_backdoor")], [_m(0, 0.2, 0.1, section="text_backdoor")])
    assert res["drift"]["text_backdoor"]["image"]["triggered_to_target_images"]["change"] == pytest.approx(0.7)
