"""The backdoor's evaluation: attack success rate and z-score of the trained trigger.

Triggers come from the attack registry (``stamp_trigger``: the function the poisons were
written with) and are applied in the model's input space: after the model's resize and
centre crop, before normalisation, the patch scaled to the input size -- the geometry the
training poisons were written in, whatever the eval images' size or aspect. Each trigger is
tested where the poisons had it (``train_placement``), at random positions, and in the corner
(the paper's consistent placement) when training placed it elsewhere.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from poisonclip.attacks.registry import WHOLE_IMAGE, placements, stamp_trigger, trigger_side, trigger_traits
from poisonclip.contracts import BackdoorRecord, PoisonInfo
from poisonclip.data.evalset import LabelledSet
from poisonclip.errors import UserError
from poisonclip.evaluate import metrics as M
from poisonclip.evaluate.metrics import RECALL_KS
from poisonclip.evaluate.columns import geometry_columns, rate_columns
from poisonclip.evaluate.aggregate import rate_summary, rates, value_summary
from poisonclip.evaluate.embed import embed_images, input_size
from poisonclip.evaluate.hooks import AttackEvaluation, EvalContext, class_index, malformed
from poisonclip.evaluate.zeroshot import logit_scale, probabilities, zeroshot_scores

# Random streams of the evaluation seed (the probe split draws from stream 2, evaluate.api).
_STREAM_RANDOM_TRIGGER = 1
_STREAM_TRAIN_RANDOM_TRIGGER = 3
# Names of the test placements in metrics.json, and where each puts the patch.
TESTS = ("train_placement", "random", "corner")
# A few test images as the model received them, with and without the trigger as trained, for
# a person to look at (the report's "test image with and without the trigger"): the first
# image of each of the first N_EXAMPLES classes other than the target, in eval order.
N_EXAMPLES = 4
EXAMPLE_INPUTS = "example_inputs"                 # similarities.npz: (k, H, W, 3) uint8, no trigger
EXAMPLE_TRIGGERED = "example_triggered_inputs"    # ... the same images with the trigger


@dataclass(frozen=True)
class _Prepared:
    spec: BackdoorRecord
    target: int


def read_spec(poison: PoisonInfo) -> BackdoorRecord:
    """The trigger the poisons carry (poison.json "backdoor"), checked for what evaluation needs."""
    spec = poison.backdoor
    if spec is None:
        raise malformed(poison, "missing field 'backdoor'")
    whole = trigger_traits(spec.trigger).whole_image
    allowed = (WHOLE_IMAGE,) if whole else placements()
    if spec.placement not in allowed:
        raise malformed(poison, f"field 'backdoor.placement' must be {' or '.join(allowed)} for the "
                                f"{spec.trigger} trigger, not {spec.placement!r}")
    if not whole and spec.patch_size is None:
        raise malformed(poison, f"field 'backdoor.patch_size' is missing; the {spec.trigger} trigger is a patch")
    _check_pattern(poison, spec)
    return spec


def _check_pattern(poison: PoisonInfo, spec: BackdoorRecord) -> None:
    """A blended trigger's pattern file must still be the one the poisons were blended with."""
    if spec.blend_pattern is None or "blend_pattern" not in trigger_traits(spec.trigger).params:
        return
    try:
        data = Path(spec.blend_pattern).read_bytes()
    except OSError as e:
        raise UserError(f"{poison.path}: the blend pattern {spec.blend_pattern} cannot be read ({e.strerror}); "
                        "restore it or poison again") from None
    if spec.blend_pattern_sha256 and hashlib.sha256(data).hexdigest() != spec.blend_pattern_sha256:
        raise UserError(f"{poison.path}: the blend pattern {spec.blend_pattern} changed since poisoning "
                        "(sha256 differs); restore it or poison again")


def trigger_params(spec: BackdoorRecord) -> dict[str, Any]:
    """The recorded parameters the trigger's function takes (as the writer passed them)."""
    return {k: getattr(spec, k) for k in trigger_traits(spec.trigger).params if getattr(spec, k, None) is not None}


def prepare(poison: PoisonInfo, eval_set: LabelledSet, path: Path) -> _Prepared:
    spec = read_spec(poison)
    target = class_index(spec.target_label, eval_set.classnames, str(poison.path))
    if not any(y != target for y in eval_set.labels):
        raise UserError(f"{path}: every image has the backdoor target label; ASR needs images of other classes")
    return _Prepared(spec, target)


def trigger_fn(spec: BackdoorRecord, placement: str, rng: np.random.Generator,
               positions: list[tuple[int, int, int]]) -> Callable[[Image.Image, int], Image.Image]:
    """The training poisons' trigger at ``placement`` on the model-input image: the patch side
    scaled from 224 to the input size, positions in input pixels (random ones drawn afresh
    from ``rng``) and recorded in ``positions`` as (x, y, side)."""

    params = trigger_params(spec)

    def fn(im: Image.Image, i: int) -> Image.Image:
        try:
            out, where = stamp_trigger(spec.trigger, im, spec.patch_size, placement, rng, params)
        except ValueError as e:
            raise UserError(f"poison.json: backdoor trigger {spec.trigger} (patch_size {spec.patch_size}, "
                            f"{params}): {e}") from None
        positions.append((where.x, where.y, where.size))
        return out
    return fn


def _probe_asr(scores: np.ndarray, labels: np.ndarray, target: int) -> dict[str, Any] | None:
    """None when the probe's held-out images are all of the target class (tiny eval sets)."""
    if not (labels != target).any():
        return None
    return M.backdoor_asr(scores, labels, target).to_dict()


def measure(ctx: EvalContext, prepared: _Prepared) -> dict[str, Any]:
    spec, target = prepared.spec, prepared.target
    lm, labels, probe, probe_idx = ctx.model, ctx.labels, ctx.probe, ctx.probe_idx
    try:
        size = input_size(lm)
    except ValueError as e:
        raise UserError(f"model {lm.name}: {e}") from None
    res: dict[str, Any] = {
        "target_label": spec.target_label, "target_index": target, "patch_size_224": spec.patch_size,
        "train_placement": spec.placement, "trigger": spec.trigger, "trigger_params": trigger_params(spec),
        # Where the patch goes: on the model-input image (after resize and centre crop).
        "input_size": size,
        "patch_pixels": None if spec.patch_size is None else trigger_side(spec.patch_size, size),
        "poison_resolution": spec.resolution,
        # Non-target images the clean-image classifier already sends to the target: the floor
        # an ASR should be read against.
        "target_rate_without_trigger": {"zeroshot": M.backdoor_asr(ctx.zeroshot_clean, labels, target).to_dict()},
        "asr": {}, "zscore": {},
    }
    if spec.resolution is not None and spec.resolution != size:
        res["warning"] = (f"the poisons were written at {spec.resolution}px but this model takes {size}px inputs: "
                          "training resampled their patch, so the trigger tested here is not the one it learned")
        ctx.say(f"warning: {res['warning']}")
    if probe is not None:
        res["target_rate_without_trigger"]["probe"] = _probe_asr(probe.scores(ctx.clean_emb[probe_idx]),
                                                                 labels[probe_idx], target)
    stream = {"train_placement": _STREAM_TRAIN_RANDOM_TRIGGER, "random": _STREAM_RANDOM_TRIGGER, "corner": 0}
    # A whole-image trigger has no placement to vary: it is tested as trained only.
    tests = [("train_placement", spec.placement)] if spec.placement == WHOLE_IMAGE else \
        [("train_placement", spec.placement), ("random", "random")]
    if spec.placement not in ("corner", WHOLE_IMAGE):
        # Poisons placed randomly are still tested with the paper's consistent (corner) patch.
        tests.append(("corner", "corner"))
    chosen = example_indices(labels, target)
    for name, placement in tests:
        rng = ctx.rng(stream[name])
        positions: list[tuple[int, int, int]] = []
        ctx.say(f"embedding triggered images ({name}: {placement})")
        fn = trigger_fn(spec, placement, rng, positions)
        seen: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if name == "train_placement":
            fn = _capturing(fn, set(chosen), seen)
        trig = embed_images(lm, ctx.decoded(), ctx.batch_size, trigger=fn)
        trig_scores = zeroshot_scores(trig, ctx.weights)
        asr = {"placement": placement, "zeroshot": M.backdoor_asr(trig_scores, labels, target).to_dict()}
        if name == "train_placement" and chosen:
            res["examples"] = _examples(ctx, target, chosen, trig_scores, positions)
            if len(seen) == len(chosen):
                ctx.arrays[EXAMPLE_INPUTS] = np.stack([seen[i][0] for i in chosen])
                ctx.arrays[EXAMPLE_TRIGGERED] = np.stack([seen[i][1] for i in chosen])
        if probe is not None:
            asr["probe"] = _probe_asr(probe.scores(trig[probe_idx]), labels[probe_idx], target)
        res["asr"][name] = asr
        try:
            z = M.backdoor_zscore(ctx.clean_emb, trig, ctx.edges, ctx.chunk, clean=ctx.clean_pairs)
            res["zscore"][name] = {"placement": placement, **z.to_dict()}
            ctx.arrays[f"triggered_{name}_counts"] = z.triggered.counts
        except ValueError as e:  # a collapsed model (all clean embeddings equal): z undefined
            res["zscore"][name] = {"placement": placement, "z": None, "note": str(e)}
        ctx.arrays[f"trigger_{name}_xys"] = np.asarray(positions, dtype=np.int64).reshape(-1, 3)
        if name == "train_placement":
            res["retrieval"] = _retrieval(ctx, trig, target)
            res["geometry"] = geometry(ctx, trig, target)
    return {"backdoor": res}


def example_indices(labels: np.ndarray, target: int, n: int = N_EXAMPLES) -> list[int]:
    """The first image of each of the first ``n`` classes other than ``target``, in eval order:
    a fixed choice, not the ones the attack works best on."""
    out, classes = [], set()
    for i, y in enumerate(np.asarray(labels).tolist()):
        if y != target and y not in classes:
            out.append(i)
            classes.add(y)
            if len(out) == n:
                break
    return out


def _capturing(fn: Callable[[Image.Image, int], Image.Image], want: set[int],
               seen: dict[int, tuple[np.ndarray, np.ndarray]]) -> Callable[[Image.Image, int], Image.Image]:
    """``fn`` that also keeps, for the images in ``want``, the model-input image before and
    after the trigger (RGB uint8): exactly what the model received."""
    def g(im: Image.Image, i: int) -> Image.Image:
        before = np.array(im.convert("RGB")) if i in want else None
        out = fn(im, i)
        if before is not None:
            after = np.array(out.convert("RGB"))
            if before.shape == after.shape:
                seen[i] = (before, after)
        return out
    return g


def _prediction(scores: np.ndarray, target: int, classnames: Sequence[str], scale: float | None) -> dict[str, Any]:
    """One image's zero-shot prediction: the class, the rank of the backdoor's target label
    and, with the model's logit scale, the softmax probability of both."""
    pred = int(np.argmax(scores))
    out: dict[str, Any] = {"predicted": classnames[pred],
                           "target_rank": int(M.label_rank(scores[None, :], np.asarray([target]))[0])}
    if scale is not None:
        p = probabilities(scores, scale)
        out.update(probability=float(p[pred]), target_probability=float(p[target]))
    return out


def _examples(ctx: EvalContext, target: int, chosen: Sequence[int], trig_scores: np.ndarray,
              positions: Sequence[tuple[int, int, int]]) -> list[dict[str, Any]]:
    """The example images' keys, labels, trigger positions and zero-shot predictions without
    and with the trigger (their pixels go to similarities.npz)."""
    scale = logit_scale(getattr(ctx.model, "model", None))
    names = ctx.classnames
    rows = []
    for i in chosen:
        x, y, side = positions[i] if i < len(positions) else (None, None, None)
        rows.append({"index": int(i), "key": ctx.images.samples[i].key, "label": names[int(ctx.labels[i])],
                     "trigger_xy": None if x is None else [int(x), int(y)], "trigger_side": side,
                     "zeroshot": {"clean": _prediction(ctx.zeroshot_clean[i], target, names, scale),
                                  "triggered": _prediction(trig_scores[i], target, names, scale)}})
    return rows
def geometry(ctx: EvalContext, triggered: np.ndarray, target: int) -> dict[str, Any]:
    """Where the trigger puts images in this model, per encoder (the paper's section 3.2).

    ``image``: cosines between image embeddings only (the image encoder alone): the triggered
    non-target images to the centroid of the clean target-class images, the same images
    without the trigger (the floor), and to their own class's centroid. ``text``: between text
    embeddings only: the target's zero-shot text embedding to the other classes' (and, with
    captions, the target-class captions to it). ``cross``: text to image: the target text to
    the triggered images and to the clean target-class images. A clean and a poisoned model of
    one seed compared (``evaluate.compare.drift``) tell which of these the poison moved.
    """
    labels, clean = ctx.labels, ctx.clean_emb
    others = np.flatnonzero(labels != target)
    if not (labels == target).any() or others.size == 0:
        return {"skipped": "needs eval images of the target class and of other classes"}
    mu_t = M.centroid(clean[labels == target])
    centroids = {int(y): M.centroid(clean[labels == y]) for y in np.unique(labels[others])}
    own = np.stack([centroids[int(y)] for y in labels[others]])
    w = ctx.weights
    text = {"target_text_to_other_texts": float(np.mean(np.delete(w @ w[target], target)))}
    if ctx.captions is not None and (ctx.labels[ctx.captions.image] == target).any():
        text["target_captions_to_target_text"] = M.mean_cosine(
            ctx.captions.emb[ctx.labels[ctx.captions.image] == target], w[target])
    return {
        "image": {"triggered_to_target_images": M.mean_cosine(triggered[others], mu_t),
                  "clean_to_target_images": M.mean_cosine(clean[others], mu_t),
                  "triggered_to_own_class": M.mean_paired_cosine(triggered[others], own)},
        "text": text,
        "cross": {"target_text_to_triggered": M.mean_cosine(triggered[others], w[target]),
                  "target_text_to_target_images": M.mean_cosine(clean[labels == target], w[target])},
    }


def _retrieval(ctx: EvalContext, triggered: np.ndarray, target: int) -> dict[str, Any] | None:
    """Image-to-text retrieval under the trigger: of the non-target images as queries, how often
    a caption of a target-class image is among the k nearest captions, with the trigger (as
    trained) and without it (the floor). None when the eval set has no captions."""
    cap = ctx.captions
    if cap is None:
        return None
    is_target = ctx.labels[cap.image] == target
    if not is_target.any():
        return {"skipped": "no captioned eval image of the target class"}
    queries = np.flatnonzero(ctx.labels != target)
    return {"n_queries": int(queries.size), "n_target_captions": int(is_target.sum()),
            "without_trigger": M.recall_dict(M.target_retrieval(ctx.clean_emb[queries], cap.emb, is_target,
                                                                chunk=ctx.chunk)),
            "with_trigger": M.recall_dict(M.target_retrieval(triggered[queries], cap.emb, is_target,
                                                             chunk=ctx.chunk))}


def columns(m: Mapping[str, Any]) -> dict[str, Any]:
    """Test placements as columns: ``as_trained`` (the trigger placed as in the poisons),
    ``random``, and ``corner`` (the paper's consistent placement: the as-trained measurement
    when training used the corner, or the evaluator's own corner measurement where it makes one).
    """
    out: dict[str, Any] = {}
    bd = m.get("backdoor")
    if not bd:
        return out
    names = [("train_placement", "as_trained"), ("random", "random"), ("corner", "corner")]
    if bd.get("train_placement") == "corner":
        names.append(("train_placement", "corner"))
    for key, place in names:
        for head in ("zeroshot", "probe"):
            out.update(rate_columns(f"asr_{place}_{head}", bd.get("asr", {}).get(key, {}).get(head)))
        z = bd.get("zscore", {}).get(key)
        if z:
            out[f"z_{place}"] = z.get("z")
            out[f"sim_triggered_{place}_mean"] = z.get("mean_triggered")
    for head in ("zeroshot", "probe"):
        out.update(rate_columns(f"target_rate_clean_images_{head}",
                                bd.get("target_rate_without_trigger", {}).get(head)))
    ret = bd.get("retrieval") or {}
    for key, name in (("with_trigger", "as_trained"), ("without_trigger", "clean_images")):
        for k, node in (ret.get(key) or {}).items():
            out.update(rate_columns(f"retrieval_i2t_target_{name}_r{k.removeprefix('R@')}", node))
    out.update(geometry_columns("geometry", bd.get("geometry")))
    return out


def summarise(ms: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """ASR per test placement and head, and the z-score, over models."""
    out: dict[str, Any] = {}
    for head in ("zeroshot", "probe"):
        for pl in TESTS:
            out[f"asr_{pl}_{head}"] = rate_summary(rates(ms, "backdoor", "asr", pl, head))
    for pl in TESTS:
        out[f"zscore_{pl}"] = value_summary(ms, "backdoor", "zscore", pl, "z")
    for k in RECALL_KS:
        for key in ("with_trigger", "without_trigger"):
            out[f"retrieval_i2t_target_{key}_r{k}"] = rate_summary(rates(ms, "backdoor", "retrieval", key, f"R@{k}"))
    return out


EVALUATION = AttackEvaluation(measure=measure, columns=columns, prepare=prepare, summarise=summarise)
