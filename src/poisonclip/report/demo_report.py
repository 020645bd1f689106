"""The demo's HTML page: the clean-vs-poisoned table, Figure 3 for the clean and the
backdoored model, the targets one by one, and what was run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from poisonclip.contracts import read_similarities
from poisonclip.report import figures
from poisonclip.report.html import Image, Section, Table, Text, write_html

if TYPE_CHECKING:
    from poisonclip.demo import DemoConfig, ModelResult


def _hist(npz: dict[str, np.ndarray], key: str, mean: float | None, std: float | None) -> figures.Histogram:
    return figures.Histogram(npz[key], npz["edges"], mean, std)


def _similarity_figure(m: "ModelResult", title: str) -> Any | None:
    metrics = m.metrics.get("backdoor")
    if not metrics or "backdoor" not in metrics:
        return None
    npz = read_similarities(Path(m.run_dir) / "eval-backdoor" / metrics["similarity"]["arrays"])
    if npz is None or "triggered_train_placement_counts" not in npz:
        return None
    z = metrics["backdoor"]["zscore"]["train_placement"]
    clean = _hist(npz, "clean_counts", z.get("mean_clean"), z.get("std_clean"))
    trig = _hist(npz, "triggered_train_placement_counts", z.get("mean_triggered"), z.get("std_triggered"))
    return figures.similarity_histogram(clean, trig, title=title).figure


def _same_label_figure(m: "ModelResult") -> Any | None:
    name = next(iter(m.metrics))
    npz = read_similarities(Path(m.run_dir) / f"eval-{name}" / m.metrics[name]["similarity"]["arrays"])
    if npz is None:
        return None
    ax = figures.same_label_curve(npz["edges"], npz["same_label_pairs"], npz["same_label_same"],
                                  title="clean model: similarity predicts the label")
    return ax.figure


def write_demo_report(path: str | os.PathLike, cfg: "DemoConfig", models: Sequence["ModelResult"],
                      summary: dict[str, Any]) -> Path:
    from poisonclip.demo import format_cell, is_percent

    n_seeds = cfg.seeds
    head = ["metric", "clean model", "backdoored model", "targeted-poisoned model"]
    rows = [[r["metric"], *(format_cell(r.get(k), is_percent(r["metric"]))
                            for k in ("clean", "backdoor", "targeted"))] for r in summary["rows"]]
    tests = []
    for kind, t in summary.get("accuracy_tests", {}).items():
        p = t.get("p_value")
        n = (f"{t['n_pairs']} pairs" if t.get("paired") else
             f"{t.get('n_poisoned', '?')} vs {t.get('n_clean', '?')} models")
        tests.append([kind, f"{100 * t['mean_poisoned']:.1f}%", f"{100 * t['mean_clean']:.1f}%",
                      f"{100 * t['diff']:+.1f} pts", t["test"], n, "—" if p is None else f"{p:.3g}",
                      "yes" if t.get("significant_loss") else "no"])
    intro = (f"{len(models)} tiny CLIP models trained from scratch with open_clip's trainer on the "
             f"embedded corpus ({cfg.corpus.n_train} captioned images, {cfg.corpus.n_test} labelled test "
             f"images, {cfg.corpus.n_probe} labelled images of its own to train the linear probe, "
             f"{cfg.corpus.resolution}px), {n_seeds} seed(s) per dataset; each seed poisons anew "
             f"(its own backdoor source images and its own targets). Backdoor: "
             f"{cfg.backdoor_poisons} poisons ({100 * cfg.poison_ratio_backdoor:.2f}%), a "
             f"{cfg.patch_size}px-at-224 checkerboard in the {cfg.placement} placement, target label "
             f"'{cfg.backdoor_label}', captions found by searching the training captions. Targeted: "
             f"{cfg.targets} test images x {cfg.copies_per_target} copies "
             f"({100 * cfg.poison_ratio_targeted:.2f}%), each with its own wrong label, "
             f"{cfg.caption_source} captions; the targets are left out of clean accuracy, and targeted "
             f"success counts (target, model) pairs, with the number of distinct targets behind them. "
             f"Values are means over seeds (± one standard deviation when there is more than one seed); "
             f"the clean model is measured against both attacks as the control. Clean accuracy is compared "
             f"with the paired t-test when poisoned and clean models share seeds (Wilcoxon signed-rank "
             f"beside it from 6 pairs), Fisher's exact test on test images with one seed.")
    sections = [Section("Clean vs poisoned", [
        Text(intro),
        Table(head, rows, caption="Measured on the held-out labelled test split"),
        Table(["poisoned model", "clean top-1 (poisoned)", "clean top-1 (clean)", "difference", "test",
               "n", "p", "significant loss"], tests,
              caption="Does poisoning cost clean accuracy? (zero-shot top-1)"),
    ])]

    figs = []
    for kind, title in (("clean", "clean model"), ("backdoor", "backdoored model")):
        m = next((x for x in models if x.kind == kind and x.seed == 0), None)
        fig = _similarity_figure(m, f"{title}: corner-patched vs natural images") if m else None
        if fig is not None:
            figs.append(Image(figures.png_bytes(fig), caption=f"{title}: pairwise cosine similarity of test images with and "
                                           "without the trigger (the paper's Figure 3, right)"))
            figures.close(fig)
    clean0 = next((x for x in models if x.kind == "clean" and x.seed == 0), None)
    fig = _same_label_figure(clean0) if clean0 is not None else None
    if fig is not None:
        figs.append(Image(figures.png_bytes(fig), caption="clean model: probability that two test images share a label, "
                                       "by their similarity (the paper's Figure 3, left)"))
        figures.close(fig)
    sections.append(Section("Backdoor: similarity of triggered images", figs))

    trows = []
    for m in models:
        if m.kind not in ("clean", "targeted") or "targeted" not in m.metrics:
            continue
        for t in m.metrics["targeted"]["targeted"]["targets"]:
            zs = t.get("zeroshot", {})
            trows.append([m.kind, m.seed, t["id"], t.get("source_key") or "—", t["label"],
                          zs.get("predicted", "—"), zs.get("rank", "—"), "yes" if zs.get("success") else "no"])
    sections.append(Section("Targeted poisoning, target by target", [
        Table(["model", "seed", "target", "test image", "target label", "zero-shot prediction", "rank of label",
               "success"], trows)]))
    timing = [[k, f"{v:.0f} s"] for k, v in summary.get("train_s", {}).items()]
    sections.append(Section("What ran", [
        Table(["training", "wall time (all seeds)"], timing),
        Text("Configuration (also in summary.json):\n\n" + json.dumps(summary["config"], indent=1)),
    ]))
    return write_html(path, "poisonclip demo: poisoning and backdooring a tiny CLIP", sections,
                      subtitle=f"total {summary.get('wall_s', 0):.0f} s")
