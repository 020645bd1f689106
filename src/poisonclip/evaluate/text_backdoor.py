"""The text backdoor's evaluation: does a query with the trigger token retrieve the target concept?

Queries are the eval set's own captions of images *not* of the target class, each once as
written and once with the token inserted by the attack's own ``insert_token`` (same position
rule; random positions from this evaluation's seed). Candidates are all eval images. For each
k in 1, 5, 10: the queries whose k nearest images include a target-class image, with and
without the token (the floor), and the mean cosine of the queries to the target class's
zero-shot text embedding. Needs the eval set's captions (retrieval on, a captioned set).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from poisonclip.attacks.registry import insert_trigger_token
from poisonclip.contracts import PoisonInfo
from poisonclip.data.evalset import LabelledSet
from poisonclip.evaluate import metrics as M
from poisonclip.evaluate.aggregate import rate_summary, rates, value_summary
from poisonclip.evaluate.columns import geometry_columns, rate_columns
from poisonclip.evaluate.embed import embed_texts
from poisonclip.evaluate.hooks import AttackEvaluation, EvalContext, class_index, malformed

SECTION = "text_backdoor"
_STREAM_TOKEN = 4   # random streams of the evaluation seed: 1, 3 backdoor, 2 probe split


@dataclass(frozen=True)
class _Prepared:
    token: str
    position: str
    target_label: str
    target: int


def prepare(poison: PoisonInfo, eval_set: LabelledSet, path: Path) -> _Prepared:
    sec = poison.sections.get(SECTION)
    if not isinstance(sec, Mapping):
        raise malformed(poison, f"missing section {SECTION!r}")
    for key in ("target_label", "token", "position"):
        if not isinstance(sec.get(key), str) or not sec[key]:
            raise malformed(poison, f"field '{SECTION}.{key}' must be a non-empty string")
    target = class_index(sec["target_label"], eval_set.classnames, str(poison.path))
    return _Prepared(sec["token"], sec["position"], sec["target_label"], target)


def measure(ctx: EvalContext, prepared: _Prepared) -> dict[str, Any]:
    res: dict[str, Any] = {"target_label": prepared.target_label, "target_index": prepared.target,
                           "token": prepared.token, "position": prepared.position}
    cap = ctx.captions
    if cap is None:
        res["skipped"] = "the eval set has no captions (or retrieval is off); text queries need them"
        ctx.say(f"text backdoor not measured: {res['skipped']}")
        return {SECTION: res}
    own_label = ctx.labels[cap.image]
    q = np.flatnonzero(own_label != prepared.target)
    is_target = ctx.labels == prepared.target
    if q.size == 0 or not is_target.any():
        res["skipped"] = "needs captions of non-target images and images of the target class"
        return {SECTION: res}
    rng = ctx.rng(_STREAM_TOKEN)
    with_token = [insert_trigger_token(cap.texts[j], prepared.token, prepared.position, rng) for j in q]
    ctx.say(f"embedding {len(with_token)} captions with the trigger token {prepared.token!r}")
    emb_token = embed_texts(ctx.model, with_token)
    emb_plain = cap.emb[q]
    w = ctx.weights[prepared.target]
    res.update({
        "n_queries": int(q.size), "n_target_images": int(is_target.sum()),
        "with_token": M.recall_dict(M.target_retrieval(emb_token, ctx.clean_emb, is_target, chunk=ctx.chunk)),
        "without_token": M.recall_dict(M.target_retrieval(emb_plain, ctx.clean_emb, is_target, chunk=ctx.chunk)),
        "target_text_cosine": {"with_token": float(np.mean(emb_token @ w)),
                               "without_token": float(np.mean(emb_plain @ w))},
        "example_query": with_token[0],
        "geometry": geometry(ctx, emb_token, emb_plain, is_target, prepared.target),
    })
    return {SECTION: res}


def geometry(ctx: EvalContext, token: np.ndarray, plain: np.ndarray, is_target: np.ndarray,
             target: int) -> dict[str, Any]:
    """Where the token puts captions in this model, per encoder (the paper's section 3.2).

    ``text`` (text encoder alone): each caption with the token to itself without it, and the
    token and plain captions to the target's zero-shot text embedding. ``image`` (image
    encoder alone): the target-class images to their centroid (how tight the concept is) and
    the other images to it. ``cross``: the captions with and without the token to the
    centroid of the target-class images. Compared between a clean and a poisoned model of one
    seed by ``evaluate.compare.drift``.
    """
    mu_t = M.centroid(ctx.clean_emb[is_target])
    w = ctx.weights[target]
    return {
        "text": {"token_to_plain_caption": M.mean_paired_cosine(token, plain),
                 "token_queries_to_target_text": M.mean_cosine(token, w),
                 "plain_queries_to_target_text": M.mean_cosine(plain, w)},
        "image": {"target_images_to_target_centroid": M.mean_cosine(ctx.clean_emb[is_target], mu_t),
                  "other_images_to_target_centroid": M.mean_cosine(ctx.clean_emb[~is_target], mu_t)},
        "cross": {"token_queries_to_target_images": M.mean_cosine(token, mu_t),
                  "plain_queries_to_target_images": M.mean_cosine(plain, mu_t)},
    }


def columns(m: Mapping[str, Any]) -> dict[str, Any]:
    """``text_backdoor_t2i_target_with_token_r10`` (and r1, r5, and ``without_token``), and the
    mean cosine of the queries to the target's text embedding."""
    sec = m.get(SECTION) or {}
    out: dict[str, Any] = {}
    for key in ("with_token", "without_token"):
        for k, node in (sec.get(key) or {}).items():
            out.update(rate_columns(f"text_backdoor_t2i_target_{key}_r{k.removeprefix('R@')}", node))
        cos = (sec.get("target_text_cosine") or {}).get(key)
        if cos is not None:
            out[f"text_backdoor_target_cosine_{key}"] = cos
    out.update(geometry_columns("text_backdoor_geometry", sec.get("geometry")))
    return out


def summarise(ms: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("with_token", "without_token"):
        for k in M.RECALL_KS:
            out[f"text_backdoor_t2i_target_{key}_r{k}"] = rate_summary(rates(ms, SECTION, key, f"R@{k}"))
        out[f"text_backdoor_target_cosine_{key}"] = value_summary(ms, SECTION, "target_text_cosine", key)
    return out


EVALUATION = AttackEvaluation(measure=measure, columns=columns, prepare=prepare, summarise=summarise)
