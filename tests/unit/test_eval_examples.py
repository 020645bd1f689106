"""The evaluator keeps a few test images exactly as the model received them, with and without
the trigger, and their zero-shot predictions, so the report can show the attack without
running a model (``evaluate.backdoor`` examples; targets' probabilities in ``evaluate.targeted``)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from poisonclip.attacks import triggers
from poisonclip.contracts import BackdoorRecord
from poisonclip.data.evalset import LabelledSet
from poisonclip.evaluate import backdoor, metrics as M
from poisonclip.evaluate.embed import LoadedModel, embed_images
from poisonclip.evaluate.hooks import EvalContext
from poisonclip.evaluate.zeroshot import logit_scale, probabilities, zeroshot_scores
from tests.conftest import make_samples

_PLAIN = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}   # tensor values are the pixels / 255


class _PixelModel(torch.nn.Module):
    """Stands in for CLIP: the embedding is the image's mean colour and its top-left corner's
    mean brightness (so a corner patch moves it); records every batch it receives."""

    def __init__(self) -> None:
        super().__init__()
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(50.0)))
        self.inputs: list[torch.Tensor] = []

    def encode_image(self, x, normalize: bool = True):
        self.inputs.append(x.clone())
        corner = x[:, :, :4, :4].mean(dim=(1, 2, 3), keepdim=False)[:, None]
        e = torch.cat([x.mean(dim=(2, 3)) - 0.5, 4 * (corner - 0.5)], dim=1)
        return torch.nn.functional.normalize(e, dim=-1) if normalize else e


def _context(n: int = 12, resolution: int = 16) -> tuple[EvalContext, _PixelModel]:
    model = _PixelModel()
    lm = LoadedModel(model, open_clip.image_transform(resolution, is_train=False, **_PLAIN), None, "pixels",
                     Path("x"), "0" * 64, "cpu")
    samples = make_samples(n, size=24)            # labels 0, 1, 2, 0, 1, ...
    ls = LabelledSet(samples, ["red", "green", "blue"])
    labels = np.asarray(ls.labels, dtype=np.int64)
    weights = np.asarray([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0.3, 1]], dtype=np.float32)
    weights /= np.linalg.norm(weights, axis=1, keepdims=True)
    emb = embed_images(lm, (s.decode() for s in samples))
    model.inputs.clear()
    edges = np.linspace(-1, 1, 201)
    ctx = EvalContext(model=lm, images=ls, labels=labels, classnames=tuple(ls.classnames), weights=weights,
                      zeroshot_clean=zeroshot_scores(emb, weights), clean_emb=emb,
                      clean_pairs=M.pairwise_similarity(emb, edges), edges=edges, probe=None,
                      probe_idx=np.arange(n), seed=0, batch_size=5, chunk=64)
    return ctx, model


def test_examples_are_the_pixels_the_model_received_with_the_trained_trigger_and_their_predictions():
    ctx, model = _context()
    spec = BackdoorRecord("blue", 32, "corner")
    res = backdoor.measure(ctx, backdoor._Prepared(spec, 2))["backdoor"]
    ex = res["examples"]
    # one image of each class other than the target, the first of each in eval order
    assert [e["index"] for e in ex] == [0, 1] and [e["label"] for e in ex] == ["red", "green"]
    assert [e["key"] for e in ex] == [ctx.images.samples[i].key for i in (0, 1)]
    before, after = ctx.arrays[backdoor.EXAMPLE_INPUTS], ctx.arrays[backdoor.EXAMPLE_TRIGGERED]
    assert before.shape == after.shape == (2, 16, 16, 3) and before.dtype == np.uint8
    # the first pass of the model (as-trained placement) saw exactly the saved triggered pixels
    first = torch.cat(model.inputs)[: len(ctx.labels)]
    side = res["patch_pixels"]
    for j, e in enumerate(ex):
        seen = (first[e["index"]].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        assert np.array_equal(seen, after[j])
        assert e["trigger_xy"] == [0, 0] and e["trigger_side"] == side
        assert np.array_equal(after[j][:side, :side], triggers.checkerboard(side))
        mask = np.ones((16, 16), bool)
        mask[:side, :side] = False
        assert np.array_equal(after[j][mask], before[j][mask])
        assert not np.array_equal(after[j], before[j])
    # predictions: the arg-max of the model's own scores, probabilities at its logit scale
    scale = logit_scale(model)
    assert scale == pytest.approx(50.0)
    with torch.no_grad():
        trig = model.encode_image(torch.from_numpy(after).permute(0, 3, 1, 2).float() / 255).numpy()
    for j, e in enumerate(ex):
        for who, scores in (("clean", ctx.zeroshot_clean[e["index"]]), ("triggered", zeroshot_scores(trig, ctx.weights)[j])):
            p = probabilities(scores, scale)
            got = e["zeroshot"][who]
            assert got["predicted"] == ctx.classnames[int(np.argmax(scores))]
            assert got["probability"] == pytest.approx(p.max()) and got["target_probability"] == pytest.approx(p[2])
            assert got["target_rank"] == 1 + int((scores > scores[2]).sum())
    assert abs(probabilities(np.asarray([[0.1, 0.2, 0.3]]), scale).sum() - 1) < 1e-9


def test_no_example_when_every_image_has_the_target_label():
    assert backdoor.example_indices(np.asarray([2, 2, 2]), 2) == []
    assert backdoor.example_indices(np.asarray([0, 0, 1, 2, 3, 1]), 0, n=2) == [2, 3]


def test_targets_get_the_probability_of_the_prediction_and_of_their_label(tmp_path):
    from poisonclip.contracts import TargetRecord
    from poisonclip.evaluate import targeted

    ctx, model = _context()
    prepared = []
    for i, label in enumerate(("blue", "red")):
        path = tmp_path / f"t{i}.png"
        path.write_bytes(ctx.images.samples[i].image)
        prepared.append((TargetRecord(f"t{i}", label, path.name), path))
    rows = targeted.measure(ctx, targeted._Prepared(tuple(prepared), None))["targeted"]["targets"]
    emb = embed_images(ctx.model, (s.decode() for s in ctx.images.samples[:2]))
    p = probabilities(zeroshot_scores(emb, ctx.weights), 50.0)
    for i, (row, y) in enumerate(zip(rows, (2, 0))):
        zs = row["zeroshot"]
        assert zs["predicted"] == ctx.classnames[int(p[i].argmax())]
        assert zs["probability"] == pytest.approx(p[i].max()) and zs["label_probability"] == pytest.approx(p[i, y])
        assert zs["success"] == (int(p[i].argmax()) == y)
