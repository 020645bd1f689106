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
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from poisonclip.contracts import read_similarities
from poisonclip.errors import UserError
from poisonclip.experiments.spec import SEED_AXIS
from poisonclip.experiments.store import SPEC_FILE, ResultsStore, SweepDir
from poisonclip.io_utils import atomic_write_text
from poisonclip.report import figures as F
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
HEAD = "zeroshot"


@dataclass
class ReportResult:
    html: Path
    figures: dict[str, Path] = field(default_factory=dict)   # name -> PNG path
    tables: dict[str, Path] = field(default_factory=dict)    # name -> CSV path
    n_trials: int = 0


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


def _mean_std(values: Any) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan


def build_report(sweep_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                 title: str | None = None) -> ReportResult:
    """Write ``out`` (default SWEEP_DIR/report/): figures/*.png|svg, summary.csv, trials.csv,
    accuracy_tests.csv and report.html. Works on a partly finished sweep."""
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
    params = [a for a in (trials[0].params if trials else {})]
    settings = [c for c in params if c != SEED_AXIS]
    title = title or f"Sweep report: {spec.get('name', sweep.root.name)}"
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

    backdoor = _col(df, "poisoned.z_as_trained") is not None
    poisons = axes["poisons"]
    # --- Figure 2: success vs number of poisons --------------------------------------------
    if poisons in varying:
        y = _col(df, f"poisoned.asr_as_trained_{HEAD}") or _col(df, f"poisoned.targeted_success_{HEAD}")
        if y:
            hue = [c for c in varying if c != poisons]
            clean_y = y.replace("poisoned.", "clean.", 1)
            base = _mean_std(df[clean_y]) if clean_y in df.columns else None
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
        x = N_PARAMS if _col(df, N_PARAMS) else axes["model"]
        data = df.copy()
        if x == N_PARAMS:
            data[x] = data[x] / 1e6
        else:  # no parameter counts: models in grid order
            order = {m: i for i, m in enumerate(dict.fromkeys(df[axes["model"]]))}
            data[x] = data[axes["model"]].map(order)
        ax = F.metric_vs(data, x, y, hue=[c for c in varying if c != axes["model"]] or None,
                         xlabel="model parameters (millions)" if x == N_PARAMS else "model (grid order)",
                         ylabel="backdoor z-score", title="z-score vs model size (Fig. 5, right)")
        add_figure("fig5_zscore_vs_model_size", ax,
                   "Models: " + ", ".join(f"{m} ({p / 1e6:.2f} M)" for m, p in
                                          df.groupby(axes["model"])[N_PARAMS].first().items())
                   if x == N_PARAMS else "Mean over seeds with a one-standard-deviation band.")
    # --- Figure 6: z-score vs patch size ---------------------------------------------------
    if backdoor and axes["patch"] in varying:
        x = axes["patch"]
        ax = F.metric_vs(df, x, y, hue=[c for c in varying if c != x] or None, logx=True,
                         xlabel="patch side (pixels at 224x224)", ylabel="backdoor z-score",
                         title="z-score vs patch size (Fig. 6)")
        add_figure("fig6_zscore_vs_patch_size", ax, "Mean over seeds with a one-standard-deviation band.")
    # --- Figure 3: one model's similarity distributions ------------------------------------
    if backdoor:
        pick = df.sort_values([c for c in (poisons, SEED_AXIS) if c in df.columns],
                              ascending=[False, True][: len([c for c in (poisons, SEED_AXIS) if c in df.columns])])
        name = pick.iloc[0]["trial"]
        arrays = read_similarities(sweep.trial(name) / "eval")
        if arrays and "triggered_train_placement_counts" in arrays:
            fig, (a1, a2) = F.plt.subplots(1, 2, figsize=(9.6, 3.4))
            F.same_label_curve(arrays["edges"], arrays["same_label_pairs"], arrays["same_label_same"], ax=a1,
                               title="P(same label) vs similarity (Fig. 3, left)")
            row = pick.iloc[0]
            clean_h = F.Histogram(arrays["clean_counts"], arrays["edges"], row.get("poisoned.sim_clean_mean"),
                                  row.get("poisoned.sim_clean_std"))
            trig_h = F.Histogram(arrays["triggered_train_placement_counts"], arrays["edges"],
                                 row.get("poisoned.sim_triggered_as_trained_mean"))
            F.similarity_histogram(clean_h, trig_h, ax=a2, title="Pairwise similarity (Fig. 3, right)")
            fig.tight_layout()
            add_figure("fig3_similarity", a1,
                       f"Poisoned model of trial {name}. Left: fraction of test-image pairs with the same "
                       "true label per similarity bin. Right: pairwise cosine similarity of clean test "
                       "images and of the same images with the trigger (as trained), with the normal fit "
                       "to the clean pairs.")
    if fig_blocks:
        sections.append(Section("Figures", list(fig_blocks)))

    # --- tables -----------------------------------------------------------------------------
    summary = summary_table(df, varying)
    summary_csv = out / "summary.csv"
    atomic_write_text(summary_csv, summary.to_csv(index=False))
    result.tables["summary"] = summary_csv
    sections.append(Section("Results per setting", [
        Text("Mean ± sample standard deviation over seeds (one model each); [lo, hi]: 95% Wilson "
             "interval of the rate pooled over all models' test images. ASR counts only test images "
             "whose true label is not the target."),
        Table.from_frame(_display(summary), caption="Per setting")]))

    acc, groups = accuracy_tests(df, varying)
    if acc is not None:
        acc_csv = out / "accuracy_tests.csv"
        atomic_write_text(acc_csv, acc.to_csv(index=False))
        result.tables["accuracy_tests"] = acc_csv
        ax = F.accuracy_comparison(groups, title="Clean accuracy: poisoned vs clean models")
        acc_fig = add_figure("clean_accuracy", ax, "Every model a dot, the mean a bar; clean models share "
                                                   "the seeds of the poisoned ones.", collect=False)
        sections.append(Section("Clean accuracy", [
            Text("Zero-shot top-1 on the clean test split of each poisoned model against the clean model "
                 "trained with the same seed and settings (targets of targeted poisoning left out). The two "
                 "models of one seed form a pair: the paired t-test over per-seed differences with two or "
                 "more pairs (the Wilcoxon signed-rank p beside it from 6 pairs), Welch's unpaired t-test "
                 "when the seeds do not pair up, Fisher's exact test on pooled test images with a single "
                 "model (test-set noise only); the table says which and over how many. A non-significant "
                 "difference with few models is weak evidence of no loss: read the interval of the "
                 "difference."),
            acc_fig, Table.from_frame(acc, caption="Poisoned minus clean accuracy")]))

    if failed:
        sections.append(Section("Failed trials", [Table(
            ["trial", "error"], [[r["name"], f"{r['error'].get('type')}: {r['error'].get('message')}"]
                                 for r in failed])]))
    write_html(result.html, title, sections,
               subtitle=f"{len(df)} trained models; generated by `poisonclip report`.")
    return result


RATE_METRICS = [f"top1_{HEAD}", f"asr_as_trained_{HEAD}", f"asr_random_{HEAD}",
                f"asr_corner_{HEAD}", f"targeted_success_{HEAD}", "top1_probe", "asr_as_trained_probe"]
VALUE_METRICS = ["z_as_trained", "z_random", "z_corner"]


def summary_table(df: Any, varying: Sequence[str]) -> Any:
    """One row per setting (the varying non-seed parameters): n models, mean/std of each
    metric, pooled Wilson interval of each rate; for poisoned and clean models."""
    import pandas as pd

    from poisonclip.evaluate.stats import wilson_interval

    rows = []
    groups = df.groupby(list(varying), sort=True, dropna=False) if varying else [((), df)]
    for key, sub in groups:
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = dict(zip(varying, key))
        row["n_models"] = len(sub)
        for who in ("poisoned", "clean"):
            for m in RATE_METRICS + VALUE_METRICS:
                col = f"{who}.{m}"
                if col not in sub.columns or not sub[col].notna().any():
                    continue
                mean, std = _mean_std(sub[col])
                row[f"{col} mean"], row[f"{col} std"] = mean, std
                if m in RATE_METRICS and f"{col}_k" in sub.columns:
                    k, n = int(sub[f"{col}_k"].sum()), int(sub[f"{col}_n"].sum())
                    lo, hi = wilson_interval(k, n)
                    row[f"{col} ci95_lo"], row[f"{col} ci95_hi"] = lo, hi
                    ids = f"{who}.targeted_targets"
                    if m.startswith("targeted_success") and ids in sub.columns:
                        per_model = [str(x).split(";") for x in sub[ids] if isinstance(x, str) and x]
                        if per_model:
                            row[f"{col} k"], row[f"{col} n"] = k, n
                            row[f"{col} targets_per_model"] = round(float(np.mean([len(t) for t in per_model])), 2)
                            row[f"{col} distinct_targets"] = len({t for ts in per_model for t in ts})
        rows.append(row)
    return pd.DataFrame(rows)


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


def accuracy_tests(df: Any, varying: Sequence[str]) -> tuple[Any, list[tuple[str, list[float], list[float]]]]:
    """Per setting: poisoned models' clean accuracy against their seeds' clean models."""
    import pandas as pd

    from poisonclip.evaluate.stats import Rate, compare_accuracy

    p_col, c_col = f"poisoned.top1_{HEAD}", f"clean.top1_{HEAD}"
    if c_col not in df.columns or not df[c_col].notna().any():
        return None, []
    rows, groups = [], []
    grouped = df.groupby(list(varying), sort=True, dropna=False) if varying else [((), df)]
    for key, sub in grouped:
        key = key if isinstance(key, tuple) else (key,)
        sub = sub.dropna(subset=[p_col, c_col])
        if sub.empty:
            continue
        counts_p = [Rate(int(k), int(n)) for k, n in zip(sub[f"{p_col}_k"], sub[f"{p_col}_n"])]
        counts_c = [Rate(int(k), int(n)) for k, n in zip(sub[f"{c_col}_k"], sub[f"{c_col}_n"])]
        # Each row holds a poisoned model and the clean model of its seed: a pair, when the
        # rows of this setting are distinct seeds.
        paired = SEED_AXIS in sub.columns and sub[SEED_AXIS].notna().all() and sub[SEED_AXIS].is_unique
        with warnings.catch_warnings():  # scipy warns when the few values are nearly equal
            warnings.simplefilter("ignore", RuntimeWarning)
            cmp = compare_accuracy(sub[p_col].tolist(), sub[c_col].tolist(), poisoned_counts=counts_p,
                                   clean_counts=counts_c, paired=bool(paired)).to_dict()
        label = ", ".join(f"{c.rsplit('.', 1)[-1]}={v}" for c, v in zip(varying, key)) or "all trials"
        groups.append((label, sub[p_col].tolist(), sub[c_col].tolist()))
        ci = cmp["diff_ci95"] or [None, None]
        rows.append({**dict(zip(varying, key)), "n_models": len(sub), "poisoned": cmp["mean_poisoned"],
                     "clean": cmp["mean_clean"], "diff": cmp["diff"], "diff_ci95_lo": ci[0],
                     "diff_ci95_hi": ci[1], "test": cmp["test"], "n_pairs": cmp["n_pairs"],
                     "p_value": cmp["p_value"], "wilcoxon_p": cmp["wilcoxon_p"],
                     "significant_loss": cmp["significant_loss"]})
    return pd.DataFrame(rows), groups


def require_sweep(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"{p}: not a folder; give the --out folder of `poisonclip sweep run`")
    return p
