"""Paired comparisons of two methods trained on the same seeds: is a difference more than seed noise?

Runs of two pools with the same seed share the initial weights of everything but the pool and the order of the
training batches, so their accuracies are paired; the paired t-test and the Wilcoxon signed-rank test ask
whether the mean (median) difference is zero. With many pools compared against one baseline, Holm's step-down
correction keeps the chance of any false "significant" at the nominal level.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from scipy import stats


def paired_comparison(method: Mapping[int, float], baseline: Mapping[int, float]) -> dict[str, Any]:
    """``method - baseline`` over the seeds both have: mean difference, its 95% t interval, the paired
    t-test and Wilcoxon p-values (two-sided; None where undefined), and wins/ties/losses."""
    seeds = sorted(set(method) & set(baseline))
    diffs = [method[s] - baseline[s] for s in seeds]
    result: dict[str, Any] = {"n": len(diffs), "mean_diff": statistics.fmean(diffs) if diffs else None,
                              "ci95": None, "p_t": None, "p_wilcoxon": None,
                              "wins": sum(d > 0 for d in diffs), "ties": sum(d == 0 for d in diffs),
                              "losses": sum(d < 0 for d in diffs)}
    if len(diffs) < 2:
        return result
    sd = statistics.stdev(diffs)
    half = stats.t.ppf(0.975, len(diffs) - 1) * sd / math.sqrt(len(diffs))
    result["ci95"] = [result["mean_diff"] - half, result["mean_diff"] + half]
    if sd == 0:  # every seed moved by the same amount: no variance to test against
        result["p_t"] = 1.0 if result["mean_diff"] == 0 else 0.0
    else:
        result["p_t"] = float(stats.ttest_rel([method[s] for s in seeds], [baseline[s] for s in seeds]).pvalue)
    if any(diffs):
        result["p_wilcoxon"] = float(stats.wilcoxon(diffs).pvalue)
    return result


def against_reference(groups: Mapping[str, Sequence[Mapping[str, Any]]], reference: str, key: str,
                      pair: str = "seed") -> dict[str, dict[str, Any]]:
    """The :func:`paired_comparison` of ``key`` between each group of results and the ``reference`` group, paired
    by the results' ``pair`` field (a seed, a fold), with the t-test's p-value Holm-adjusted over the groups
    (``p_t_holm``)."""
    baseline = {r[pair]: r[key] for r in groups.get(reference, [])}
    found = {name: paired_comparison({r[pair]: r[key] for r in group}, baseline)
             for name, group in groups.items() if name != reference}
    for name, adjusted in zip(found, holm([r["p_t"] for r in found.values()]), strict=True):
        found[name]["p_t_holm"] = adjusted
    return found


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (None stays None and is not counted)."""
    present = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (len(present) - rank) * p))
        adjusted[i] = running
    return adjusted
