"""The paper's clean-accuracy claim over every trained model of several sweeps.

"None of the models we poison or backdoor have statistically significantly lower zero-shot
test accuracy" (section 4.1) is a claim about all models, so it is tested over all of them:
every distinct poisoned model of the given sweep folders (a model shared by two sweeps
through their common cache counts once) against the clean model trained with the same seed
and settings, both scored on the same test images (the targets of targeted poisoning left
out of both).

The pairs are not all independent: one clean model is the control of every poisoned model
of its seed and settings (in the paper's figures, of up to 20). So the unit of the pooled
test is the clean model: the mean difference of its poisoned models is one observation, and
the paired t-test (with the Wilcoxon signed-rank test beside it) runs over those. Rows per
sweep and per attack use the same unit; rows per setting pair the seeds of that setting
(``evaluate.aggregate.accuracy_test``), as each sweep's own report does.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence


from poisonclip.errors import UserError
from poisonclip.evaluate import aggregate as agg
from poisonclip.experiments.spec import SEED_AXIS, read_spec_name
from poisonclip.experiments.store import SPEC_FILE, ResultsStore, SweepDir
from poisonclip.io_utils import OutputKind, atomic_dir, atomic_write_json, atomic_write_text
from poisonclip.report import figures as F
from poisonclip.report import tables as A
from poisonclip.report.html import Image, Section, Table, Text, write_html

P_COL, C_COL = f"poisoned.top1_{A.HEAD}", f"clean.top1_{A.HEAD}"
POOLED_INFO_FILE = "pooled.json"
# What ``--out`` may replace: an empty folder or an earlier pooled report (its pooled.json).
POOLED_KIND = OutputKind("pooled clean-accuracy report (`poisonclip report --pool`)",
                         ((POOLED_INFO_FILE, ("sweeps", "n_pairs")),))


@dataclass
class PooledResult:
    html: Path
    tables: dict[str, Path] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)
    n_pairs: int = 0


def collect_pairs(folders: Sequence[str | os.PathLike]) -> Any:
    """One row per distinct poisoned model with a clean model of its seed: sweep, trial,
    setting, seed, attack, both model keys and both accuracies."""
    import pandas as pd

    rows, seen = [], set()
    for folder in folders:
        sweep = SweepDir(Path(folder).resolve())
        if not (sweep.root / SPEC_FILE).is_file():
            raise UserError(f"{folder}: not a sweep folder (no {SPEC_FILE}); give --out folders of `poisonclip sweep run`")
        name = read_spec_name(sweep.root / SPEC_FILE) or sweep.root.name
        trials = {t.name: t for t in sweep.load_trials()}
        store = ResultsStore(sweep.db)
        store.sync(sweep, list(trials.values()))
        df = store.frame("done")
        if df.empty or P_COL not in df.columns or C_COL not in df.columns:
            continue
        done = {r["trial"]: r for _, r in df.dropna(subset=[P_COL, C_COL]).iterrows()}
        for t in trials.values():   # the spec's order: settings as its grid lists them
            r = done.get(t.name)
            if r is None or not t.baseline or t.keys.model in seen:
                continue
            seen.add(t.keys.model)
            setting = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in t.params.items() if k != SEED_AXIS)
            rows.append({"sweep": name, "trial": t.name, "setting": setting or "-",
                         "seed": t.params.get(SEED_AXIS), "attack": t.config["poison"].get("attack"),
                         "poisoned_model": t.keys.model, "clean_model": t.keys.clean_model,
                         "poisoned_top1": float(r[P_COL]), "clean_top1": float(r[C_COL]),
                         "diff": float(r[P_COL]) - float(r[C_COL])})
    return pd.DataFrame(rows)


def _over_clean_models(pairs: Any, group: str) -> dict[str, Any]:
    """Paired test with the clean model as the unit (see the module docstring)."""
    from scipy import stats

    # the mean of the pairs' differences: a clean model's accuracy leaves out each trial's own
    # targets (targeted poisoning), so it can differ slightly between its pairs
    per_clean = pairs.groupby("clean_model", sort=True).agg(diff=("diff", "mean"), clean=("clean_top1", "mean"))
    d = per_clean["diff"].to_numpy()
    row: dict[str, Any] = {"group": group, "n_poisoned_models": len(pairs), "n_clean_models": len(per_clean),
                           "poisoned": float(pairs["poisoned_top1"].mean()),
                           "clean": float(per_clean["clean"].mean()), "diff": float(d.mean()),
                           "test": "paired t over clean models", "min_diff": float(pairs["diff"].min())}
    if len(d) >= 2 and d.std() > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            r = stats.ttest_1samp(d, 0.0)
            ci = r.confidence_interval(0.95)
        row.update(diff_ci95_lo=float(ci.low), diff_ci95_hi=float(ci.high), p_value=float(r.pvalue))
        if len(d) >= 6:
            row["wilcoxon_p"] = float(stats.wilcoxon(d).pvalue)
        row["significant_loss"] = bool(r.pvalue < 0.05 and d.mean() < 0)
    else:
        row["test"] = "none (fewer than 2 clean models)"
    return row


def accuracy_table(pairs: Any) -> Any:
    """All models, then per attack, per sweep, and per setting (paired by seed)."""
    import pandas as pd

    rows = [_over_clean_models(pairs, "all poisoned models")]
    for attack, sub in pairs.groupby("attack", sort=True):
        rows.append(_over_clean_models(sub, f"attack: {attack}"))
    for name, sub in pairs.groupby("sweep", sort=False):
        rows.append(_over_clean_models(sub, f"sweep: {name}"))
    for (name, setting), sub in pairs.groupby(["sweep", "setting"], sort=False):
        cmp = agg.accuracy_test(sub["poisoned_top1"].tolist(), sub["clean_top1"].tolist(),
                                  poisoned_seeds=sub["seed"].tolist(), clean_seeds=sub["seed"].tolist()).to_dict()
        ci = cmp["diff_ci95"] or [None, None]
        rows.append({"group": f"{name}: {setting}", "n_poisoned_models": len(sub), "n_clean_models": len(sub),
                     "poisoned": cmp["mean_poisoned"], "clean": cmp["mean_clean"], "diff": cmp["diff"],
                     "diff_ci95_lo": ci[0], "diff_ci95_hi": ci[1], "test": cmp["test"], "p_value": cmp["p_value"],
                     "wilcoxon_p": cmp["wilcoxon_p"], "significant_loss": cmp["significant_loss"],
                     "min_diff": float(sub["diff"].min())})
    return pd.DataFrame(rows)


def build_pooled(folders: Sequence[str | os.PathLike], out: str | os.PathLike) -> PooledResult:
    """Write ``out``: pairs.csv (every pair), clean_accuracy.csv (the tests),
    figures/clean_accuracy_pairs.png|svg, report.html and pooled.json. The folder is built
    aside and renamed into place (``io_utils.atomic_dir``): it replaces only an empty folder or
    an earlier pooled report, never a folder of the user's or one of the sweeps read."""
    final = Path(out).absolute()
    pairs = collect_pairs(folders)
    if pairs.empty:
        raise UserError("no finished poisoned model with a clean model of its seed in "
                        f"{', '.join(map(str, folders))}; run the sweeps with baseline: true (the default)")
    with atomic_dir(final, overwrite=True, kind=POOLED_KIND, inputs=folders) as out:
        _write_pooled(out, pairs, [str(Path(f).resolve()) for f in folders])
    result = PooledResult(final / "report.html", n_pairs=len(pairs))
    result.tables = {name: final / f"{name}.csv" for name in ("pairs", "clean_accuracy")}
    result.figures = {"clean_accuracy_pairs": final / "figures" / "clean_accuracy_pairs.png"}
    return result


def _write_pooled(out: Path, pairs: Any, sweeps: list[str]) -> None:
    (out / "figures").mkdir(parents=True, exist_ok=True)
    table = accuracy_table(pairs)
    for name, frame in (("pairs", pairs), ("clean_accuracy", table)):
        atomic_write_text(out / f"{name}.csv", frame.to_csv(index=False))

    fig, ax = F.plt.subplots(figsize=(4.6, 4.2))
    for i, (name, sub) in enumerate(pairs.groupby("sweep", sort=False)):
        ax.scatter(sub["clean_top1"], sub["poisoned_top1"], s=14, color=F.PALETTE[i % len(F.PALETTE)], label=name)
    lo = float(min(pairs["clean_top1"].min(), pairs["poisoned_top1"].min())) - 0.02
    hi = float(max(pairs["clean_top1"].max(), pairs["poisoned_top1"].max())) + 0.02
    ax.plot([lo, hi], [lo, hi], color="0.4", linestyle="--", linewidth=1, label="no change")
    ax.set_xlabel("clean model of the same seed: zero-shot top-1")
    ax.set_ylabel("poisoned model: zero-shot top-1")
    ax.set_title("Clean accuracy, every poisoned model")
    ax.legend(fontsize=6)
    png, _ = F.save(fig, out / "figures" / "clean_accuracy_pairs")
    F.close(fig)

    overall = table.iloc[0]
    ci = (overall.get("diff_ci95_lo"), overall.get("diff_ci95_hi"))
    text = (f"{len(pairs)} poisoned models of {pairs['sweep'].nunique()} sweeps, each against the clean model "
            f"trained with its seed and settings ({overall['n_clean_models']} clean models). Mean difference "
            f"{100 * overall['diff']:+.1f} points"
            + (f" (95% interval {100 * ci[0]:+.1f} to {100 * ci[1]:+.1f}; paired t-test over clean models, "
               f"p = {overall['p_value']:.3g})" if ci[0] is not None and ci[0] == ci[0] else "")
            + f"; largest single loss {100 * pairs['diff'].min():.1f} points.")
    write_html(out / "report.html", "Clean accuracy over every trained model", [
        Section("Poisoned vs clean", [Text(text), Text((__doc__ or "").split("\n\n", 1)[1]),
                                      Image(png, caption="Each dot a poisoned model against its seed's clean model.",
                                            alt="clean accuracy pairs"),
                                      Table.from_frame(table, caption="Poisoned minus clean zero-shot top-1")]),
        Section("Every pair", [Table.from_frame(pairs.drop(columns=["poisoned_model", "clean_model"]))])],
        subtitle="generated by `poisonclip report --pool`")
    atomic_write_json(out / POOLED_INFO_FILE, {"sweeps": sweeps, "n_pairs": len(pairs)})   # last: complete
