"""The targeted attack's evaluation: is each target image x' classified as its label y'?

Each target is scored by both heads (zero-shot and, if trained, the linear probe) with its
rank; the success rate counts (target, model) pairs. The targets are the attack's own images:
wherever they sit in a labelled set (``target_source``: the test split, a probe set) they are
left out of clean accuracy and of the probe's training split (``held_out``). A target as
poison.json records it is a ``contracts.TargetRecord``; ``attacks.targeted.TargetSpec`` is the
target as asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from poisonclip.contracts import PoisonInfo, TargetRecord
from poisonclip.data.evalset import LabelledSet
from poisonclip.data.sample import CorruptSample, decode_image
from poisonclip.errors import UserError
from poisonclip.evaluate import metrics as M
from poisonclip.evaluate.columns import rate_columns
from poisonclip.evaluate.aggregate import at, rate_summary, rates
from poisonclip.evaluate.embed import embed_images
from poisonclip.evaluate.hooks import AttackEvaluation, EvalContext, HeldOut, class_index, malformed
from poisonclip.evaluate.stats import Rate
from poisonclip.evaluate.zeroshot import logit_scale, probabilities, zeroshot_scores
from poisonclip.io_utils import sha256_file


@dataclass(frozen=True)
class _Prepared:
    targets: tuple[tuple[TargetRecord, Path], ...]   # each target and its saved image
    target_source: str | None          # the labelled set the targets were taken from (absolute)


def prepare(poison: PoisonInfo, eval_set: LabelledSet, path: Path) -> _Prepared:
    """The targets (poison.json "targets", each with its saved image) and the set they were
    drawn from; every target label must be an eval class."""
    if not poison.targets:
        raise malformed(poison, "field 'targets' is missing or empty")
    for t in poison.targets:
        class_index(t.label, eval_set.classnames, str(poison.path))
    return _Prepared(tuple((t, poison.target_image(t)) for t in poison.targets), poison.target_source)


def held_out(prepared: _Prepared) -> HeldOut:
    """Targets are found by the sha256 of their original bytes or of the saved PNG, and by key
    in the set they were drawn from."""
    hashes = {t.source_sha256 for t, _ in prepared.targets if t.source_sha256}
    for _, image in prepared.targets:
        if image.is_file():
            hashes.add(sha256_file(image))
    keys = frozenset(t.source_key for t, _ in prepared.targets if t.source_key)
    return HeldOut(frozenset(hashes), keys, prepared.target_source)


def measure(ctx: EvalContext, prepared: _Prepared) -> dict[str, Any]:
    targets, classnames = [t for t, _ in prepared.targets], list(ctx.classnames)
    images = []
    for t, image in prepared.targets:
        try:
            images.append(decode_image(image.read_bytes()))
        except OSError:
            raise UserError(f"{image}: target image of {t.id!r} not found beside poison.json") from None
        except CorruptSample as e:
            raise UserError(f"{image}: target image of {t.id!r} cannot be decoded ({e})") from None
    ctx.say(f"embedding {len(images)} target images")
    emb = embed_images(ctx.model, images, ctx.batch_size)
    ys = np.asarray([classnames.index(t.label) for t in targets], dtype=np.int64)
    heads = {"zeroshot": zeroshot_scores(emb, ctx.weights)}
    if ctx.probe is not None:
        heads["probe"] = ctx.probe.scores(emb)
    per_target: list[dict[str, Any]] = [{"id": t.id, "label": t.label, "label_index": int(y),
                                         "source_sha256": t.source_sha256 or None,
                                         "source_key": t.source_key or None}
                                        for t, y in zip(targets, ys)]
    summary: dict[str, Any] = {}
    scale = logit_scale(getattr(ctx.model, "model", None))
    for head, scores in heads.items():
        results = M.targeted_success(scores, ys)
        # zero-shot: CLIP's softmax probability of its prediction and of the target label
        probs = probabilities(scores, scale) if head == "zeroshot" and scale is not None else None
        for i, (row, r) in enumerate(zip(per_target, results)):
            row[head] = {"success": r.success, "rank": r.rank, "predicted": classnames[r.predicted]}
            if probs is not None:
                row[head].update(probability=float(probs[i, r.predicted]), label_probability=float(probs[i, ys[i]]))
        summary[head] = {"success": Rate(sum(r.success for r in results), len(results)).to_dict(),
                         "mean_rank": float(np.mean([r.rank for r in results]))}
    return {"targeted": {"targets": per_target, "summary": summary}}


def target_ids(rows: Any) -> str:
    """One target's identity is its image (sha256 of the source bytes, else its id) and its label;
    the targets of one model as a ';'-joined, sorted string (a table cell)."""
    ids = sorted(f"{(r.get('source_sha256') or r.get('id') or '')[:16]}:{r.get('label')}" for r in rows or ())
    return ";".join(ids)


def columns(m: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    tg = m.get("targeted")
    if not tg:
        return out
    for head, s in tg.get("summary", {}).items():
        out.update(rate_columns(f"targeted_success_{head}", s.get("success")))
        out[f"targeted_rank_{head}"] = s.get("mean_rank")
    # which targets stand behind the rate: distinct ones are counted over seeds in the report
    out["targeted_targets"] = target_ids(tg.get("targets", []))
    return out


def summarise(ms: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Success per head over (target, model) pairs, with how many distinct targets they hold
    (pairs are independent draws only across distinct targets)."""
    targets = [target_ids(t or ()) for t in at(ms, "targeted", "targets")]
    return {f"targeted_success_{head}": rate_summary(rates(ms, "targeted", "summary", head, "success"), targets)
            for head in ("zeroshot", "probe")}


EVALUATION = AttackEvaluation(measure=measure, columns=columns, prepare=prepare, held_out=held_out,
                              summarise=summarise)
