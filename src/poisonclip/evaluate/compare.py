"""``poisonclip eval-compare``: many models' metrics.json files, summarised and compared.

Reads metrics.json files (``load_metrics``), summarises each group (mean +- std over models
and pooled Wilson intervals; each registered attack's evaluation summarises its own metrics)
and tests the clean-accuracy difference. The numbers are made by ``evaluate.aggregate``, as
for the sweep report; this module only picks them out of the files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from poisonclip.errors import UserError
from poisonclip.contracts import METRICS_FILE, read_metrics
from poisonclip.evaluate.aggregate import accuracy_test, at, finite, rate_summary, rates, seed_pairs
from poisonclip.evaluate.columns import RETRIEVAL_DIRECTIONS
from poisonclip.evaluate.metrics import RECALL_KS


def load_metrics(paths: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """metrics.json files; a folder stands for every metrics.json below it (sorted)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.rglob(METRICS_FILE))
            if not found:
                raise UserError(f"{p}: no {METRICS_FILE} below this folder")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"{p}: not found; give metrics.json files or folders holding them")
    return [{**read_metrics(f).to_json(), "_path": str(f)} for f in files]


def summarise(ms: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean +- std over models (seeds) and pooled Wilson intervals for every shared metric."""
    from poisonclip.evaluate.hooks import all_evaluations

    if not ms:
        raise ValueError("no metrics to summarise")
    out: dict[str, Any] = {"n_models": len(ms)}
    for head in ("zeroshot", "probe"):
        out[f"clean_top1_{head}"] = rate_summary(rates(ms, "clean", head, "top1"))
    for direction, short in RETRIEVAL_DIRECTIONS.items():
        for k in RECALL_KS:
            out[f"retrieval_{short}_r{k}"] = rate_summary(rates(ms, "retrieval", direction, f"R@{k}"))
    for ev in all_evaluations():
        out.update(ev.summarise(ms))
    return {k: v for k, v in out.items() if v is not None}


def compare(poisoned: Sequence[Mapping[str, Any]], clean: Sequence[Mapping[str, Any]],
            alpha: float = 0.05) -> dict[str, Any]:
    """Summaries of both groups and the test of clean accuracy, poisoned vs clean models:
    paired by training seed (``model.train_seed``, from run.json) when both groups hold the
    same seeds, unpaired (Welch) otherwise."""
    res: dict[str, Any] = {"poisoned": summarise(poisoned), "clean": summarise(clean), "accuracy_tests": {}}
    moved = drift(poisoned, clean)
    if moved:
        res["drift"] = moved
    seeds_p, seeds_c = at(poisoned, "model", "train_seed"), at(clean, "model", "train_seed")
    for head in ("zeroshot", "probe"):
        rp, rc = rates(poisoned, "clean", head, "top1"), rates(clean, "clean", head, "top1")
        if rp and rc:
            res["accuracy_tests"][head] = accuracy_test([r.rate for r in rp], [r.rate for r in rc], alpha, rp, rc,
                                                        seeds_p, seeds_c).to_dict()
    return res


# Attack sections whose evaluation records an encoder geometry (``<section>.geometry``).
GEOMETRY_SECTIONS = ("backdoor", "text_backdoor")
SIDES = ("image", "text", "cross")


def drift(poisoned: Sequence[Mapping[str, Any]], clean: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Which encoder the poison moved (the paper's section 3.2): each geometry cosine of the
    attack's evaluation (image-only, text-only, text-to-image) in the clean and the poisoned
    models, and its change. Paired by training seed when both groups hold the same seeds (the
    change is then the mean per-seed difference), else the difference of the group means.
    Two models trained apart have unaligned embedding spaces, so what is compared is each
    model's own geometry, never embeddings across models. Per side, ``max_abs_change`` is the
    largest change of its cosines: the side with the larger one moved more."""
    out: dict[str, Any] = {}
    pairs = seed_pairs(at(poisoned, "model", "train_seed"), at(clean, "model", "train_seed"))
    for section in GEOMETRY_SECTIONS:
        gp, gc = at(poisoned, section, "geometry"), at(clean, section, "geometry")
        if not gp or not gc or any(not isinstance(g, Mapping) or "skipped" in g for g in gp + gc):
            continue
        sec: dict[str, Any] = {"paired": pairs is not None, "n_poisoned": len(gp), "n_clean": len(gc)}
        for side in SIDES:
            rows: dict[str, Any] = {}
            keys = sorted(set.intersection(*(set(g.get(side) or {}) for g in gp + gc)))
            for key in keys:
                vp = [g[side][key] for g in gp]
                vc = [g[side][key] for g in gc]
                if not all(finite(v) for v in vp + vc):
                    continue
                if pairs is not None:
                    change = sum(vp[i] - vc[j] for i, j in zip(*pairs)) / len(pairs[0])
                else:
                    change = sum(vp) / len(vp) - sum(vc) / len(vc)
                rows[key] = {"clean": sum(vc) / len(vc), "poisoned": sum(vp) / len(vp), "change": change}
            if rows:
                sec[side] = {**rows, "max_abs_change": max(abs(r["change"]) for r in rows.values())}
        out[section] = sec
    return out
