"""``poisonclip audit``: the detectors' most suspicious samples and the clusters of
near-identical images, on one self-contained page a person reviews before anything is removed.

For a real scrape there is no manifest: nobody knows which samples are poisons, so nothing
is scored against ground truth; the page ranks samples by the detectors' combined suspicion
(each detector's scores as percentile ranks, a sample's highest) and shows the clusters that
the targeted attack leaves (one image, many captions). Given a manifest (a poisoned folder)
the page also says which shown samples are poisons, to see what a detector catches.
Captions and keys come from untrusted data: the page escapes them and runs no script.
"""

from __future__ import annotations

import dataclasses
import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from poisonclip.contracts import (AUDIT_DETECTION_DIR, AUDIT_INFO_FILE, AUDIT_PAGE_FILE, AUDIT_RANKING_FILE,
                                  AuditInfo, write_audit_info)
from poisonclip.data.csv_io import write_table
from poisonclip.detect.agreement import clusters, concept_words
from poisonclip.detect.api import DetectConfig, Scored, score, write_detection
from poisonclip.detect.phash import phash_bits
from poisonclip.errors import SettingError
from poisonclip.io_utils import OutputKind, atomic_dir
from poisonclip.report.html import Image, Section, Table, Text, write_html

AUDIT_KIND = OutputKind("detection audit (`poisonclip audit`)", ((AUDIT_INFO_FILE, ("methods", "n_samples", "page")),))
DEFAULT_METHODS = ("exact-pixels", "phash", "caption-agreement", "shared-patch")
MAX_PER_CLUSTER = 8
PER_DETECTOR = 16   # samples shown per detector, besides the combined ranking


@dataclass(frozen=True)
class AuditConfig:
    data: Path
    out: Path
    methods: tuple[str, ...] = DEFAULT_METHODS
    model: Path | None = None
    manifest: str = "auto"
    top: int = 40                    # most suspicious samples shown and ranked
    clusters: int = 10               # largest clusters of near-identical images shown
    thumb: int = 96                  # thumbnail side in pixels
    batch_size: int = 64
    device: str = "cpu"
    overwrite: bool = False


def combined_suspicion(columns: Mapping[str, Sequence[float]]) -> np.ndarray:
    """Per sample, the highest of its percentile ranks over the methods (ties share the average
    rank, so a score most samples have, such as 0 duplicates, ranks in the middle)."""
    from scipy.stats import rankdata

    ranks = [rankdata(np.asarray(c, dtype=np.float64), method="average") / len(c) for c in columns.values()]
    return np.max(np.vstack(ranks), axis=0)


def _thumbnail(scored: Scored, i: int, side: int) -> bytes:
    im = scored.data.inputs.pil(i)
    im.thumbnail((side, side))   # only ever shrinks; the page shows every thumbnail at ``side`` pixels
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _truth(scored: Scored, i: int) -> str:
    if scored.is_poison is None:
        return ""
    return " [poison, per the manifest]" if scored.is_poison[i] else " [clean, per the manifest]"


def _scores_text(scored: Scored, i: int) -> str:
    return ", ".join(f"{m} {scored.scores.scores[m][i]:.3g}" for m in scored.scores.scores)


def audit(cfg: AuditConfig, progress: Callable[[str], None] | None = None) -> AuditInfo:
    """Score ``cfg.data`` and write the audit folder: detection/, suspicious.tsv, audit.html, audit.json."""
    if cfg.top <= 0:
        raise SettingError("top", f"must be positive, got {cfg.top}")
    if cfg.clusters < 0:
        raise SettingError("clusters", f"must be >= 0, got {cfg.clusters}")
    if not 16 <= cfg.thumb <= 512:
        raise SettingError("thumb", f"must be in 16..512 pixels, got {cfg.thumb}")
    dcfg = DetectConfig(data=cfg.data, out=cfg.out, methods=cfg.methods, model=cfg.model, manifest=cfg.manifest,
                        batch_size=cfg.batch_size, device=cfg.device, overwrite=cfg.overwrite)
    scored = score(dcfg, progress, kind=AUDIT_KIND)
    say = progress or (lambda _m: None)
    say("ranking")
    keys, captions = scored.data.keys, scored.data.inputs.captions
    suspicion = combined_suspicion(scored.scores.scores)
    order = np.argsort(-suspicion, kind="stable")[:cfg.top]
    rows = [{"rank": r + 1, "key": keys[i], "suspicion": round(float(suspicion[i]), 4),
             **{m: scored.scores.scores[m][i] for m in scored.scores.scores}, "caption": captions[i],
             **({"poison": bool(scored.is_poison[i])} if scored.is_poison is not None else {})}
            for r, i in enumerate(order)]
    columns = ["rank", "key", "suspicion", *scored.scores.scores, "caption",
               *(["poison"] if scored.is_poison is not None else [])]

    say("clustering near-identical images")
    labels = clusters(phash_bits(scored.data.inputs), 6)
    sizes = Counter(int(c) for c in labels)
    big = [c for c, n in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0])) if n >= 2][:cfg.clusters]

    say("writing the page")
    s = scored.summary
    intro = (f"{s.n_samples} samples of {s.data}, scored by {', '.join(s.methods)}. The {len(order)} most "
             "suspicious by the detectors' combined rank (each detector's scores as percentile ranks; a "
             "sample's highest) come first, then the largest clusters of near-identical images (perceptual "
             "hashes within 6 bits) with their captions: one image with many captions about one label is "
             "the targeted attack's signature. Nothing is removed: this page is for a person to review.")
    sections = [Section("What this is", [Text(intro)] + ([Text(
        f"Ground truth from {s.manifest}: each sample says whether it is a poison.", note=True)]
        if s.manifest else []))]
    if s.scoring:
        sections.append(Section("Detectors against the manifest", [Table(
            ["method", "AUROC", "average precision", "recall at 1%", "clean removed at 1%", "recall at 5%",
             "clean removed at 5%"],
            [[m, sc.auroc, sc.average_precision, sc.flagged[0].recall, sc.flagged[0].clean_removed,
              sc.flagged[1].recall, sc.flagged[1].clean_removed] for m, sc in s.scoring.items()])]))
    def shown(i: int, head: str) -> Image:
        return Image(_thumbnail(scored, i, cfg.thumb), width=cfg.thumb, alt=f"sample {keys[i]}",
                     caption=f"{head} {keys[i]}: {captions[i]!r} ({_scores_text(scored, i)}){_truth(scored, i)}")

    sections.append(Section(f"The {len(order)} most suspicious samples (all detectors)",
                            [shown(int(i), f"#{r + 1}") for r, i in enumerate(order)]))
    # One detector's top samples can sit in a large tie (every copy of one trigger scores the
    # same), which the combined ranking puts below another detector's single high scores.
    for m, col in scored.scores.scores.items():
        values = np.asarray(col)
        top_m = [int(i) for i in np.argsort(-values, kind="stable")[:min(cfg.top, PER_DETECTOR)] if values[i] > values.min()]
        if top_m:
            n_top = int((values >= values[top_m[0]]).sum())
            sections.append(Section(f"Top by {m} ({n_top} sample(s) share its highest score, {values[top_m[0]]:.3g})",
                                    [shown(i, f"{m} {values[i]:.3g}:") for i in top_m]))
    for n, c in enumerate(big, 1):
        idx = [i for i in range(len(labels)) if labels[i] == c]
        df = Counter(w for i in idx for w in concept_words(captions[i]))
        concept = max(df.items(), key=lambda kv: (kv[1], kv[0])) if df else None
        about = (f"{concept[1]} of {len(idx)} captions name '{concept[0]}'" if concept
                 else "no shared content word")
        poisons = (f"; {int(scored.is_poison[idx].sum())} poisons per the manifest"
                   if scored.is_poison is not None else "")
        sections.append(Section(f"Cluster {n}: {len(idx)} near-identical images; {about}{poisons}", [
            Image(_thumbnail(scored, i, cfg.thumb), caption=f"{keys[i]}: {captions[i]!r}{_truth(scored, i)}",
                  alt=f"sample {keys[i]}", width=cfg.thumb)
            for i in idx[:MAX_PER_CLUSTER]] + ([Text(f"... and {len(idx) - MAX_PER_CLUSTER} more")]
                                               if len(idx) > MAX_PER_CLUSTER else [])))
    info = AuditInfo(data=s.data, methods=s.methods, n_samples=s.n_samples, top=len(order), n_clusters=len(big),
                     manifest=s.manifest)
    with atomic_dir(cfg.out, cfg.overwrite, kind=AUDIT_KIND, inputs=scored.inputs) as tmp:
        write_detection(tmp / AUDIT_DETECTION_DIR, scored)
        write_table(tmp / AUDIT_RANKING_FILE, rows, columns)
        write_html(tmp / AUDIT_PAGE_FILE, "poisonclip audit", sections, subtitle=s.data)
        write_audit_info(tmp, info)
    return dataclasses.replace(info)
