"""The targeted attack's evaluation: is each target image x' classified as its label y'?

Each target is scored by both heads (zero-shot and, if trained, the linear probe) with its
rank; the success rate counts (target, model) pairs. The targets are the attack's own images:
wherever they sit in a labelled set (``target_source``: the test split, a probe set) they are
left out of clean accuracy and of the probe's training split (``held_out``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from poisonclip.data.evalset import LabelledSet
from poisonclip.data.sample import CorruptSample, decode_image
from poisonclip.errors import UserError
from poisonclip.evaluate import metrics as M
from poisonclip.evaluate.columns import rate_columns
from poisonclip.evaluate.compare import rate_summary, rates
from poisonclip.evaluate.embed import embed_images
from poisonclip.evaluate.hooks import AttackEvaluation, EvalContext, HeldOut, PoisonFolder, class_index
from poisonclip.evaluate.stats import Rate
from poisonclip.evaluate.zeroshot import zeroshot_scores
from poisonclip.io_utils import sha256_file


@dataclass(frozen=True)
class RecordedTarget:
    """One target as poison.json records it (the attack's ``TargetSpec`` is the request)."""

    id: str
    label: str
    image: Path                # the saved target image, targets/<id>.png beside poison.json
    source_sha256: str = ""    # sha256 of the target's original image bytes
    source_key: str = ""       # its key in the set it was drawn from (``target_source``)


@dataclass(frozen=True)
class _Prepared:
    targets: tuple[RecordedTarget, ...]
    target_source: str | None          # the labelled set the targets were taken from (absolute)


def read_targets(poison: PoisonFolder) -> _Prepared:
    """The ``targets`` section of poison.json, and the set they were drawn from."""
    info = poison.info
    try:
        targets = tuple(RecordedTarget(str(t["id"]), str(t["label"]), poison.folder / t["image"],
                                       str(t.get("source_sha256") or ""), str(t.get("source_key") or ""))
                        for t in info["targets"])
        if not targets:
            raise ValueError("no targets")
    except (KeyError, TypeError, ValueError) as e:
        raise poison.malformed(e) from None
    source = (info.get("config") or {}).get("target_source")
    return _Prepared(targets, str(source) if source else None)


def prepare(poison: PoisonFolder, eval_set: LabelledSet, path: Path) -> _Prepared:
    prepared = read_targets(poison)
    for t in prepared.targets:
        class_index(t.label, eval_set.classnames, str(poison.path))
    return prepared


def held_out(prepared: _Prepared) -> HeldOut:
    """Targets are found by the sha256 of their original bytes or of the saved PNG, and by key
    in the set they were drawn from."""
    hashes = {t.source_sha256 for t in prepared.targets if t.source_sha256}
    for t in prepared.targets:
        if t.image.is_file():
            hashes.add(sha256_file(t.image))
    keys = frozenset(t.source_key for t in prepared.targets if t.source_key)
    return HeldOut(frozenset(hashes), keys, prepared.target_source)


def measure(ctx: EvalContext, prepared: _Prepared) -> dict[str, Any]:
    targets, classnames = prepared.targets, list(ctx.classnames)
    images = []
    for t in targets:
        try:
            images.append(decode_image(t.image.read_bytes()))
        except OSError:
            raise UserError(f"{t.image}: target image of {t.id!r} not found beside poison.json") from None
        except CorruptSample as e:
            raise UserError(f"{t.image}: target image of {t.id!r} cannot be decoded ({e})") from None
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
    for head, scores in heads.items():
        results = M.targeted_success(scores, ys)
        for row, r in zip(per_target, results):
            row[head] = {"success": r.success, "rank": r.rank, "predicted": classnames[r.predicted]}
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
    """Success per head over (target, model) pairs, with how many distinct targets they hold."""
    out: dict[str, Any] = {}
    for head in ("zeroshot", "probe"):
        s = rate_summary(rates(ms, "targeted", "summary", head, "success"))
        if s is not None:
            # (target, model) pairs are independent only across distinct targets: say how many
            ids = {f"{t.get('source_sha256') or t.get('id')}:{t.get('label')}"
                   for m in ms for t in (m.get("targeted") or {}).get("targets", [])}
            s["n_distinct_targets"] = len(ids)
        out[f"targeted_success_{head}"] = s
    return out


EVALUATION = AttackEvaluation(measure=measure, columns=columns, prepare=prepare, held_out=held_out,
                              summarise=summarise)
