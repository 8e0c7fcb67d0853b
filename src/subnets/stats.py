"""The statistics every report uses: summaries of repeated runs, and whether a difference is more than noise.

Summaries of runs repeated over seeds: :func:`mean_std` (mean and *sample* standard deviation, ddof=1: the runs are
a sample of what the seeds could give), :func:`mean_interval` (the mean's t interval) and :func:`format_mean_std`.

Paired comparisons over the seeds or folds two methods share (:func:`paired_comparison`, and
:func:`against_reference` for many methods against one, Holm-adjusted by :func:`holm`): runs with the same seed
share initial weights and batch order, runs on the same fold share training and test rows, so the per-key
differences are paired. The paired t-test and the Wilcoxon signed-rank test ask whether the mean (median)
difference is zero; the sign-flip permutation test asks it without a normal model. Cross-validation folds need
more: their training sets overlap, so their differences are correlated and a plain paired t-test over them is
too optimistic; :func:`corrected_resampled_t` (Nadeau & Bengio, 2003) widens the variance for that.

Resampling over examples (test pairs, test rows), seeded: :func:`paired_permutation_test`,
:func:`bootstrap_interval` and :func:`paired_bootstrap_interval` (scipy's ``permutation_test`` and ``bootstrap``).

Importing this module is cheap: numpy and scipy are imported inside the functions that need them, and the tests
over seeds and folds need only ``scipy.special`` (Student's t) and :func:`wilcoxon_signed_rank` (exact, here):
``scipy.stats`` alone takes about a second to import, and ``subnets show`` must answer at once.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import numpy as np

    Seed = int | np.random.Generator | None

Test = Literal["t", "corrected-t"]
TESTS: tuple[str, ...] = ("t", "corrected-t")


def _t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.special import stdtrit

    return float(stdtrit(df, q))


def _t_two_sided(t: float, df: int) -> float:
    """The two-sided p-value of ``|T| >= |t|`` for Student's t with ``df`` degrees of freedom."""
    from scipy.special import stdtr

    return float(2 * stdtr(df, -abs(t)))


# summaries -------------------------------------------------------------------------------------------------------

def mean_std(values: Sequence[float], ddof: int = 1) -> tuple[float | None, float | None]:
    """Mean and standard deviation of ``values``, dividing by ``n - ddof``: the sample std by default (ddof=1),
    the population std with ``ddof=0``. ``(None, None)`` for no values; the std is None when there are no more
    values than ``ddof`` (one run has no sample std: its spread is unknown, not 0)."""
    if ddof < 0:
        raise ValueError(f"ddof must be >= 0, got {ddof}")
    values = [float(v) for v in values]
    if not values:
        return None, None
    n, mean = len(values), statistics.fmean(values)
    if n <= ddof:
        return mean, None
    if ddof == 1:
        return mean, statistics.stdev(values)
    if ddof == 0:
        return mean, statistics.pstdev(values)
    return mean, math.sqrt(statistics.pvariance(values) * n / (n - ddof))


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float | None, float | None,
                                                                                float | None]:
    """``(mean, low, high)``: the mean of ``values`` and its Student t interval at ``confidence``
    (mean ± t_{(1+confidence)/2, n-1} · s / √n, s the sample std). The bounds are None for fewer than two values,
    the mean too for none."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    mean, sd = mean_std(values)
    if mean is None or sd is None:
        return mean, None, None
    n = len(values)
    half = _t_quantile((1 + confidence) / 2, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def format_mean_std(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    """``"mean ± sample std"`` of ``values`` times ``scale`` with ``digits`` decimals; the mean alone for one
    value (it has no sample std); a dash for none."""
    mean, std = mean_std(values)
    if mean is None:
        return "–"
    if std is None:
        return f"{scale * mean:.{digits}f}"
    return f"{scale * mean:.{digits}f} ± {abs(scale) * std:.{digits}f}"


# paired comparisons over seeds or folds ----------------------------------------------------------------------------

def corrected_resampled_t(diffs: Sequence[float], train_test_ratio: float,
                          confidence: float = 0.95) -> tuple[float, list[float]]:
    """The corrected resampled t-test of Nadeau & Bengio (2003) on the per-fold differences ``diffs``: the
    two-sided p-value that their mean is zero, and the mean's interval at ``confidence``.

    Folds of a cross-validation (or random train/test splits of one data set) share training rows, so their
    differences are positively correlated and the plain paired t-test, whose variance of the mean is s²/J, is too
    optimistic. Nadeau & Bengio replace 1/J by 1/J + n_test/n_train::

        t = mean(d) / sqrt((1/J + n_test/n_train) · s²),   J - 1 degrees of freedom,

    with J the number of differences and s² their sample variance (C. Nadeau and Y. Bengio, "Inference for the
    Generalization Error", Machine Learning 52, 239-281, 2003; Bouckaert and Frank, 2004, for repeated k-fold
    cross-validation, where n_test/n_train = 1/(k-1)). ``train_test_ratio`` is that ``n_test / n_train`` (rows
    scored over rows fitted in one fold); 0 gives the plain paired t-test. All differences equal: p is 1 when
    they are 0 and 0 otherwise, the interval that one value."""
    if train_test_ratio < 0:
        raise ValueError(f"train_test_ratio (n_test / n_train) must be >= 0, got {train_test_ratio}")
    if len(diffs) < 2:
        raise ValueError(f"the corrected resampled t-test needs at least two differences, got {len(diffs)}")
    n = len(diffs)
    mean = statistics.fmean(diffs)
    scale = math.sqrt((1 / n + train_test_ratio) * statistics.variance(diffs))
    half = _t_quantile((1 + confidence) / 2, n - 1) * scale
    if scale == 0:
        p = 1.0 if mean == 0 else 0.0
    else:
        p = _t_two_sided(mean / scale, n - 1)
    return p, [mean - half, mean + half]


def wilcoxon_signed_rank(diffs: Sequence[float]) -> float:
    """The two-sided p-value of the Wilcoxon signed-rank test that ``diffs`` are symmetric about zero.

    Zero differences are dropped (Wilcoxon's rule) and tied absolute differences share their average rank. Up to
    50 non-zero differences the p-value is exact: the statistic (the sum of the positive differences' ranks) is
    compared with its distribution over all 2^n sign flips of the ranks, counted by dynamic programming over the
    doubled (integer) ranks, so it stays exact with ties; it is ``2 · min(P(S <= s), P(S >= s))``, at most 1.
    Above 50 it is the normal approximation with the tie-corrected variance and no continuity correction. This
    is ``scipy.stats.wilcoxon(diffs)`` (scipy 1.17) wherever that is exact (no ties or zeros and n <= 50, or ties
    and n <= 13, where it enumerates the flips too) and above 50; with ties and 14-50 differences (scipy counts
    the zeros too when it chooses) scipy uses the normal approximation and this stays exact. Raises ValueError
    when every difference is zero.
    """
    nonzero = [float(d) for d in diffs if d != 0]
    n = len(nonzero)
    if n == 0:
        raise ValueError("the Wilcoxon signed-rank test needs a non-zero difference")
    order = sorted(range(n), key=lambda i: abs(nonzero[i]))
    doubled = [0] * n  # twice the average ranks (integers: a tie group's average rank is a half-integer at worst)
    start = 0
    while start < n:
        end = start
        while end + 1 < n and abs(nonzero[order[end + 1]]) == abs(nonzero[order[start]]):
            end += 1
        for i in order[start:end + 1]:
            doubled[i] = start + end + 2  # 2 * mean of the ranks start + 1 ... end + 1
        start = end + 1
    observed = sum(r for r, d in zip(doubled, nonzero, strict=True) if d > 0)
    if n > 50:
        mean = sum(doubled) / 4
        ties = {}
        for r in doubled:
            ties[r] = ties.get(r, 0) + 1
        variance = (n * (n + 1) * (2 * n + 1) - sum(t ** 3 - t for t in ties.values()) / 2) / 24
        return math.erfc(abs(observed / 2 - mean) / math.sqrt(2 * variance))
    counts = [0] * (sum(doubled) + 1)  # counts[s]: sign flips whose positive ranks sum to s (doubled)
    counts[0] = 1
    reach = 0
    for r in doubled:
        for total in range(reach, -1, -1):
            if counts[total]:
                counts[total + r] += counts[total]
        reach += r
    below = sum(counts[:observed + 1])
    above = sum(counts[observed:])
    return min(1.0, 2 * min(below, above) / 2 ** n)


def paired_comparison(method: Mapping[Hashable, float], baseline: Mapping[Hashable, float], *, test: Test = "t",
                      train_test_ratio: float | None = None, permutation: bool = False, resamples: int = 10000,
                      seed: int = 0) -> dict[str, Any]:
    """``method - baseline`` over the keys (seeds, folds) both have: ``n``, the mean difference, its 95% interval
    (``ci95``) and two-sided p-values, and wins/ties/losses; p-values and the interval are None where undefined
    (fewer than two pairs; Wilcoxon when every difference is 0).

    ``test`` names what gives ``p_t`` and ``ci95`` (and is returned as ``test``): ``"t"``, the paired t-test and
    its t interval, for independent pairs such as seeds; ``"corrected-t"``, :func:`corrected_resampled_t` with
    ``train_test_ratio`` (n_test / n_train), for cross-validation folds. ``p_wilcoxon`` is the Wilcoxon
    signed-rank test. With ``permutation``, ``p_permutation`` is the sign-flip permutation test of the mean
    difference (:func:`paired_permutation_test`: exact when 2^n <= ``resamples``, else ``resamples`` random flips
    drawn from ``seed``)."""
    if test not in TESTS:
        raise ValueError(f"test must be one of {', '.join(TESTS)}; got {test!r}")
    if test == "corrected-t" and train_test_ratio is None:
        raise ValueError("the corrected-t test needs train_test_ratio (n_test / n_train of one fold)")
    keys = sorted(set(method) & set(baseline))
    diffs = [method[k] - baseline[k] for k in keys]
    result: dict[str, Any] = {"n": len(diffs), "mean_diff": statistics.fmean(diffs) if diffs else None,
                              "test": test, "ci95": None, "p_t": None, "p_wilcoxon": None,
                              "wins": sum(d > 0 for d in diffs), "ties": sum(d == 0 for d in diffs),
                              "losses": sum(d < 0 for d in diffs)}
    if permutation:
        result["p_permutation"] = None
    if len(diffs) < 2:
        return result
    # the paired t-test is the corrected one with nothing to correct (n_test / n_train = 0)
    p, interval = corrected_resampled_t(diffs, train_test_ratio if test == "corrected-t" else 0.0)
    result["p_t"], result["ci95"] = p, interval
    if any(diffs):
        result["p_wilcoxon"] = wilcoxon_signed_rank(diffs)
    if permutation:
        result["p_permutation"] = paired_permutation_test([method[k] for k in keys], [baseline[k] for k in keys],
                                                          resamples, seed)
    return result


def against_reference(groups: Mapping[str, Sequence[Mapping[str, Any]]], reference: str, key: str,
                      pair: str = "seed", *, test: Test = "t", train_test_ratio: float | None = None,
                      permutation: bool = False, resamples: int = 10000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """The :func:`paired_comparison` of ``key`` between each group of results and the ``reference`` group, paired
    by the results' ``pair`` field (a seed, a fold), with the test options passed on, and ``p_t`` Holm-adjusted
    over the groups as ``p_t_holm`` (``p_permutation`` too, as ``p_permutation_holm``, with ``permutation``)."""
    baseline = {r[pair]: r[key] for r in groups.get(reference, [])}
    found = {name: paired_comparison({r[pair]: r[key] for r in group}, baseline, test=test,
                                     train_test_ratio=train_test_ratio, permutation=permutation,
                                     resamples=resamples, seed=seed)
             for name, group in groups.items() if name != reference}
    for field in ("p_t", "p_permutation") if permutation else ("p_t",):
        for name, adjusted in zip(found, holm([r[field] for r in found.values()]), strict=True):
            found[name][f"{field}_holm"] = adjusted
    return found


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (None stays None and is not counted): the i-th smallest of m p-values
    becomes ``max over j <= i of min(1, (m - j + 1) p_(j))``, so rejecting those below alpha keeps the chance of
    any false rejection at most alpha."""
    present = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (len(present) - rank) * p))
        adjusted[i] = running
    return adjusted


# resampling over examples --------------------------------------------------------------------------------------

def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    import numpy as np

    return np.mean(x - y, axis=axis)


def paired_permutation_test(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray,
                            resamples: int = 10000, seed: Seed = 0) -> float:
    """Two-sided p-value of the paired permutation test of ``mean(x - y) = 0``: under the null each pair's two
    values are exchangeable, so the difference's sign is a coin flip. Exact (all 2^n sign patterns) when
    2^n <= ``resamples``, else ``resamples`` random ones drawn from ``seed`` (an int, or a numpy Generator to draw
    several tests from one stream), counting the observed value among them. Two-sided is twice the smaller tail,
    at most 1 (scipy's ``permutation_test`` with ``permutation_type="samples"``)."""
    import numpy as np
    from scipy import stats as scipy_stats

    rng = np.random.default_rng(seed)
    return float(scipy_stats.permutation_test((np.asarray(x, dtype=float), np.asarray(y, dtype=float)),
                                              _mean_difference, permutation_type="samples", n_resamples=resamples,
                                              vectorized=True, random_state=rng).pvalue)


def paired_bootstrap_interval(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray,
                              resamples: int = 10000, confidence: float = 0.95, seed: Seed = 0) -> tuple[float, float]:
    """A paired bootstrap percentile interval of ``mean(x - y)``: pairs are resampled with replacement
    ``resamples`` times with the generator from ``seed`` (an int, or a numpy Generator shared by several calls)."""
    import numpy as np
    from scipy import stats as scipy_stats

    rng = np.random.default_rng(seed)
    interval = scipy_stats.bootstrap((np.asarray(x, dtype=float), np.asarray(y, dtype=float)), _mean_difference,
                                     paired=True, vectorized=True, n_resamples=resamples,
                                     confidence_level=confidence, method="percentile",
                                     random_state=rng).confidence_interval
    return float(interval.low), float(interval.high)


def bootstrap_interval(values: Sequence[float] | np.ndarray, resamples: int = 10000, confidence: float = 0.95,
                       seed: Seed = 0) -> tuple[float, float]:
    """A bootstrap percentile interval of the mean of ``values`` (e.g. per-example scores: the test set's sampling
    error), ``resamples`` resamples drawn with the generator from ``seed``; ``(v, v)`` when every value is ``v``
    (nothing to resample)."""
    import numpy as np
    from scipy import stats as scipy_stats

    values = np.asarray(values, dtype=float)
    if values.size == 0:
        raise ValueError("bootstrap_interval needs at least one value")
    if np.all(values == values[0]):
        return float(values[0]), float(values[0])
    interval = scipy_stats.bootstrap((values,), np.mean, vectorized=True, n_resamples=resamples,
                                     confidence_level=confidence, method="percentile",
                                     random_state=np.random.default_rng(seed)).confidence_interval
    return float(interval.low), float(interval.high)
