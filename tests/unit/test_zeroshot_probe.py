"""Zero-shot heads (templates, class embeddings) and the linear probe on known embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from poisonclip.errors import UserError
from poisonclip.evaluate.probe import ProbeConfig, fit_probe, stratified_split
from poisonclip.evaluate.zeroshot import classifier_weights, load_templates, zeroshot_scores


class _Tokenizer:
    """Maps each distinct text to an integer id (remembered), as a 1-column tensor."""

    def __init__(self):
        self.ids: dict[str, int] = {}

    def __call__(self, texts):
        return torch.tensor([[self.ids.setdefault(t, len(self.ids))] for t in texts])


class _TextModel:
    """encode_text returns a fixed, unnormalised random vector per text."""

    def __init__(self, tok: _Tokenizer, dim: int = 6):
        self.tok = tok
        self.table = torch.randn(100, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3

    def encode_text(self, tokens, normalize=False):
        x = self.table[tokens[:, 0]]
        return x / x.norm(dim=1, keepdim=True) if normalize else x


def test_builtin_templates_are_clips_80_format_strings():
    t = load_templates(None)
    assert len(t) == 80 and all(s.count("{}") == 1 for s in t)
    assert "a photo of a {}." in t
    assert load_templates("openai") == t
    assert len(load_templates("simple")) == 7


def test_templates_from_file_and_bad_files(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("a photo of a {}.\n\n  a drawing of the {}  \n")
    assert load_templates(f) == ("a photo of a {}.", "a drawing of the {}")
    f.write_text("a photo of a thing\n")
    with pytest.raises(UserError, match="exactly once"):
        load_templates(f)
    f.write_text("a {} and {0}\n")
    with pytest.raises(UserError):
        load_templates(f)
    f.write_text("\n")
    with pytest.raises(UserError, match="empty"):
        load_templates(f)
    with pytest.raises(UserError, match="not found"):
        load_templates(tmp_path / "missing.txt")


def test_class_embedding_is_renormalised_mean_of_normalised_template_embeddings():
    tok = _Tokenizer()
    model = _TextModel(tok)
    classes = ["cat", "dog", "newt"]
    templates = ["a photo of a {}.", "a {} in the wild", "art of a {}"]
    w = classifier_weights(model, tok, classes, templates)
    assert w.shape == (3, 6)
    for i, c in enumerate(classes):
        vecs = [model.table[tok.ids[t.format(c)]].numpy() for t in templates]
        mean = np.mean([v / np.linalg.norm(v) for v in vecs], axis=0)
        np.testing.assert_allclose(w[i], mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)
    # prediction = arg-max cosine: an image embedding equal to a class row picks that class
    scores = zeroshot_scores(w[[2, 0]] * 5.0, w)
    assert scores.argmax(axis=1).tolist() == [2, 0]
    assert scores[0, 2] == pytest.approx(1.0, abs=1e-5)


def test_stratified_split_is_deterministic_and_per_class():
    labels = np.array([0] * 10 + [1] * 6 + [2] * 1)
    a1, b1 = stratified_split(labels, 0.5, np.random.default_rng(7))
    a2, b2 = stratified_split(labels, 0.5, np.random.default_rng(7))
    assert a1.tolist() == a2.tolist() and b1.tolist() == b2.tolist()
    assert sorted(a1.tolist() + b1.tolist()) == list(range(17))
    assert np.bincount(labels[a1], minlength=3).tolist() == [5, 3, 0]  # the lone class-2 image goes to b


def _clusters(n_per: int, centres: np.ndarray, noise: float, rng: np.random.Generator):
    labels = np.repeat(np.arange(len(centres)), n_per)
    return centres[labels] + noise * rng.normal(size=(len(labels), centres.shape[1])), labels


def test_probe_separates_clusters_deterministically():
    centres = np.random.default_rng(0).normal(size=(4, 16))
    x, y = _clusters(30, centres, 0.3, np.random.default_rng(1))
    xt, yt = _clusters(10, centres, 0.3, np.random.default_rng(2))  # fresh test points
    p1 = fit_probe(x, y, n_classes=5, cfg=ProbeConfig(cs=(0.01, 1.0, 100.0)))
    p2 = fit_probe(x, y, n_classes=5, cfg=ProbeConfig(cs=(0.01, 1.0, 100.0)))
    s = p1.scores(xt)
    assert s.shape == (40, 5)
    assert np.isneginf(s[:, 4]).all()  # class never seen in training cannot be predicted
    assert (s.argmax(axis=1) == yt).mean() == 1.0
    np.testing.assert_array_equal(s, p2.scores(xt))
    assert p1.C in (0.01, 1.0, 100.0) and set(p1.val_top1) == {0.01, 1.0, 100.0}
    assert p1.C == max(p1.val_top1, key=lambda c: (p1.val_top1[c], -c))


def test_probe_two_classes_scores_follow_sklearn_predictions():
    x, y = _clusters(20, np.random.default_rng(3).normal(size=(2, 8)), 1.5, np.random.default_rng(4))
    p = fit_probe(x, y, n_classes=2, cfg=ProbeConfig(cs=(1.0,)))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert (p.scores(x).argmax(axis=1) == p.classifier.predict(unit)).all()
    with pytest.raises(ValueError, match="two classes"):
        fit_probe(x[y == 0], y[y == 0], n_classes=2)
