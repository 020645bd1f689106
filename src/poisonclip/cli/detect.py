"""``poisonclip detect``: score every sample of a (poisoned) dataset with registered detectors,
and, given the manifest, measure how well each finds the poisons. ``poisonclip audit``: the
same scores as a page of the most suspicious samples and clusters, for a person to review."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from poisonclip.cli.common import App, console


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def detect_command(
    data: Annotated[str, typer.Argument(help="CSV/TSV table, WebDataset shards, a corpus folder or a poisoned "
                                             "dataset folder (read through its poison.json's training data).")],
    method: Annotated[list[str], typer.Option(help="Detector (repeatable; `poisonclip list detectors`): "
                                                   "exact-bytes, exact-pixels, phash, caption-agreement, "
                                                   "shared-patch, embedding-neighbours, image-caption-similarity "
                                                   "(the last two need --model).")],
    out: Annotated[Path, typer.Option(help="Output folder: scores.tsv (a score per sample and method) and "
                                           "detect.json.")],
    model: Annotated[Optional[Path], typer.Option(help="Run folder written by `poisonclip train`, whose model "
                                                       "embeds the data.")] = None,
    manifest: Annotated[str, typer.Option(help="Ground truth to score against: auto (the poisoned folder's "
                                               "manifest.csv), none, or a manifest.csv.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per forward pass of --model.")] = 64,
    device: Annotated[str, typer.Option(help="torch device for --model.")] = "cpu",
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier detection in --out.")] = False,
) -> None:
    """Which training samples are poisons? Scores from image and caption contents only."""
    from poisonclip.contracts import DETECT_INFO_FILE, DETECT_PR_FIGURE, DETECT_SCORES_FILE
    from poisonclip.detect.api import DetectConfig, detect

    cfg = DetectConfig(data=Path(data), out=out, methods=tuple(method), model=model, manifest=manifest,
                       batch_size=batch_size, device=device, overwrite=overwrite)
    with console.status("detecting") as status:
        res = detect(cfg, progress=lambda msg: status.update(msg))
    s = res.summary
    if s.scoring:
        first = next(iter(s.scoring.values()))
        t = Table(title=f"{s.n_samples} samples, {first.n_poisons} poisons (manifest)", title_justify="left")
        t.add_column("method", no_wrap=True)
        for col in ("AUROC", "AP", "recall @1%", "recall @5%", "clean removed @1% / @5%"):
            t.add_column(col)
        for m, sc in s.scoring.items():
            f1, f5 = sc.flagged
            t.add_row(m, "-" if sc.auroc is None else f"{sc.auroc:.3f}",
                      "-" if sc.average_precision is None else f"{sc.average_precision:.3f}",
                      _pct(f1.recall), _pct(f5.recall), f"{f1.clean_removed} / {f5.clean_removed}")
        console.print(t)
        console.print("AP: average precision; @1%, @5%: a threshold at the score of the top 1% (5%) of the "
                      "data, ties included")
        from poisonclip.report.figures import close, precision_recall

        close(precision_recall(s.scoring, path=res.out / DETECT_PR_FIGURE))
        console.print(f"wrote [bold]{res.out / DETECT_PR_FIGURE}.png[/] (precision/recall curves)")
    else:
        console.print(f"{s.n_samples} samples scored; no manifest, so no ground truth to measure against")
    console.print(f"wrote [bold]{res.out / DETECT_SCORES_FILE}[/] and [bold]{res.out / DETECT_INFO_FILE}[/]")


def audit_command(
    data: Annotated[str, typer.Argument(help="CSV/TSV table, WebDataset shards, a corpus folder or a poisoned "
                                             "dataset folder.")],
    out: Annotated[Path, typer.Option(help="Output folder: audit.html, suspicious.tsv, detection/, audit.json.")],
    method: Annotated[Optional[list[str]], typer.Option(help="Detector (repeatable; default: exact-pixels, phash, "
                                                             "caption-agreement, shared-patch).")] = None,
    model: Annotated[Optional[Path], typer.Option(help="Run folder written by `poisonclip train`, for the "
                                                       "model-based detectors.")] = None,
    manifest: Annotated[str, typer.Option(help="auto (a poisoned folder's manifest.csv, shown beside each "
                                               "sample), none, or a manifest.csv.")] = "auto",
    top: Annotated[int, typer.Option(help="Most suspicious samples to show and rank.")] = 40,
    clusters: Annotated[int, typer.Option(help="Largest clusters of near-identical images to show.")] = 10,
    thumb: Annotated[int, typer.Option(help="Thumbnail side in pixels.")] = 96,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass of --model.")] = 64,
    device: Annotated[str, typer.Option(help="torch device for --model.")] = "cpu",
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier audit in --out.")] = False,
) -> None:
    """A page of the most suspicious samples and clusters, for a person to review (no ground truth needed)."""
    from poisonclip.contracts import AUDIT_PAGE_FILE
    from poisonclip.report.audit import DEFAULT_METHODS, AuditConfig, audit

    cfg = AuditConfig(data=Path(data), out=out, methods=tuple(method) if method else DEFAULT_METHODS, model=model,
                      manifest=manifest, top=top, clusters=clusters, thumb=thumb, batch_size=batch_size,
                      device=device, overwrite=overwrite)
    with console.status("auditing") as status:
        info = audit(cfg, progress=lambda msg: status.update(msg))
    console.print(f"{info.n_samples} samples; the {info.top} most suspicious and {info.n_clusters} clusters on "
                  f"[bold]{out / AUDIT_PAGE_FILE}[/]")


def register(root: App) -> None:
    """Add this stage's commands to the root app."""
    root.command("detect", flags={"methods": "--method"})(detect_command)
    root.command("audit", flags={"methods": "--method"})(audit_command)
