"""Statistics across models: Wilson intervals, mean/std over seeds, the accuracy test."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from poisonclip.evaluate.stats import Rate, compare_accuracy, mean_std, pooled_rate, wilson_interval


@pytest.mark.parametrize("k,n,lo,hi", [
    (0, 10, 0.0, 0.27754),     # the classic "rule of three"-like upper bound
    (5, 10, 0.23659, 0.76341),
    (10, 10, 0.72246, 1.0),
    (1, 1, 0.20654, 1.0),
])
def test_wilson_against_known_values(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got[0] == pytest.approx(lo, abs=5e-5) and got[1] == pytest.approx(hi, abs=5e-5)


@pytest.mark.parametrize("k,n", [(3, 17), (81, 263), (0, 1), (499, 500)])
def test_wilson_matches_scipy(k, n):
    ref = st.binomtest(k, n).proportion_ci(0.95, method="wilson")
    got = wilson_interval(k, n)
    assert got == pytest.approx((ref.low, ref.high), abs=1e-9)
    ref90 = st.binomtest(k, n).proportion_ci(0.9, method="wilson")
    assert wilson_interval(k, n, 0.9) == pytest.approx((ref90.low, ref90.high), abs=1e-9)


def test_rate_and_pooling():
    r = Rate(3, 4)
    assert r.rate == 0.75 and r.to_dict()["ci95"] == pytest.approx(list(wilson_interval(3, 4)))
    assert pooled_rate([Rate(1, 2), Rate(3, 4), Rate(0, 4)]) == Rate(4, 10)
    assert Rate(0, 0).to_dict()["rate"] is None  # JSON has no NaN
    with pytest.raises(ValueError):
        Rate(5, 4)


def test_mean_std_uses_sample_std():
    s = mean_std([0.90, 0.92, 0.94])
    assert s.mean == pytest.approx(0.92) and s.std == pytest.approx(0.02) and s.n == 3
    one = mean_std([0.5])
    assert math.isnan(one.std) and one.to_dict()["std"] is None
    with pytest.raises(ValueError):
        mean_std([])


def test_welch_t_used_with_two_or_more_models_per_group():
    p, c = [0.80, 0.82, 0.85, 0.81], [0.90, 0.91, 0.89]
    cmp = compare_accuracy(p, c)
    # Welch's statistic by hand
    a, b = np.array(p), np.array(c)
    t = (a.mean() - b.mean()) / math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    assert cmp.test == "welch_t"
    assert cmp.statistic == pytest.approx(t)
    assert cmp.p_value < 0.05 and cmp.significant_loss
    lo, hi = cmp.diff_ci95
    assert lo < cmp.diff < hi < 0
    same = compare_accuracy([0.90, 0.91, 0.89], [0.905, 0.895, 0.90])
    assert not same.significant and not same.significant_loss


def test_single_model_falls_back_to_fisher_on_counts_or_no_test():
    cmp = compare_accuracy([0.5], [0.9], poisoned_counts=[Rate(50, 100)], clean_counts=[Rate(90, 100)])
    assert cmp.test == "fisher_exact"
    assert cmp.p_value == pytest.approx(st.fisher_exact([[50, 50], [90, 10]]).pvalue)
    assert cmp.significant_loss and "seed variance" in cmp.note
    none = compare_accuracy([0.5], [0.9])
    assert none.test == "none" and none.p_value is None and not none.significant


def test_no_spread_means_no_t_statistic():
    cmp = compare_accuracy([0.9, 0.9], [0.9, 0.9])
    assert cmp.test == "none" and cmp.p_value is None and cmp.diff == 0


def _metrics(top1: Rate, asr: Rate | None = None, z: float | None = None) -> dict:
    m = {"schema": "poisonclip.metrics/1", "clean": {"zeroshot": {"top1": top1.to_dict()}}}
    if asr is not None:
        m["backdoor"] = {"asr": {"train_placement": {"zeroshot": asr.to_dict()}},
                         "zscore": {"train_placement": {"z": z}}}
    return m


def test_summarise_and_compare_across_seeds():
    from poisonclip.evaluate.compare import compare, summarise

    poisoned = [_metrics(Rate(80, 100), Rate(45, 90), 2.0), _metrics(Rate(84, 100), Rate(60, 90), 3.0),
                _metrics(Rate(82, 100), Rate(30, 90), 1.0)]
    clean = [_metrics(Rate(90, 100)), _metrics(Rate(91, 100)), _metrics(Rate(89, 100))]
    s = summarise(poisoned)
    assert s["n_models"] == 3
    assert s["clean_top1_zeroshot"]["per_model"]["mean"] == pytest.approx(0.82)
    assert s["clean_top1_zeroshot"]["per_model"]["std"] == pytest.approx(0.02)
    assert s["asr_train_placement_zeroshot"]["pooled"]["k"] == 135
    assert s["asr_train_placement_zeroshot"]["pooled"]["n"] == 270
    assert s["zscore_train_placement"]["mean"] == pytest.approx(2.0)
    assert s["zscore_train_placement"]["std"] == pytest.approx(1.0)
    assert "asr_train_placement_zeroshot" not in summarise(clean)  # metric absent -> not summarised
    res = compare(poisoned, clean)
    t = res["accuracy_tests"]["zeroshot"]
    assert t["test"] == "welch_t" and t["significant_loss"] and t["diff"] == pytest.approx(-0.08)


# Six seeds: the clean models' accuracy varies a lot from seed to seed, and each poisoned model
# loses about one point against the clean model of its own seed. Pairing sees the loss; an
# unpaired test drowns it in the seed-to-seed spread.
_CLEAN6 = [0.80, 0.85, 0.90, 0.75, 0.95, 0.70]
_POISONED6 = [0.79, 0.841, 0.889, 0.742, 0.939, 0.69]


def test_paired_t_when_models_share_seeds_and_it_differs_from_welch():
    paired = compare_accuracy(_POISONED6, _CLEAN6, paired=True)
    unpaired = compare_accuracy(_POISONED6, _CLEAN6)
    ref = st.ttest_rel(_POISONED6, _CLEAN6)
    assert paired.test == "paired_t" and paired.paired and paired.n_pairs == 6
    assert paired.p_value == pytest.approx(ref.pvalue) and paired.statistic == pytest.approx(ref.statistic)
    assert paired.p_value < 1e-3 and paired.significant_loss
    assert unpaired.test == "welch_t" and not unpaired.paired and unpaired.n_pairs is None
    assert unpaired.p_value > 0.5 and not unpaired.significant
    # six pairs: the Wilcoxon signed-rank check is reported beside the t-test
    assert paired.wilcoxon_p == pytest.approx(st.wilcoxon(_POISONED6, _CLEAN6).pvalue)
    d = paired.to_dict()
    assert d["test"] == "paired_t" and d["n_pairs"] == 6 and "paired t-test over 6 pairs" in d["note"]
    assert "Wilcoxon" in d["note"] and d["wilcoxon_p"] == pytest.approx(0.03125)
    lo, hi = paired.diff_ci95
    assert lo < paired.diff < hi < 0


def test_paired_with_few_pairs_skips_wilcoxon_and_checks_lengths():
    cmp = compare_accuracy(_POISONED6[:3], _CLEAN6[:3], paired=True)
    assert cmp.test == "paired_t" and cmp.wilcoxon_p is None and "not run" in cmp.note
    with pytest.raises(ValueError, match="as many"):
        compare_accuracy([0.8, 0.9], [0.8], paired=True)
    same_shift = compare_accuracy([0.8, 0.9], [0.81, 0.91], paired=True)
    assert same_shift.test == "none" and same_shift.p_value is None
    one = compare_accuracy([0.5], [0.9], poisoned_counts=[Rate(50, 100)], clean_counts=[Rate(90, 100)],
                           paired=True)
    assert one.test == "fisher_exact" and one.n_pairs == 1


def test_compare_pairs_models_by_training_seed(tmp_path):
    """eval-compare pairs a poisoned and a clean model trained with the same seed (paired t-test)
    and falls back to Welch's test when the groups' seeds differ."""
    from poisonclip.evaluate.compare import compare

    clean, poisoned = _CLEAN6, _POISONED6

    def m(acc: float, seed: int | None) -> dict:
        return {"schema": "poisonclip.metrics/1", "model": {"train_seed": seed},
                "clean": {"zeroshot": {"top1": Rate(round(acc * 1000), 1000).to_dict()}}}

    order = [3, 0, 5, 1, 4, 2]  # the clean group listed in another order: pairing is by seed
    res = compare([m(a, s) for s, a in enumerate(poisoned)], [m(clean[s], s) for s in order])
    t = res["accuracy_tests"]["zeroshot"]
    assert t["test"] == "paired_t" and t["n_pairs"] == 6 and t["p_value"] < 1e-3 and t["significant_loss"]
    other = compare([m(a, s) for s, a in enumerate(poisoned)], [m(c, s + 10) for s, c in enumerate(clean)])
    w = other["accuracy_tests"]["zeroshot"]
    assert w["test"] == "welch_t" and w["n_pairs"] is None and w["p_value"] > 0.5


def test_summarise_counts_the_distinct_targets_behind_pooled_targeted_success():
    from poisonclip.evaluate.compare import summarise

    def m(targets):
        return {"schema": "poisonclip.metrics/1", "clean": {"zeroshot": {"top1": Rate(9, 10).to_dict()}},
                "targeted": {"targets": [{"id": f"t{i}", "label": lab, "source_sha256": sha}
                                         for i, (sha, lab) in enumerate(targets)],
                             "summary": {"zeroshot": {"success": Rate(len(targets), len(targets)).to_dict()}}}}

    same = [("a" * 64, "star"), ("b" * 64, "moon")]
    s = summarise([m(same), m(same), m(same)])["targeted_success_zeroshot"]
    assert s["pooled"]["n"] == 6 and s["n_distinct_targets"] == 2
    fresh = summarise([m([(str(i) * 64, "star"), (str(i + 5) * 64, "moon")]) for i in range(3)])
    assert fresh["targeted_success_zeroshot"]["n_distinct_targets"] == 6


def test_eval_compare_and_the_report_tables_give_the_same_numbers_for_the_same_models():
    """One aggregation: the same models summarised from their metrics.json (eval-compare) and
    from the results table's flat columns (the sweep report, the demo) give the same cells and
    the same paired accuracy test."""
    import pandas as pd

    from poisonclip.evaluate.columns import flat_metrics
    from poisonclip.evaluate.compare import compare
    from poisonclip.report.tables import accuracy_test, column_cell

    def m(acc: float, seed: int, asr: int | None = None) -> dict:
        out = {"schema": "poisonclip.metrics/1", "model": {"train_seed": seed},
               "clean": {"zeroshot": {"top1": Rate(round(acc * 1000), 1000).to_dict()}}}
        if asr is not None:
            out["backdoor"] = {"asr": {"train_placement": {"zeroshot": Rate(asr, 90).to_dict()}}}
        return out

    poisoned = [m(a, s, asr=40 + 7 * s) for s, a in enumerate(_POISONED6)]
    clean = [m(a, s) for s, a in enumerate(_CLEAN6)]
    res = compare(poisoned, clean)
    rows = [{"seed": s, **{f"poisoned.{k}": v for k, v in flat_metrics(p).items()},
             **{f"clean.{k}": v for k, v in flat_metrics(c).items()}} for s, (p, c) in enumerate(zip(poisoned, clean))]
    df = pd.DataFrame(rows[::-1])   # the table's row order does not matter
    for key, col in (("clean_top1_zeroshot", "poisoned.top1_zeroshot"),
                     ("asr_train_placement_zeroshot", "poisoned.asr_as_trained_zeroshot")):
        summary, cell = res["poisoned"][key], column_cell(df, col)
        assert cell["mean"] == summary["per_model"]["mean"] and cell["std"] == summary["per_model"]["std"]
        assert (cell["k"], cell["n"]) == (summary["pooled"]["k"], summary["pooled"]["n"])
        assert cell["ci95"] == summary["pooled"]["ci95"] and cell["n_models"] == summary["per_model"]["n"] == 6
    table_test, file_test = accuracy_test(df), res["accuracy_tests"]["zeroshot"]
    assert table_test["test"] == file_test["test"] == "paired_t"
    assert table_test["p_value"] == file_test["p_value"] and table_test["diff_ci95"] == file_test["diff_ci95"]
