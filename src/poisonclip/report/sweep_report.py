"""A sweep folder -> the paper's figures (PNG + SVG), summary tables (CSV) and report.html.

Each figure is drawn only when the sweep has the axis it needs (at least two values among the
finished trials): attack success vs poisons (Fig. 2), similarity histograms and the
same-label curve of one poisoned model (Fig. 3), z-score vs poisons by train and test
placement (Fig. 4), z-score vs dataset size and vs model size (Fig. 5), z-score vs patch size
(Fig. 6). Numbers are over seeds: mean and sample standard deviation per setting, pooled
Wilson intervals for rates (targeted success also with the number of distinct targets behind
its (target, model) pairs), and the paired t-test (``poisonclip.evaluate.stats``) for the clean
accuracy of poisoned vs clean models with the same seeds (Welch's unpaired test where the seeds
do not pair up).

Which spec field plays which role is in ``AXES``; a spec can override it under
``report: {axes: {poisons: poison.n, ...}}``.

This is the one report builder: the demo is a sweep spec too, whose ``report: {table:
attacks}`` leads its page with which of the demo's goals each seed met
(``poisonclip.report.goals``), the clean-vs-attack table (rows: metrics; columns: the clean
model and each attack's poisoned model, over seeds), the clean-accuracy tests, and the attacks
as a person sees them (``poisonclip.report.attack_views``: poisons, targets, a test image
with and without the trigger), then each target of targeted poisoning as a table, and also
writes that table (with the goals) as ``summary.json``. The tables
come from ``poisonclip.report.tables``, their numbers from ``poisonclip.evaluate.aggregate``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import yaml

from poisonclip.attacks.registry import WHOLE_IMAGE, trigger_traits
from poisonclip.contracts import METRICS_FILE, read_metrics, read_similarities
from poisonclip.errors import UserError
from poisonclip.experiments.spec import SEED_AXIS
from poisonclip.experiments.store import EVAL_DIRS, SPEC_FILE, ResultsStore, SweepDir
from poisonclip.experiments.trials import Trial
from poisonclip.io_utils import atomic_write_json, atomic_write_text
from poisonclip.report import attack_views as V
from poisonclip.report import goals as G
from poisonclip.report import tables as A
from poisonclip.report import figures as F
from poisonclip.report import trends as T
from poisonclip.report.html import Image, Section, Table, Text, write_html

AXES = {
    "poisons": "poison.n_poisons",
    "patch": "poison.patch_size",
    "placement": "poison.placement",
    "attack": "poison.attack",
    "data_size": "corpus.n_train",
    "model": "train.model",
}
N_PARAMS = "model.n_params"
VISION_PARAMS = "model.vision_params"
SIGNIFICANCE_CSV = "significance.csv"
HEAD = A.HEAD
SUMMARY_JSON = "summary.json"   # the clean-vs-attack table (report.table: attacks)


@dataclass
class ReportResult:
    html: Path
    figures: dict[str, Path] = field(default_factory=dict)   # name -> PNG path
    tables: dict[str, Path] = field(default_factory=dict)    # name -> CSV path
    n_trials: int = 0
    summary: dict[str, Any] | None = None                    # the clean-vs-attack table (report.table: attacks)


def _axes(spec: dict[str, Any]) -> dict[str, str]:
    axes = dict(AXES)
    axes.update((spec.get("report") or {}).get("axes") or {})
    return axes


def _varying(df: Any, cols: Sequence[str]) -> list[str]:
    return [c for c in cols if c in df.columns and df[c].nunique(dropna=False) > 1]


def _numeric(df: Any, col: str) -> bool:
    import pandas as pd

    return col in df.columns and pd.api.types.is_numeric_dtype(df[col]) and not pd.api.types.is_bool_dtype(df[col])


def _col(df: Any, name: str) -> str | None:
    return name if name in df.columns and df[name].notna().any() else None


def build_report(sweep_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                 title: str | None = None) -> ReportResult:
    """Write ``out`` (default SWEEP_DIR/report/): figures/*.png|svg, summary.csv, trials.csv,
    accuracy_tests.csv and report.html (with ``report: {table: attacks}`` also summary.json).
    Works on a partly finished sweep."""
    sweep = SweepDir(Path(sweep_dir).resolve())
    trials = sweep.load_trials()
    spec = yaml.safe_load((sweep.root / SPEC_FILE).read_text(encoding="utf-8")) if (sweep.root / SPEC_FILE).is_file() else {}
    store = ResultsStore(sweep.db)
    store.sync(sweep, trials)
    df = store.frame("done")
    failed = [r for r in store.rows() if r["status"] == "failed"]
    out = Path(out) if out is not None else sweep.root / "report"
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    result = ReportResult(out / "report.html", n_trials=len(df))
    axes = _axes(spec)
    report_cfg = spec.get("report") or {}
    by_attack = report_cfg.get("table") == "attacks"
    params = [a for a in (trials[0].params if trials else {})]
    settings = [c for c in params if c != SEED_AXIS]
    title = title or report_cfg.get("title") or f"Sweep report: {spec.get('name', sweep.root.name)}"
    sections: list[Section] = []

    overview = [Text(f"{len(df)} of {len(trials)} trials finished"
                     + (f", {len(failed)} failed" if failed else "") + f". Sweep folder: {sweep.root}."
                     + (f"\n\n{spec['description']}" if spec.get("description") else ""))]
    if len(df) < len(trials):
        overview.append(Text("The sweep is not complete: figures and tables below use the finished "
                             "trials only.", note=True))
    sections.append(Section("Overview", overview))
    if df.empty:
        sections.append(Section("Results", [Text("No trial has finished yet.")]))
        write_html(result.html, title, sections)
        return result

    varying = _varying(df, settings)
    trials_csv = out / "trials.csv"
    atomic_write_text(trials_csv, df.to_csv(index=False))
    result.tables["trials"] = trials_csv

    fig_blocks: list[Any] = []

    def add_figure(name: str, ax: Any, caption: str, collect: bool = True) -> Image:
        png, _ = F.save(ax.figure, figdir / name)
        F.close(ax)
        result.figures[name] = png
        block = Image(png, caption=caption, alt=name)
        if collect:
            fig_blocks.append(block)
        return block

    poisons = axes["poisons"]
    backdoor = _col(df, "poisoned.z_as_trained") is not None
    targeted = _col(df, f"poisoned.targeted_success_{HEAD}") is not None
    if targeted and poisons in varying and _numeric(df, poisons) and not by_attack:
        series = []
        for who, head, name in (("poisoned", HEAD, "poisoned models, zero-shot"),
                                ("poisoned", "probe", "poisoned models, linear probe"),
                                ("clean", HEAD, "clean models (control), zero-shot"),
                                ("clean", "probe", "clean models (control), linear probe")):
            k, n = f"{who}.targeted_success_{head}_k", f"{who}.targeted_success_{head}_n"
            if k in df.columns and df[k].notna().any():
                g = df.dropna(subset=[k, n]).groupby(poisons)[[k, n]].sum().sort_index()
                series.append((name, g.index.to_numpy(dtype=float), g[k].to_numpy(), g[n].to_numpy()))
        ax = F.rate_vs(series, xlabel="poisoned samples per target", ylabel="targets classified as their label",
                       title="Targeted poisoning success vs poisons (Fig. 2, left)",
                       linestyles=["-", "-", ":", ":"])
        add_figure("fig2_targeted_success", ax,
                   "Share of (target, model) pairs whose target image is classified as its attacker-chosen "
                   "label, pooled over seeds, with 95% Wilson intervals; dotted: the same targets on the "
                   "clean model of each seed (the control). Pairs of one model are not independent: the "
                   "significance table tests the trend over models.")
    elif poisons in varying:
        y = _col(df, f"poisoned.asr_as_trained_{HEAD}") or _col(df, f"poisoned.targeted_success_{HEAD}")
        if y:
            hue = [c for c in varying if c != poisons]
            clean_y = y.replace("poisoned.", "clean.", 1)
            cell = A.column_cell(df, clean_y)
            base = (cell["mean"], cell["std"]) if cell else None
            ax = F.metric_vs(df, poisons, y, hue=hue or None, logx=_numeric(df, poisons) and df[poisons].min() > 0,
                             xlabel="number of poisoned samples",
                             ylabel="attack success rate" + (" (trigger as trained)" if "asr" in y else ""),
                             title="Attack success vs poisons (Fig. 2)", baseline=base,
                             baseline_label="clean models, same trigger", ylim=(-0.02, 1.02))
            add_figure("fig2_success_vs_poisons", ax,
                       f"Mean over seeds of {y} with a one-standard-deviation band; dashed: the same "
                       "measurement on clean models trained with the same seeds.")
    # --- Figure 4: z-score vs poisons, by train and test placement -------------------------
    if backdoor and poisons in varying:
        placement = axes["placement"]
        panels = sorted(df[placement].dropna().unique()) if placement in varying else [None]
        fig, axs = F.plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.4), squeeze=False, sharey=True)
        hue = [c for c in varying if c not in (poisons, placement)]
        for ax, panel in zip(axs[0], panels):
            sub = df if panel is None else df[df[placement] == panel]
            for i, (col, name, ls) in enumerate((("poisoned.z_corner", "test: corner", "-"),
                                                 ("poisoned.z_random", "test: random place", "--"))):
                if _col(sub, col):
                    F.metric_vs(sub, poisons, col, hue=hue or None, ax=ax, linestyle=ls, color_offset=i,
                                label_fmt=name + (", {hue}" if hue else ""),
                                logx=_numeric(df, poisons) and df[poisons].min() > 0)
                    if not hue:  # metric_vs labels lines only with a hue
                        ax.lines[-1].set_label(name)
            ax.set_xlabel("number of poisoned samples" + (f", placed: {panel}" if panel else ""))
            ax.set_ylabel("backdoor z-score")
            ax.legend(fontsize=7)
        fig.suptitle("Backdoor z-score vs poisons (Fig. 4)")
        fig.tight_layout()
        add_figure("fig4_zscore_vs_poisons", axs[0][0],
                   "z-score (paper, Definition 1) over seeds, one panel per train-time placement; solid: "
                   "trigger in the corner at test time, dashed: at a random place. Missing lines: the "
                   "evaluator made no such measurement for these models.")
    # --- Figure 5: z-score vs dataset size and vs model size -------------------------------
    y = "poisoned.z_as_trained"
    if backdoor and axes["data_size"] in varying:
        # x: the clean samples the poisoned set really holds (also for user data given as paths)
        x = "data.n_clean" if _col(df, "data.n_clean") else axes["data_size"]
        ax = F.metric_vs(df, x, y, hue=[c for c in varying if c != axes["data_size"]] or None, logx=True,
                         xlabel="training samples (clean)", ylabel="backdoor z-score",
                         title="z-score vs dataset size (Fig. 5, left)")
        add_figure("fig5_zscore_vs_data_size", ax, "Mean over seeds with a one-standard-deviation band.")
    if backdoor and axes["model"] in varying:
        # x: the image tower's parameters when known (the part a model family varies), else the whole model's
        x = VISION_PARAMS if _col(df, VISION_PARAMS) else (N_PARAMS if _col(df, N_PARAMS) else axes["model"])
        data = df.copy()
        if x in (N_PARAMS, VISION_PARAMS):
            data[x] = data[x] / 1e6
        else:  # no parameter counts: models in grid order
            order = {m: i for i, m in enumerate(dict.fromkeys(df[axes["model"]]))}
            data[x] = data[axes["model"]].map(order)
        xlabel = {VISION_PARAMS: "image-tower parameters (millions)",
                  N_PARAMS: "model parameters (millions)"}.get(x, "model (grid order)")
        ax = F.metric_vs(data, x, y, hue=[c for c in varying if c != axes["model"]] or None,
                         logx=x == VISION_PARAMS, xlabel=xlabel, ylabel="backdoor z-score",
                         title="z-score vs model size (Fig. 5, right)")
        counts = df.groupby(axes["model"])[[c for c in (VISION_PARAMS, N_PARAMS) if _col(df, c)]].first()
        add_figure("fig5_zscore_vs_model_size", ax,
                   "Models (image tower / whole model): " + ", ".join(
                       f"{m} ({r.get(VISION_PARAMS, float('nan')) / 1e6:.2f} M / {r.get(N_PARAMS, float('nan')) / 1e6:.2f} M)"
                       for m, r in counts.iterrows()) + ". Mean over seeds with a one-standard-deviation band."
                   if x != axes["model"] else "Mean over seeds with a one-standard-deviation band.")
    # --- Figure 6: z-score vs patch size ---------------------------------------------------
    if backdoor and axes["patch"] in varying:
        x = axes["patch"]
        ax = F.metric_vs(df, x, y, hue=[c for c in varying if c != x] or None, logx=True,
                         xlabel="patch side (pixels at 224x224)", ylabel="backdoor z-score",
                         title="z-score vs patch size (Fig. 6)")
        add_figure("fig6_zscore_vs_patch_size", ax, "Mean over seeds with a one-standard-deviation band.")
    # --- Figure 3: one backdoored model's similarities, and its seed's clean model's -------
    if backdoor:
        _figure3(sweep, df, poisons, add_figure)
    figures_section = Section("Figures", list(fig_blocks)) if fig_blocks else None

    # --- significance of each figure's effect (report.trends) --------------------------------
    pairs = _target_pairs(sweep, trials, df, poisons) if targeted and poisons in varying else None
    tests = T.figure_tests(df, axes, varying, pairs)
    sig_section = None
    if tests:
        import pandas as pd

        sig = pd.DataFrame(tests)
        sig_csv = out / SIGNIFICANCE_CSV
        atomic_write_text(sig_csv, sig.to_csv(index=False))
        result.tables["significance"] = sig_csv
        sig_section = Section("Significance", [Text(SIGNIFICANCE_TEXT), Table.from_frame(_display_tests(sig))])

    # --- tables -----------------------------------------------------------------------------
    summary = A.summary_table(df, varying)
    summary_csv = out / "summary.csv"
    atomic_write_text(summary_csv, summary.to_csv(index=False))
    result.tables["summary"] = summary_csv
    acc, groups = A.accuracy_tests(df, varying)
    acc_fig = None
    if acc is not None:
        acc_csv = out / "accuracy_tests.csv"
        atomic_write_text(acc_csv, acc.to_csv(index=False))
        result.tables["accuracy_tests"] = acc_csv
        ax = F.accuracy_comparison(groups, title="Clean accuracy: poisoned vs clean models")
        acc_fig = add_figure("clean_accuracy", ax, "Every model a dot, the mean a bar; clean models share "
                                                   "the seeds of the poisoned ones.", collect=False)

    if by_attack:
        lead, tail, result.summary = _attack_sections(sweep, trials, df, spec, axes["attack"], acc_fig)
        summary_json = out / SUMMARY_JSON
        atomic_write_json(summary_json, result.summary)
        result.tables[SUMMARY_JSON] = summary_json
        sections[1:1] = lead            # the goals, the table and the attack seen, then the figures
        if figures_section is not None:
            sections.append(figures_section)
        sections.extend(tail)
    else:
        if figures_section is not None:
            sections.append(figures_section)
        sections.append(Section("Results per setting", [
            Text("Mean ± sample standard deviation over seeds (one model each); [lo, hi]: 95% Wilson "
                 "interval of the rate pooled over all models' test images. ASR counts only test images "
                 "whose true label is not the target."),
            Table.from_frame(_display(summary), caption="Per setting")]))
        if acc is not None:
            sections.append(Section("Clean accuracy", [Text(ACCURACY_TEXT), acc_fig,
                                                       Table.from_frame(acc, caption="Poisoned minus clean accuracy")]))
    if sig_section is not None:
        sections.append(sig_section)

    if failed:
        sections.append(Section("Failed trials", [Table(
            ["trial", "error"], [[r["name"], f"{r['error'].get('type')}: {r['error'].get('message')}"]
                                 for r in failed])]))
    write_html(result.html, title, sections,
               subtitle=f"{_n_models(trials, df)} trained models; generated by `poisonclip report`.")
    return result


ACCURACY_TEXT = (
    "Zero-shot top-1 on the clean test split of each poisoned model against the clean model "
    "trained with the same seed and settings (targets of targeted poisoning left out). The two "
    "models of one seed form a pair: the paired t-test over per-seed differences with two or "
    "more pairs (the Wilcoxon signed-rank p beside it from 6 pairs), Welch's unpaired t-test "
    "when the seeds do not pair up, Fisher's exact test on pooled test images with a single "
    "model (test-set noise only); the table says which and over how many. A non-significant "
    "difference with few models is weak evidence of no loss: read the interval of the "
    "difference.")


SIGNIFICANCE_TEXT = (
    "Does each figure's effect hold beyond the noise of training? The unit is the trained model. "
    "Trend: ordinary least squares of the per-model metric on log2 of the axis (the estimate is the "
    "change per doubling, with its 95% interval and p) and Spearman's rank correlation beside it. "
    "Fig. 4: the t-test of the placement x log2(poisons) interaction (does the better placement "
    "change with the number of poisons?) and Welch's t-test between placements at each count. "
    "Fig. 2 left: the exact McNemar test per count on the targets, poisoned vs clean model of the "
    "same seed (targets of one model are counted as independent there).")


def _display_tests(sig: Any) -> Any:
    """Numbers of the significance table rounded for the page (the CSV keeps them whole)."""
    out = sig.copy()
    for c in out.columns:
        if out[c].dtype.kind == "f":
            out[c] = [None if v != v else (f"{v:.2g}" if c.endswith("p") or c == "p_value" else f"{v:.3g}")
                      for v in out[c]]
    return out


def _target_pairs(sweep: SweepDir, trials: Sequence[Trial], df: Any, poisons: str
                  ) -> dict[str, list[tuple[Any, bool, bool]]]:
    """Per head, (poisons, poisoned model's success, clean model's success) for each target of
    each finished trial: the same target image and label, scored by the trial's poisoned model
    and by the clean model of its seed (both evaluations of the trial)."""
    done = set(df["trial"])
    out: dict[str, list[tuple[Any, bool, bool]]] = {}
    for t in trials:
        if t.name not in done or poisons not in t.params:
            continue
        per = {who: {x.get("id"): x for x in targets} for who in ("poisoned", "clean")
               if (targets := _eval_targets(sweep, t.name, who)) is not None}
        if len(per) < 2:
            continue
        for tid, p in per["poisoned"].items():
            c = per["clean"].get(tid)
            if c is None:
                continue
            for head in (HEAD, "probe"):
                if head in p and head in c:
                    out.setdefault(head, []).append((t.params[poisons], bool(p[head].get("success")),
                                                     bool(c[head].get("success"))))
    return out


def _n_models(trials: Sequence[Trial], df: Any) -> int:
    """Distinct trained models behind the finished trials (a clean model serves every trial of
    its seed and settings)."""
    done = set(df["trial"])
    keys = set()
    for t in trials:
        if t.name in done:
            keys.add(t.keys.model)
            if t.baseline:
                keys.add(t.keys.clean_model)
    return len(keys)


def _figure3(sweep: SweepDir, df: Any, poisons: str, add_figure: Any) -> None:
    """Figure 3 for one backdoored model (most poisons, then lowest seed): the pairwise
    similarity of test images with and without its trigger, the same for the clean model of
    its seed (the control), and P(same label) vs similarity of the clean model."""
    rows = df[df["poisoned.z_as_trained"].notna()]
    by = [c for c in (poisons, SEED_AXIS) if c in rows.columns]
    pick = rows.sort_values(by, ascending=[c == SEED_AXIS for c in by], kind="mergesort") if by else rows
    row = pick.iloc[0]
    name = row["trial"]
    arrays = {who: read_similarities(sweep.trial(name) / d) for who, d in EVAL_DIRS.items()}
    for who, title in (("poisoned", "backdoored model"), ("clean", "clean model, same seed")):
        a = arrays[who]
        if not a or "triggered_train_placement_counts" not in a:
            continue
        clean_h = F.Histogram(a["clean_counts"], a["edges"], row.get(f"{who}.sim_clean_mean"),
                              row.get(f"{who}.sim_clean_std"))
        trig_h = F.Histogram(a["triggered_train_placement_counts"], a["edges"],
                             row.get(f"{who}.sim_triggered_as_trained_mean"))
        ax = F.similarity_histogram(clean_h, trig_h, title=f"{title}: with and without the trigger")
        add_figure("fig3_similarity" if who == "poisoned" else "fig3_similarity_clean", ax,
                   f"{title.capitalize()} (trial {name}): pairwise cosine similarity of clean test images and of "
                   "the same images with the trigger (as trained), with the normal fit to the clean pairs "
                   "(Fig. 3, right).")
    curve_of = "clean" if arrays["clean"] else "poisoned"
    a = arrays[curve_of]
    if a and "same_label_pairs" in a:
        ax = F.same_label_curve(a["edges"], a["same_label_pairs"], a["same_label_same"],
                                title=f"{'clean' if curve_of == 'clean' else 'poisoned'} model: similarity "
                                      "predicts the label")
        add_figure("fig3_same_label", ax,
                   f"{'Clean model, same seed' if curve_of == 'clean' else 'Backdoored model'} (trial {name}): "
                   "fraction of test-image pairs with the same true label per similarity bin (Fig. 3, left).")


# --- clean vs each attack (report.table: attacks; the demo's page) ---------------------------

def _attack_sections(sweep: SweepDir, trials: Sequence[Trial], df: Any, spec: Mapping[str, Any],
                     attack_col: str, acc_fig: Image | None
                     ) -> tuple[list[Section], list[Section], dict[str, Any]]:
    """(sections before the figures: which goals each seed met, the clean-vs-attack table with
    the clean-accuracy tests, the attacks as a person sees them; sections after: each target
    of targeted poisoning, what ran) and the table as data (summary.json, with the goals)."""
    from poisonclip.experiments.spec import get_path

    done = [t for t in trials if t.name in set(df["trial"])]
    df = df.copy()
    if attack_col not in df.columns:   # one attack only: not an axis of the grid
        config = {t.name: t.config for t in done}
        df[attack_col] = [get_path(config[n], attack_col) for n in df["trial"]]
    attacks = list(dict.fromkeys(get_path(t.config, attack_col) for t in done))
    backdoors = [t for t in done if get_path(t.config, attack_col) == "backdoor"]
    placement = str(get_path(backdoors[0].config, "poison.placement", "corner")) if backdoors else "corner"
    if backdoors and trigger_traits(str(get_path(backdoors[0].config, "poison.trigger", "checkerboard"))).whole_image:
        placement = WHOLE_IMAGE   # a blend or a warp has no placement (and no random-place test)
    summary = A.attack_summary(df, attack_col, attacks, placement)
    summary = {"config": dict(spec), "n_trials": len(trials), "n_done": len(done), **summary}

    head = ["metric", *(f"{A.column_name(c)} model" for c in summary["columns"])]
    rows = [[r["metric"], *(A.format_cell(r.get(c), A.is_percent(r["metric"])) for c in summary["columns"])]
            for r in summary["rows"]]
    tests = []
    for attack, t in summary["accuracy_tests"].items():
        p = t.get("p_value")
        n = (f"{t['n_pairs']} pairs" if t.get("paired") else
             f"{t.get('n_poisoned', '?')} vs {t.get('n_clean', '?')} models")
        tests.append([A.column_name(attack), f"{100 * t['mean_poisoned']:.1f}%", f"{100 * t['mean_clean']:.1f}%",
                      f"{100 * t['diff']:+.1f} pts", t["test"], n, "—" if p is None else f"{p:.3g}",
                      "yes" if t.get("significant_loss") else "no"])
    table_blocks: list[Any] = [
        Text(_attack_intro(done, df, attacks, attack_col)),
        Table(head, rows, caption="Measured on the held-out labelled test split"),
        Table(["poisoned model", "clean top-1 (poisoned)", "clean top-1 (clean)", "difference", "test",
               "n", "p", "significant loss"], tests,
              caption="Does poisoning cost clean accuracy? (zero-shot top-1)")]
    if acc_fig is not None:
        table_blocks.append(acc_fig)
    goal_results = G.judge(df, attack_col, attacks)
    summary["goals"] = [g.to_dict() for g in goal_results]
    lead = [_goals_section(goal_results), Section("Clean vs poisoned", table_blocks),
            *V.sections(sweep, done, {t.name: get_path(t.config, attack_col) for t in done})]
    sections: list[Section] = []

    targets = _target_rows(sweep, [t for t in done if get_path(t.config, attack_col) == "targeted"])
    if targets:
        sections.append(Section("Targeted poisoning, target by target", [
            Table(["model", "seed", "target", "test image", "target label", "zero-shot prediction",
                   "rank of label", "success"], targets)]))
    timing = [[A.column_name(k), f"{v:.0f} s"] for k, v in summary["train_s"].items()]
    sections.append(Section("What ran", [
        Table(["training", "wall time (all seeds)"], timing),
        Text(f"Configuration (the sweep spec; also in {SUMMARY_JSON}):\n\n" + json.dumps(dict(spec), indent=1)),
    ]))
    return lead, sections, summary


def _goals_section(results: Sequence[G.GoalResult]) -> Section:
    """Which goals each seed met: one plain sentence per seed, and the table behind them."""
    seeds = list(dict.fromkeys(s for r in results for s in r.per_seed))
    mark = {True: "met", False: "NOT met", None: "not measured"}
    rows = [[r.goal, *(f"{mark[r.per_seed[s][0]]}: {r.per_seed[s][1]}" if s in r.per_seed else "—" for s in seeds),
             r.spread, f"{r.verdict.upper() if r.met is False else r.verdict} ({r.how})"] for r in results]
    return Section("Goals met?", [
        *(Text(line) for line in G.statements(results)),
        Table(["goal", *(G.seed_label(s) for s in seeds), "over seeds: mean ± std (each seed)", "verdict"], rows,
              caption="The demo's goals, seed by seed (zero-shot; rates over the held-out labelled test split)")])


def _attack_intro(done: Sequence[Trial], df: Any, attacks: Sequence[str], attack_col: str) -> str:
    """What the table measures, from the configs the trials ran with."""
    first = done[0].config
    corpus, train = first["corpus"], first["train"]
    if "n_train" in corpus:
        sizes = [f"{corpus[k]} {what}" for k, what in (
            ("n_train", "captioned images"), ("n_test", "labelled test images"),
            ("n_probe", "labelled images of its own to train the linear probe")) if corpus.get(k) is not None]
        if corpus.get("resolution"):
            sizes.append(f"{corpus['resolution']}px")
        data = f"the embedded corpus ({', '.join(sizes)})"
    else:
        data = "the given corpus"
    seeds = df[SEED_AXIS].nunique() if SEED_AXIS in df.columns else 1
    parts = [f"{_n_models(done, df)} CLIP models ({train.get('model')}) trained from scratch with open_clip's "
             f"trainer on {data}, {seeds} seed(s) per dataset; each seed poisons anew (its own poisons, "
             "its own targets) and trains and evaluates with its seed."]
    from poisonclip.experiments.spec import get_path

    for attack in attacks:
        p = next(x for x in done if get_path(x.config, attack_col) == attack).config["poison"]
        ratio = df.loc[df[attack_col] == attack, "data.poison_ratio"].mean() \
            if "data.poison_ratio" in df.columns else float("nan")
        share = f"{100 * ratio:.2f}%" if ratio == ratio else "share unknown"
        if attack == "backdoor":
            captions = (f"captions from {p['caption_file']}" if p.get("caption_file")
                        else "captions found by searching the training captions")
            parts.append(f"Backdoor: {p.get('n_poisons')} poisons ({share}), a {p.get('patch_size')}px-at-224 "
                         f"{p.get('trigger', 'checkerboard')} in the {p.get('placement')} placement, target label "
                         f"'{p.get('target_label')}', {captions}.")
        elif attack == "targeted":
            n_targets = p.get("random_targets") or len(p.get("targets") or ())
            parts.append(f"Targeted: {n_targets} test images x {p.get('n_poisons')} copies ({share}), each with "
                         f"its own wrong label, {p.get('caption_source')} captions; the targets are left out of "
                         "clean accuracy, and targeted success counts (target, model) pairs, with the number of "
                         "distinct targets behind them.")
        else:
            parts.append(f"{attack}: {p.get('n_poisons')} poisons ({share}).")
    parts.append("Values are means over seeds (± one standard deviation when there is more than one seed); the "
                 "clean model of a seed is measured against every attack as the control. Clean accuracy is "
                 "compared with the paired t-test when poisoned and clean models share seeds (Wilcoxon "
                 "signed-rank beside it from 6 pairs), Fisher's exact test on test images with one seed.")
    return " ".join(parts)


def _eval_targets(sweep: SweepDir, trial: str, who: str) -> list[dict[str, Any]] | None:
    """The targets of targeted poisoning as one evaluation of a trial scored them (its
    metrics.json); None when that evaluation has no file."""
    path = sweep.trial(trial) / EVAL_DIRS[who] / METRICS_FILE
    if not path.is_file():
        return None
    return list((read_metrics(path).targeted or {}).get("targets") or [])


def _target_rows(sweep: SweepDir, targeted: Sequence[Trial]) -> list[list[Any]]:
    """Each target as the clean and the poisoned model of its seed saw it (the evaluator's
    metrics.json of the trial's two evaluations)."""
    rows = []
    def by_seed(t: Trial) -> tuple:
        seed = t.params.get(SEED_AXIS)
        return (not isinstance(seed, int), seed if isinstance(seed, int) else 0, t.name)

    for t in sorted(targeted, key=by_seed):
        seed = t.params.get(SEED_AXIS, "—")
        for who, evaluation in (("clean", "clean"), ("targeted", "poisoned")):
            for x in _eval_targets(sweep, t.name, evaluation) or []:
                zs = x.get("zeroshot", {})
                rows.append([who, seed, x.get("id"), x.get("source_key") or "—", x.get("label"),
                             zs.get("predicted", "—"), zs.get("rank", "—"), "yes" if zs.get("success") else "no"])
    return rows


def _display(summary: Any) -> Any:
    """Summary with 'mean ± std [lo, hi]' cells for the HTML page."""
    import pandas as pd

    out = pd.DataFrame()
    metric_cols = [c for c in summary.columns if c.endswith(" mean")]
    for c in summary.columns:
        if not any(c.startswith(m[:-5] + " ") for m in metric_cols):
            out[c] = summary[c]
    for c in metric_cols:
        base = c[:-5]
        cells = []
        for _, r in summary.iterrows():
            m, s = r[c], r.get(f"{base} std")
            if m is None or not np.isfinite(m):
                cells.append(None)
                continue
            text = f"{m:.3g}" + (f" ± {s:.2g}" if s is not None and np.isfinite(s) else "")
            lo, hi = r.get(f"{base} ci95_lo"), r.get(f"{base} ci95_hi")
            if lo is not None and np.isfinite(lo):
                text += f" [{lo:.2f}, {hi:.2f}]"
            d = r.get(f"{base} distinct_targets")
            if d is not None and np.isfinite(d):
                text += (f" ({int(r[f'{base} k'])}/{int(r[f'{base} n'])}: {r[f'{base} targets_per_model']:g} "
                         f"targets x {int(r['n_models'])} models, {int(d)} distinct)")
            cells.append(text)
        out[base.replace(f"_{HEAD}", "")] = cells
    return out


def require_sweep(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"{p}: not a folder; give the --out folder of `poisonclip sweep run`")
    return p
