"""The results table's views over seeds: the sweep's per-setting table, the demo's
clean-vs-attack table, the clean-accuracy test per setting, and how a cell is printed.

They read the results table (one row per trial, flat metric columns ``poisoned.*`` and
``clean.*``, see docs/sweeps.md), group its rows, and hand each group's per-model values to
``evaluate.aggregate``, where every number over seeds is made (eval-compare's too). The
poisoned model and the clean model of a trial share its seed, so they pair up. Rows are
taken in seed order, so the same models give the same floats whichever way the table was
read.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from poisonclip.evaluate import aggregate as agg
from poisonclip.evaluate.stats import Rate
from poisonclip.experiments.spec import SEED_AXIS as SEED

HEAD = "zeroshot"
RATE_METRICS = [f"top1_{HEAD}", f"asr_as_trained_{HEAD}", f"asr_random_{HEAD}",
                f"asr_corner_{HEAD}", f"targeted_success_{HEAD}", "top1_probe", "asr_as_trained_probe",
                "targeted_success_probe",
                "retrieval_i2t_r1", "retrieval_t2i_r1", "retrieval_i2t_r10", "retrieval_t2i_r10",
                "retrieval_i2t_target_as_trained_r10", "text_backdoor_t2i_target_with_token_r10",
                "text_backdoor_t2i_target_without_token_r10"]
VALUE_METRICS = ["z_as_trained", "z_random", "z_corner"]
# What a defense removed (a sweep's defended models: defend.sweep), per poisoned model.
DEFENSE_METRICS = ["model.poisons_removed", "model.clean_removed"]
TARGETS = "targeted_targets"
PARAM_COUNTS = ("model.vision_params", "model.n_params")   # image tower, whole model   # a model's targets, ';'-joined (evaluate.targeted.target_ids)


def _in_seed_order(df: Any) -> Any:
    return df.sort_values(SEED, kind="mergesort") if SEED in df.columns else df


def column_cell(df: Any, col: str) -> dict[str, Any] | None:
    """The cell (``evaluate.aggregate.Cell.to_dict``) of one flat metric column over the rows
    of ``df``, with its ``_k``/``_n`` counts and, for targeted success, the targets column of
    the same model."""
    if col not in df.columns:
        return None
    df = _in_seed_order(df)
    counts = list(zip(df[f"{col}_k"], df[f"{col}_n"])) if f"{col}_k" in df.columns else None
    who = col.split(".", 1)[0]
    ids = f"{who}.{TARGETS}"
    targets = df[ids].tolist() if ".targeted_success" in col and ids in df.columns else None
    cell = agg.over_seeds(df[col].tolist(), counts, targets)
    return cell.to_dict() if cell is not None else None


def accuracy_test(df: Any, head: str = HEAD, alpha: float = 0.05) -> dict[str, Any] | None:
    """Clean accuracy of the poisoned models of ``df`` against the clean models of their
    trials (``evaluate.aggregate.accuracy_test``): each row holds a poisoned model and the
    clean model of its seed, a pair when the rows are distinct seeds."""
    p_col, c_col = f"poisoned.top1_{head}", f"clean.top1_{head}"
    if p_col not in df.columns or c_col not in df.columns:
        return None
    sub = _in_seed_order(df.dropna(subset=[p_col, c_col]))
    if sub.empty:
        return None
    counts = {}
    for who, col in (("poisoned", p_col), ("clean", c_col)):
        if f"{col}_k" in sub.columns and sub[f"{col}_k"].notna().all():
            counts[who] = [Rate(int(k), int(n)) for k, n in zip(sub[f"{col}_k"], sub[f"{col}_n"])]
    seeds = sub[SEED].tolist() if SEED in sub.columns else None
    return agg.accuracy_test(sub[p_col].tolist(), sub[c_col].tolist(), alpha, counts.get("poisoned"),
                             counts.get("clean"), seeds, seeds).to_dict()


def _groups(df: Any, varying: Sequence[str]) -> Iterable[tuple[tuple[Any, ...], Any]]:
    if not varying:
        return [((), df)]
    return ((k if isinstance(k, tuple) else (k,), sub)
            for k, sub in df.groupby(list(varying), sort=True, dropna=False))


def summary_table(df: Any, varying: Sequence[str]) -> Any:
    """The sweep's table: one row per setting (the varying non-seed parameters), n models,
    what a defense removed (``model.poisons_removed``, ``model.clean_removed``: mean, std),
    and for poisoned and clean models each metric's cell as columns ``<col> mean``, ``std``,
    ``ci95_lo``/``ci95_hi``, ``k``/``n`` and, for targeted success, ``targets_per_model`` and
    ``distinct_targets``."""
    import pandas as pd

    rows = []
    for key, sub in _groups(df, varying):
        row: dict[str, Any] = dict(zip(varying, key))
        row["n_models"] = len(sub)
        for col in PARAM_COUNTS:   # the model's size (one architecture per setting): Fig. 5 right's x
            if col in sub.columns and sub[col].notna().any():
                row[col] = int(sub[col].dropna().iloc[0])
        for who in ("poisoned", "clean"):
            for m in RATE_METRICS + VALUE_METRICS:
                col = f"{who}.{m}"
                cell = column_cell(sub, col)
                if cell is None:
                    continue
                row[f"{col} mean"], row[f"{col} std"] = cell["mean"], cell["std"]
                if "k" in cell:
                    row[f"{col} ci95_lo"], row[f"{col} ci95_hi"] = cell["ci95"]
                    row[f"{col} k"], row[f"{col} n"] = cell["k"], cell["n"]
                if "n_distinct_targets" in cell:
                    row[f"{col} targets_per_model"] = cell["n_targets_per_model"]
                    row[f"{col} distinct_targets"] = cell["n_distinct_targets"]
        for col in DEFENSE_METRICS:
            cell = column_cell(sub, col) if col in sub.columns and sub[col].notna().any() else None
            if cell is not None:
                row[f"{col} mean"], row[f"{col} std"] = cell["mean"], cell["std"]
        rows.append(row)
    return pd.DataFrame(rows)


def accuracy_tests(df: Any, varying: Sequence[str]) -> tuple[Any, list[tuple[str, list[float], list[float]]]]:
    """Per setting: poisoned models' clean accuracy against their seeds' clean models; (the
    table, (label, poisoned values, clean values) per setting for the figure)."""
    import pandas as pd

    p_col, c_col = f"poisoned.top1_{HEAD}", f"clean.top1_{HEAD}"
    if c_col not in df.columns or not df[c_col].notna().any():
        return None, []
    rows, groups = [], []
    for key, sub in _groups(df, varying):
        cmp = accuracy_test(sub)
        if cmp is None:
            continue
        sub = _in_seed_order(sub.dropna(subset=[p_col, c_col]))
        label = ", ".join(f"{c.rsplit('.', 1)[-1]}={v}" for c, v in zip(varying, key)) or "all trials"
        groups.append((label, sub[p_col].tolist(), sub[c_col].tolist()))
        ci = cmp["diff_ci95"] or [None, None]
        rows.append({**dict(zip(varying, key)), "n_models": len(sub), "poisoned": cmp["mean_poisoned"],
                     "clean": cmp["mean_clean"], "diff": cmp["diff"], "diff_ci95_lo": ci[0],
                     "diff_ci95_hi": ci[1], "test": cmp["test"], "n_pairs": cmp["n_pairs"],
                     "p_value": cmp["p_value"], "wilcoxon_p": cmp["wilcoxon_p"],
                     "significant_loss": cmp["significant_loss"]})
    return pd.DataFrame(rows), groups


# --- clean vs each attack (the demo's table) ---------------------------------------------

# (row label, the attack whose evaluations it reads (None: every model's own), flat metric);
# "{placement}" is the backdoor's train-time placement.
ATTACK_ROWS: tuple[tuple[str, str | None, str], ...] = (
    ("clean zero-shot top-1", None, "top1_zeroshot"),
    ("clean linear-probe top-1", None, "top1_probe"),
    ("clean image-to-text recall@1", None, "retrieval_i2t_r1"),
    ("clean text-to-image recall@1", None, "retrieval_t2i_r1"),
    ("clean image-to-text recall@10", None, "retrieval_i2t_r10"),
    ("clean text-to-image recall@10", None, "retrieval_t2i_r10"),
    ("backdoor ASR, {placement} patch (zero-shot)", "backdoor", "asr_as_trained_zeroshot"),
    ("backdoor ASR, random place (zero-shot)", "backdoor", "asr_random_zeroshot"),
    ("backdoor ASR, {placement} patch (probe)", "backdoor", "asr_as_trained_probe"),
    ("backdoor z-score, {placement} patch", "backdoor", "z_as_trained"),
    ("triggered images retrieving a target caption in the top 10", "backdoor", "retrieval_i2t_target_as_trained_r10"),
    ("backdoor z-score, random place", "backdoor", "z_random"),
    ("targets classified as their label (zero-shot)", "targeted", "targeted_success_zeroshot"),
    ("targets classified as their label (probe)", "targeted", "targeted_success_probe"),
    ("mean rank of the target label (zero-shot)", "targeted", "targeted_rank_zeroshot"),
    ("token queries retrieving a target image in the top 1", "text-backdoor", "text_backdoor_t2i_target_with_token_r1"),
    ("token queries retrieving a target image in the top 10", "text-backdoor",
     "text_backdoor_t2i_target_with_token_r10"),
    ("plain queries retrieving a target image in the top 10", "text-backdoor",
     "text_backdoor_t2i_target_without_token_r10"),
)
CLEAN = "clean"
# How the table heads each column: the clean model, then each attack's poisoned model.
COLUMN_NAMES = {CLEAN: "clean", "backdoor": "backdoored", "targeted": "targeted-poisoned",
                "text-backdoor": "text-backdoored"}


def column_name(column: str) -> str:
    return COLUMN_NAMES.get(column, f"{column}-poisoned")


def attack_summary(df: Any, attack_col: str, attacks: Sequence[str], placement: str = "corner",
                   rows: Sequence[tuple[str, str | None, str]] = ATTACK_ROWS) -> dict[str, Any]:
    """Rows of metrics, columns ``clean`` and each attack (in ``attacks`` order): a cell per
    (row, model kind) over seeds. The clean model of a seed is measured in every attack's
    trials; a row of one attack reads it from that attack's trials, a row of every model
    (clean accuracy) from the first attack's. Also the clean-accuracy test per attack and the
    training time per model kind."""
    by_attack = {a: df[df[attack_col] == a] for a in attacks}
    out_rows = []
    for label, attack, metric in rows:
        if attack is not None and attack not in by_attack:
            continue
        row: dict[str, Any] = {"metric": label.format(placement=placement)}
        source = attack or (attacks[0] if attacks else None)
        if source is not None and (cell := column_cell(by_attack[source], f"clean.{metric}")) is not None:
            row[CLEAN] = cell
        for a in attacks:
            if attack in (None, a) and (cell := column_cell(by_attack[a], f"poisoned.{metric}")) is not None:
                row[a] = cell
        out_rows.append(row)
    tests = {a: t for a in attacks if (t := accuracy_test(by_attack[a])) is not None}
    train_s: dict[str, float] = {}
    if attacks and "clean_model.wall_time_s" in df.columns:   # one clean model per seed, in every attack's trials
        train_s[CLEAN] = float(by_attack[attacks[0]]["clean_model.wall_time_s"].fillna(0).sum())
    for a in attacks:
        if "model.wall_time_s" in df.columns:
            train_s[a] = float(by_attack[a]["model.wall_time_s"].fillna(0).sum())
    return {"columns": [CLEAN, *attacks], "rows": out_rows, "accuracy_tests": tests, "train_s": train_s}


def is_percent(row_label: str) -> bool:
    return "z-score" not in row_label and "rank" not in row_label


def format_cell(cell: Mapping[str, Any] | None, percent: bool) -> str:
    """``mean ± std`` (percent for rates), with k/n for one model's small rates and, for
    targeted success, the (target, model) pairs and the distinct targets behind them."""
    if not cell:
        return "—"
    mean, std = cell["mean"], cell["std"]
    scale, unit = (100.0, "%") if percent else (1.0, "")
    text = f"{mean * scale:.1f}{unit}" if percent else f"{mean:.2f}"
    if cell["n_models"] > 1 and std is not None and std == std:
        text += f" ± {std * scale:.1f}" if percent else f" ± {std:.2f}"
    if "n_distinct_targets" in cell:
        # (target, model) pairs are not independent draws when targets repeat across models
        text += (f" ({cell['k']}/{cell['n']}: {cell['n_targets_per_model']:g} targets x {cell['n_models']} "
                 f"model{'s' if cell['n_models'] > 1 else ''}, {cell['n_distinct_targets']} distinct)")
    elif "k" in cell and cell["n_models"] == 1 and cell["n"] <= 20:
        text += f" ({cell['k']}/{cell['n']})"
    return text
