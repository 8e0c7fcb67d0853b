"""``subnets.stats`` checked by hand: sample (not population) std, t intervals, Holm, paired t / Wilcoxon against
scipy, the exact permutation test by enumeration, Nadeau & Bengio's corrected t by its formula, cheap import."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as scipy_stats

from subnets.stats import (
    against_reference,
    bootstrap_interval,
    corrected_resampled_t,
    format_mean_std,
    holm,
    mean_interval,
    mean_std,
    paired_bootstrap_interval,
    paired_comparison,
    paired_permutation_test,
    wilcoxon_signed_rank,
)


def test_import_is_cheap() -> None:
    code = "import subnets.stats, sys; assert 'scipy' not in sys.modules and 'numpy' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_mean_std_is_the_sample_std() -> None:
    mean, std = mean_std([1, 2, 3, 4])  # squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5
    assert mean == 2.5 and std == pytest.approx(math.sqrt(5 / 3)) and std == pytest.approx(1.2910, abs=1e-4)
    assert mean_std([1, 2, 3, 4], ddof=0)[1] == pytest.approx(math.sqrt(5 / 4))  # 1.118, the population std
    assert mean_std([1, 2, 3, 4], ddof=2)[1] == pytest.approx(math.sqrt(5 / 2))
    assert mean_std([7.0]) == (7.0, None)  # one run: spread unknown, not 0
    assert mean_std([7.0], ddof=0) == (7.0, 0.0)
    assert mean_std([]) == (None, None)
    with pytest.raises(ValueError):
        mean_std([1.0, 2.0], ddof=-1)


def test_mean_interval_is_a_t_interval() -> None:
    mean, low, high = mean_interval([1, 2, 3, 4])
    half = scipy_stats.t.ppf(0.975, 3) * math.sqrt(5 / 3) / 2  # t_{0.975, 3} = 3.182
    assert mean == 2.5 and low == pytest.approx(2.5 - half) and high == pytest.approx(2.5 + half)
    assert high - low == pytest.approx(2 * 3.182446 * 1.290994 / 2, rel=1e-5)
    _, low90, high90 = mean_interval([1, 2, 3, 4], confidence=0.9)
    assert high90 - 2.5 == pytest.approx(scipy_stats.t.ppf(0.95, 3) * math.sqrt(5 / 3) / 2)
    assert mean_interval([3.0]) == (3.0, None, None) and mean_interval([]) == (None, None, None)


def test_format_mean_std() -> None:
    assert format_mean_std([1, 2, 3, 4], scale=10, digits=1) == "25.0 ± 12.9"  # not 11.2: the sample std
    assert format_mean_std([0.5]) == "0.50"
    assert format_mean_std([]) == "–"


def test_holm_worked_example() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 (m = 4): 4 x 0.005 = 0.02, 3 x 0.01 = 0.03, 2 x 0.03 = 0.06,
    # max(0.06, 1 x 0.04) = 0.06 (adjusted p-values never decrease along the sorted order)
    assert holm([0.01, 0.04, 0.03, None, 0.005]) == pytest.approx([0.03, 0.06, 0.06, None, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0] and holm([]) == [] and holm([None]) == [None]


def test_paired_comparison_matches_scipy() -> None:
    method = {0: 0.91, 1: 0.93, 2: 0.90, 3: 0.95, 4: 0.97}
    baseline = {0: 0.90, 1: 0.90, 2: 0.91, 3: 0.92, 4: 0.93, 9: 0.5}  # key 9 has no partner and is left out
    result = paired_comparison(method, baseline)
    a, b = [method[k] for k in range(5)], [baseline[k] for k in range(5)]
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    mean, sd = sum(diffs) / 5, math.sqrt(sum((d - sum(diffs) / 5) ** 2 for d in diffs) / 4)
    half = scipy_stats.t.ppf(0.975, 4) * sd / math.sqrt(5)
    assert result["n"] == 5 and result["test"] == "t" and result["mean_diff"] == pytest.approx(mean)
    assert result["ci95"] == pytest.approx([mean - half, mean + half])
    assert result["p_t"] == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue, rel=1e-12)
    assert result["p_t"] == pytest.approx(2 * scipy_stats.t.sf(mean / (sd / math.sqrt(5)), 4))
    assert result["p_wilcoxon"] == pytest.approx(scipy_stats.wilcoxon(diffs).pvalue, rel=1e-12)
    assert (result["wins"], result["ties"], result["losses"]) == (4, 0, 1) and "p_permutation" not in result
    same = paired_comparison(baseline, baseline, permutation=True)
    assert same["mean_diff"] == 0 and same["p_t"] == 1.0 and same["p_wilcoxon"] is None
    assert same["ci95"] == [0, 0] and same["p_permutation"] == 1.0
    shifted = paired_comparison({k: v + 0.01 for k, v in baseline.items()}, baseline)
    assert shifted["p_t"] == 0.0
    one = paired_comparison({0: 1.0}, {0: 0.5}, permutation=True)
    assert one["n"] == 1 and one["mean_diff"] == 0.5 and one["ci95"] is one["p_t"] is one["p_permutation"] is None


def _exact_sign_flip_p(diffs: list[float]) -> float:
    """Two-sided: twice the smaller tail of the mean over all sign patterns, at most 1."""
    observed = sum(diffs)
    sums = [sum(s * d for s, d in zip(signs, diffs, strict=True))
            for signs in itertools.product((1, -1), repeat=len(diffs))]
    return min(1.0, 2 * min(sum(s >= observed for s in sums), sum(s <= observed for s in sums)) / len(sums))


def test_exact_permutation_test_by_enumeration() -> None:
    # diffs 1, 2, 4: the 8 signed sums are 7, 5, 3, 1, -1, -3, -5, -7; only +7 reaches 7, so p = 2 x 1/8
    assert paired_permutation_test([1, 2, 4], [0, 0, 0]) == 0.25
    assert paired_permutation_test([1, 2, 4, 8], [0, 0, 0, 0]) == 0.125
    x, y = [3.0, 1.0, 2.0, 0.0, 5.0, 2.0], [1.0, 2.0, 0.0, 1.0, 1.0, 0.0]
    diffs = [a - b for a, b in zip(x, y, strict=True)]  # 2, -1, 2, -1, 4, 2: ties in the null distribution
    assert paired_permutation_test(x, y, resamples=64) == pytest.approx(_exact_sign_flip_p(diffs))
    result = paired_comparison(dict(enumerate(x)), dict(enumerate(y)), permutation=True, resamples=64)
    assert result["p_permutation"] == pytest.approx(_exact_sign_flip_p(diffs))


def test_random_permutation_test_is_seeded() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(0.3, 1, 30), rng.normal(0, 1, 30)  # 2^30 patterns > resamples: random flips
    p = paired_permutation_test(x, y, resamples=999, seed=5)
    assert p == paired_permutation_test(x, y, resamples=999, seed=5)
    assert p == paired_permutation_test(x, y, resamples=999, seed=np.random.default_rng(5))
    assert p != paired_permutation_test(x, y, resamples=999, seed=6)
    assert p * 1000 == pytest.approx(round(p * 1000))  # (count + 1) / (999 + 1)
    assert p == pytest.approx(scipy_stats.ttest_rel(x, y).pvalue, abs=0.05)


def test_corrected_resampled_t_by_hand() -> None:
    diffs = [1.0, 2.0, 3.0, 4.0, 5.0]  # mean 3, s^2 = 10 / 4 = 2.5; 5 folds: n_test / n_train = 1/4
    # corrected: variance of the mean (1/5 + 1/4) x 2.5 = 9/8, so t = 3 / sqrt(9/8) = 2 sqrt 2 (plain: 3 sqrt 2)
    p, ci = corrected_resampled_t(diffs, 0.25)
    assert p == pytest.approx(2 * scipy_stats.t.sf(2 * math.sqrt(2), 4))
    half = scipy_stats.t.ppf(0.975, 4) * math.sqrt(9 / 8)
    assert ci == pytest.approx([3 - half, 3 + half])
    plain = scipy_stats.ttest_1samp(diffs, 0).pvalue
    assert plain == pytest.approx(2 * scipy_stats.t.sf(3 * math.sqrt(2), 4))
    assert p > plain * 3  # 0.047 against 0.013: overlapping training rows make the plain test too optimistic
    assert corrected_resampled_t(diffs, 0.0)[0] == pytest.approx(plain)  # no correction: the plain paired t
    assert corrected_resampled_t([2.0, 2.0, 2.0], 0.5) == (0.0, [2.0, 2.0])
    with pytest.raises(ValueError):
        corrected_resampled_t([1.0], 0.25)
    with pytest.raises(ValueError):
        corrected_resampled_t(diffs, -0.25)

    method, baseline = {f: 10.0 + d for f, d in enumerate(diffs)}, {f: 10.0 for f in range(5)}
    corrected = paired_comparison(method, baseline, test="corrected-t", train_test_ratio=0.25)
    assert corrected["test"] == "corrected-t" and corrected["p_t"] == pytest.approx(p)
    assert corrected["ci95"] == pytest.approx(ci)
    assert corrected["p_t"] > paired_comparison(method, baseline)["p_t"]
    with pytest.raises(ValueError, match="train_test_ratio"):
        paired_comparison(method, baseline, test="corrected-t")
    with pytest.raises(ValueError, match="test must be"):
        paired_comparison(method, baseline, test="z")  # type: ignore[arg-type]


def test_against_reference_holm_over_groups_and_options_passed_on() -> None:
    def runs(accuracies: list[float]) -> list[dict[str, float]]:
        return [{"fold": fold, "acc": acc} for fold, acc in enumerate(accuracies)]

    groups = {"ref": runs([0.80, 0.82, 0.81, 0.83]), "a": runs([0.85, 0.86, 0.84, 0.88]),
              "b": runs([0.81, 0.81, 0.82, 0.84]), "c": runs([0.80])}
    found = against_reference(groups, "ref", "acc", pair="fold")
    assert set(found) == {"a", "b", "c"} and found["c"]["p_t"] is None and found["c"]["p_t_holm"] is None
    assert [found[g]["p_t_holm"] for g in ("a", "b")] == pytest.approx(holm([found["a"]["p_t"], found["b"]["p_t"]]))
    assert found["a"]["p_t_holm"] == pytest.approx(min(1.0, 2 * min(found["a"]["p_t"], found["b"]["p_t"])))
    corrected = against_reference(groups, "ref", "acc", pair="fold", test="corrected-t", train_test_ratio=1 / 3,
                                  permutation=True)
    for g in ("a", "b"):
        assert corrected[g]["test"] == "corrected-t" and corrected[g]["p_t"] > found[g]["p_t"]
        assert corrected[g]["p_permutation_holm"] >= corrected[g]["p_permutation"]
    assert corrected["a"]["p_permutation"] == 0.125  # all four folds better: 2 x 1/16


def test_bootstrap_intervals() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 3, 50) / 2
    low, high = bootstrap_interval(scores, resamples=2000, seed=3)
    assert low < scores.mean() < high and (low, high) == bootstrap_interval(scores, resamples=2000, seed=3)
    expected = scipy_stats.bootstrap((scores,), np.mean, n_resamples=2000, method="percentile",
                                     random_state=np.random.default_rng(3)).confidence_interval
    assert (low, high) == pytest.approx((expected.low, expected.high))
    narrow = bootstrap_interval(scores, resamples=2000, confidence=0.5, seed=3)
    assert low < narrow[0] < narrow[1] < high
    assert bootstrap_interval([0.5, 0.5, 0.5]) == (0.5, 0.5)
    with pytest.raises(ValueError):
        bootstrap_interval([])
    reference = rng.integers(0, 3, 50) / 2
    low, high = paired_bootstrap_interval(scores + 0.25, reference, resamples=2000, seed=4)
    assert low < (scores + 0.25 - reference).mean() < high
    assert (low, high) == paired_bootstrap_interval(scores + 0.25, reference, resamples=2000, seed=4)
    # pairs, not the two samples apart: shifting both members of each pair leaves the interval unchanged
    assert paired_bootstrap_interval(scores + reference, 2 * reference, resamples=2000, seed=4) == pytest.approx(
        paired_bootstrap_interval(scores, reference, resamples=2000, seed=4))


@pytest.mark.parametrize("kind", ["no ties", "ties, n <= 13", "ties, n > 50", "zeros, n > 50"])
def test_wilcoxon_signed_rank_is_scipys_where_scipy_is_exact_or_large(kind: str) -> None:
    rng = np.random.default_rng(7)
    sizes = {"no ties": [*range(1, 51), 60, 120], "ties, n <= 13": range(2, 14), "ties, n > 50": [51, 80, 150],
             "zeros, n > 50": [60, 90]}[kind]
    for n in sizes:
        for _ in range(10):
            if kind == "no ties":
                d = rng.normal(0.3, 1, n)
            elif kind == "ties, n <= 13":
                d = rng.integers(-3, 4, n).astype(float)
                if not d.any():
                    continue
            else:
                d = rng.choice([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0], n)
                if kind == "zeros, n > 50":
                    d = np.concatenate([d, np.zeros(5)])
            assert wilcoxon_signed_rank(list(d)) == pytest.approx(scipy_stats.wilcoxon(d).pvalue, rel=1e-9, abs=1e-15)


def test_wilcoxon_signed_rank_is_exact_with_ties_where_scipy_approximates() -> None:
    """14 differences with ties: the p-value is the share of all 2^14 sign flips at least as extreme."""
    d = [1.0, -1.0, 2.0, 2.0, 2.0, 3.0, -3.0, 4.0, 5.0, 5.0, 6.0, -7.0, 8.0, 8.0]
    ranks = scipy_stats.rankdata(np.abs(d))
    observed = ranks[np.array(d) > 0].sum()
    flips = np.array(list(itertools.product([0, 1], repeat=len(d))))
    sums = flips @ ranks
    tol = 1e-9
    expected = min(1.0, 2 * min((sums <= observed + tol).mean(), (sums >= observed - tol).mean()))
    assert wilcoxon_signed_rank(d) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="non-zero difference"):
        wilcoxon_signed_rank([0.0, 0.0])
