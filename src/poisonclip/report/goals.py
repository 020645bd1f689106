"""Which of the demo's goals each seed met, said plainly, from the results table.

The goals are the ones the demo is tuned for (issue 14): clean zero-shot top-1 of at least
80%; poisoned models within 2 points of the clean model of their seed (paired); backdoor
ASR of at least 90% on every seed; backdoor z-score of at least 3 on every seed with the clean
models below 0.5; targeted poisoning with at least 4 distinct targets per seed, a majority
classified as their target label by the poisoned model and none by the clean one. Each goal
is judged seed by seed from the same flat columns the clean-vs-attack table reads, and shown
with its spread over seeds (``evaluate.aggregate.over_seeds``, as every number over seeds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from poisonclip.evaluate.aggregate import finite, over_seeds
from poisonclip.experiments.spec import SEED_AXIS as SEED

MET, NOT_MET, UNMEASURED = "met", "not met", "not measured"


@dataclass(frozen=True)
class Goals:
    """The thresholds (rates as fractions)."""

    clean_top1: float = 0.80        # clean models' zero-shot top-1, at least
    max_drop: float = 0.02          # poisoned models' top-1 at most this far below the clean model's
    asr: float = 0.90               # backdoor ASR (trigger as trained, zero-shot), at least, every seed
    z: float = 3.0                  # backdoored models' z-score, at least, every seed
    clean_z: float = 0.5            # clean models' z-score with the same trigger, below
    min_targets: int = 4            # distinct targets per seed
    seeds: int = 3                  # the goals are stated over this many seeds


@dataclass
class GoalResult:
    goal: str                                                   # the goal in words
    per_seed: dict[Any, tuple[bool | None, str]] = field(default_factory=dict)   # seed -> (met, values)
    spread: str = ""                                            # over seeds: mean ± std (and each seed)
    met: bool | None = None                                     # None: no seed measured it
    how: str = "every seed"                                     # how the seeds decide the goal

    @property
    def verdict(self) -> str:
        return UNMEASURED if self.met is None else MET if self.met else NOT_MET

    def to_dict(self) -> dict[str, Any]:
        return {"goal": self.goal, "met": self.met, "verdict": self.verdict, "how": self.how,
                "spread": self.spread,
                "per_seed": {str(s): {"met": m, "values": v} for s, (m, v) in self.per_seed.items()}}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _spread(values: Sequence[Any], fmt: Callable[[float], str], scale: float = 1.0, unit: str = "") -> str:
    """``mean ± std`` over seeds (``aggregate.over_seeds``), then each seed's value."""
    cell = over_seeds(values)
    if cell is None:
        return "—"
    s = cell.values
    text = fmt(s.mean)
    if s.n > 1 and math.isfinite(s.std):
        text += f" ± {s.std * scale:.1f}{unit}" if scale != 1.0 else f" ± {s.std:.2f}"
    return text + f" (seeds: {', '.join(fmt(v) if finite(v) else '—' for v in values)})"


def _overall(per_seed: dict[Any, tuple[bool | None, str]]) -> bool | None:
    """Every seed that measured the goal met it (None: no seed measured it; a seed missing the
    measurement is not a seed that met it)."""
    marks = [m for m, _ in per_seed.values()]
    if all(m is None for m in marks):
        return None
    return all(m is True for m in marks)


def _seeds(df: Any) -> list[Any]:
    if SEED not in df.columns:
        return [None]
    return sorted(df[SEED].dropna().unique().tolist(), key=lambda s: (not isinstance(s, (int, float)), s))


def _rows(df: Any, seed: Any, attack_col: str, attack: str | None) -> Any:
    sub = df if seed is None else df[df[SEED] == seed]
    return sub if attack is None else sub[sub[attack_col] == attack]


def _value(rows: Any, col: str) -> float | None:
    """The first finite value of ``col`` among ``rows`` (the clean model of one seed is the same
    model in every attack's trial)."""
    if col not in rows.columns:
        return None
    for v in rows[col].tolist():
        if finite(v):
            return float(v)
    return None


def judge(df: Any, attack_col: str, attacks: Sequence[str], goals: Goals = Goals()) -> list[GoalResult]:
    """Each goal, seed by seed, from the results table (one row per finished trial, the attack
    of each row in ``attack_col``)."""
    seeds = _seeds(df)
    out: list[GoalResult] = []

    # clean accuracy of the clean models
    g = GoalResult(f"clean zero-shot top-1 of the clean models ≥ {_pct(goals.clean_top1)}")
    vals = []
    for s in seeds:
        v = _value(_rows(df, s, attack_col, None), "clean.top1_zeroshot")
        vals.append(v)
        g.per_seed[s] = (None, "—") if v is None else (v >= goals.clean_top1, _pct(v))
    g.spread, g.met = _spread(vals, _pct, 100.0), _overall(g.per_seed)
    out.append(g)

    # poisoned models within max_drop of the clean model of their seed (paired)
    g = GoalResult(f"poisoned models' clean top-1 within {100 * goals.max_drop:g} points of the clean model of "
                   "their seed", how="the mean paired difference over seeds, per attack")
    diffs: dict[str, list[float | None]] = {a: [] for a in attacks}
    for s in seeds:
        parts, marks = [], []
        for a in attacks:
            rows = _rows(df, s, attack_col, a)
            p, c = _value(rows, "poisoned.top1_zeroshot"), _value(rows, "clean.top1_zeroshot")
            d = None if p is None or c is None else p - c
            diffs[a].append(d)
            if d is not None:
                parts.append(f"{_name(a)} {100 * d:+.1f} pts")
                marks.append(d >= -goals.max_drop - 1e-12)
        g.per_seed[s] = (all(marks) if marks else None, ", ".join(parts) or "—")
    spreads, overall = [], []
    for a, ds in diffs.items():
        cell = over_seeds(ds)
        if cell is not None:
            spreads.append(f"{_name(a)}: {_spread(ds, lambda x: f'{100 * x:+.1f} pts', 100.0, ' pts')}")
            overall.append(cell.values.mean >= -goals.max_drop - 1e-12)
    g.spread, g.met = "; ".join(spreads) or "—", (all(overall) if overall else None)
    out.append(g)

    if "backdoor" in attacks:
        g = GoalResult(f"backdoor ASR (trigger as trained, zero-shot) ≥ {_pct(goals.asr)} on every seed")
        vals = []
        for s in seeds:
            v = _value(_rows(df, s, attack_col, "backdoor"), "poisoned.asr_as_trained_zeroshot")
            vals.append(v)
            g.per_seed[s] = (None, "—") if v is None else (v >= goals.asr, _pct(v))
        g.spread, g.met = _spread(vals, _pct, 100.0), _overall(g.per_seed)
        out.append(g)

        g = GoalResult(f"backdoor z-score ≥ {goals.z:g} on every seed, the clean models' < {goals.clean_z:g}")
        zs, czs = [], []
        for s in seeds:
            rows = _rows(df, s, attack_col, "backdoor")
            z, cz = _value(rows, "poisoned.z_as_trained"), _value(rows, "clean.z_as_trained")
            zs.append(z)
            czs.append(cz)
            if z is None or cz is None:
                g.per_seed[s] = (None, "—" if z is None and cz is None else
                                 f"backdoored {z if z is None else f'{z:.2f}'}, clean {cz if cz is None else f'{cz:.2f}'}")
            else:
                g.per_seed[s] = (z >= goals.z and cz < goals.clean_z, f"backdoored {z:.2f}, clean {cz:.2f}")
        g.spread = (f"backdoored: {_spread(zs, lambda x: f'{x:.2f}')}; "
                    f"clean: {_spread(czs, lambda x: f'{x:.2f}')}")
        g.met = _overall(g.per_seed)
        out.append(g)

    if "targeted" in attacks:
        g = GoalResult(f"targeted poisoning: ≥ {goals.min_targets} distinct targets per seed, a majority "
                       "classified as their target label by the poisoned model, none by the clean model")
        shares = []
        for s in seeds:
            rows = _rows(df, s, attack_col, "targeted")
            k, n = _value(rows, "poisoned.targeted_success_zeroshot_k"), _value(rows, "poisoned.targeted_success_zeroshot_n")
            ck = _value(rows, "clean.targeted_success_zeroshot_k")
            col = "poisoned.targeted_targets"
            ids = next((t for t in rows[col].tolist() if isinstance(t, str) and t), "") if col in rows.columns else ""
            distinct = len(set(ids.split(";"))) if ids else (int(n) if n is not None else 0)
            if k is None or n is None or ck is None:
                g.per_seed[s] = (None, "—")
                shares.append(None)
                continue
            shares.append(k / n if n else None)
            g.per_seed[s] = (distinct >= goals.min_targets and k > n / 2 and ck == 0,
                             f"{distinct} targets; poisoned model {int(k)}/{int(n)} hit, clean model {int(ck)}/{int(n)}")
        g.spread, g.met = f"share hit by the poisoned models: {_spread(shares, _pct, 100.0)}", _overall(g.per_seed)
        out.append(g)
    return out


def _name(attack: str) -> str:
    from poisonclip.report.tables import column_name

    return column_name(attack)


def seed_label(seed: Any) -> str:
    return "all models" if seed is None else f"seed {seed}"


def statements(results: Sequence[GoalResult], goals: Goals = Goals()) -> list[str]:
    """One plain sentence per seed, then one for all seeds (and one when fewer seeds ran than
    the goals are stated over)."""
    seeds = list(dict.fromkeys(s for r in results for s in r.per_seed))
    lines = []
    for s in seeds:
        met = [r.goal for r in results if r.per_seed.get(s, (None, ""))[0] is True]
        missed = [f"{r.goal} ({r.per_seed[s][1]})" for r in results if r.per_seed.get(s, (None, ""))[0] is False]
        unmeasured = [r.goal for r in results if r.per_seed.get(s, (None, ""))[0] is None]
        text = f"{seed_label(s).capitalize()}: " + (f"met {len(met)} of {len(results)} goals" if met else "met no goal")
        if missed:
            text += "; NOT met: " + "; ".join(missed)
        if unmeasured:
            text += "; not measured: " + "; ".join(unmeasured)
        lines.append(text + ".")
    missed = [r.goal for r in results if r.met is False]
    if results and not missed and all(r.met is True for r in results):
        lines.append("Over all seeds: every goal is met.")
    else:
        lines.append("Over all seeds: " + (f"NOT met: {'; '.join(missed)}" if missed else "no goal is missed")
                     + (f"; not measured: {'; '.join(r.goal for r in results if r.met is None)}"
                        if any(r.met is None for r in results) else "") + ".")
    measured = [s for s in seeds if s is not None]
    if len(measured) < goals.seeds:
        lines.append(f"{len(measured) or 'No'} seed(s) measured: the goals are stated over {goals.seeds} seeds, "
                     f"so a goal met here is met on these seeds only.")
    return lines
