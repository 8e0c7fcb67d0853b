"""The ``pooling`` kind (:mod:`subnets.pooling`): every pool against the baseline with paired tests over seeds.

The table gives accuracy as mean ± sample std over seeds, the mean paired difference to the baseline with
its 95% t interval, the paired t-test p-value (raw and Holm-adjusted over all pools) and the Wilcoxon
signed-rank p-value; :func:`pooling_markdown` gives the same table as Markdown for the results documents.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from subnets import stats
from subnets.runs.kinds import Kind, on_data
from subnets.runs.pages import (
    group_by,
    markdown_table,
    mean_curve,
    mean_std,
    p_value,
    page,
    pyplot,
    save_figure,
    values,
)
from subnets.stats import against_reference

Units = list[dict[str, Any]]


def _pools(units: Units) -> dict[str, Units]:
    """Units by pool: the baseline first, then in the order first seen."""
    groups, baseline = group_by(units, lambda u: u["pool"]), _baseline(units)
    return dict(sorted(groups.items(), key=lambda item: item[0] != baseline))


def in_recipe_order(run: dict[str, Any], units: Units) -> Units:
    """``units`` sorted by their pool's place in the recipe's ``pools``, then by seed."""
    order = {name: i for i, name in enumerate(run.get("recipe", {}).get("pools", []))}
    return sorted(units, key=lambda u: (order.get(u["pool"], len(order)), u["seed"]))


def _baseline(units: Units) -> str:
    """The pool the others are compared with (each unit records its recipe's)."""
    return units[0].get("baseline", "max") if units else "max"


def _learned(group: Units) -> str:
    """Mean of each learned pool parameter over seeds (e.g. GeM's p per layer), as text."""
    keys = sorted({k for u in group for k in u.get("learned", {})})
    parts = []
    for key in keys:
        values = [v for u in group for v in u["learned"].get(key, [])]
        if values:
            parts.append(f"{key.split('.', 1)[1] if '.' in key else key}[{key.split('.')[0]}] "
                         f"{statistics.fmean(values):.2f}")
    return "; ".join(parts[:4]) + (" …" if len(parts) > 4 else "") if parts else "–"


def comparisons(units: Units, key: str = "test_acc") -> dict[str, dict[str, Any]]:
    """Each pool's paired comparison with the baseline on ``key`` over shared seeds, Holm-adjusted."""
    return against_reference(_pools(units), _baseline(units), key)


def pooling_rows(units: Units) -> list[dict[str, str]]:
    """One row per pool: accuracy, difference to the baseline with its interval and p-values, learned values."""
    tests = comparisons(units)
    rows = []
    for pool, group in _pools(units).items():
        test = tests.get(pool)
        ci = test["ci95"] if test else None
        rows.append({
            "pool": pool,
            "seeds": str(len(group)),
            "MACs / example": "–" if group[0].get("macs") is None else f"{group[0]['macs']:,.0f}",
            "test acc % (early stop)": mean_std(values(group, "test_acc"), 100),
            "test acc % (end)": mean_std(values(group, "test_acc_end"), 100),
            f"Δ vs {_baseline(units)} (pts) [95% CI]": "baseline" if test is None else (
                f"{100 * test['mean_diff']:+.2f}" + (f" [{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]" if ci else "")),
            "p (paired t)": "–" if test is None else p_value(test["p_t"]),
            "p (Holm)": "–" if test is None else p_value(test["p_t_holm"]),
            "p (Wilcoxon)": "–" if test is None else p_value(test["p_wilcoxon"]),
            "wins/ties/losses": "–" if test is None else f"{test['wins']}/{test['ties']}/{test['losses']}",
            "learned (mean over seeds)": _learned(group),
            "seconds": mean_std(values(group, "seconds"), 1, 1),
        })
    return rows


def pooling_markdown(units: Units) -> str:
    """The ``pooling`` summary table as Markdown."""
    return markdown_table(pooling_rows(units))


def _plot_accuracy(units: Units, path: Path) -> bool:
    """Each pool's test accuracy: every seed as a dot, the mean with a ± std bar; the baseline's mean dotted."""
    plt = pyplot()
    groups = _pools(units)
    if not groups:
        return False
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * len(groups) + 2), 4.2))
    baseline = _baseline(units)
    for i, (pool, group) in enumerate(groups.items()):
        accuracies = [100 * u["test_acc"] for u in group]
        mean, std = statistics.fmean(accuracies), stats.mean_std(accuracies)[1] or 0.0
        ax.scatter([i + 0.12] * len(accuracies), accuracies, s=10, color="gray", alpha=0.6, zorder=2)
        ax.errorbar(i - 0.08, mean, yerr=std, fmt="o", color="C3" if pool == baseline else "C0", capsize=4,
                    zorder=3)
        if pool == baseline:
            ax.axhline(mean, color="C3", linestyle=":", linewidth=1)
    ax.set_xticks(range(len(groups)), list(groups), rotation=30, ha="right")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Test accuracy per pool (dots: seeds; bar: mean ± std; dotted: baseline mean)")
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)
    return True


def _plot_differences(units: Units, path: Path) -> bool:
    """Mean paired difference to the baseline with its 95% interval, per pool."""
    plt = pyplot()
    tests = {pool: t for pool, t in comparisons(units).items() if t["ci95"] is not None}
    if not tests:
        return False
    fig, ax = plt.subplots(figsize=(7.0, max(2.5, 0.4 * len(tests) + 1.2)))
    for i, test in enumerate(tests.values()):
        mean, (low, high) = 100 * test["mean_diff"], (100 * v for v in test["ci95"])
        significant = test["p_t_holm"] is not None and test["p_t_holm"] < 0.05
        ax.errorbar(mean, i, xerr=[[mean - low], [high - mean]], fmt="o", color="C2" if significant else "C0",
                    capsize=4)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(tests)), list(tests))
    ax.invert_yaxis()
    ax.set_xlabel(f"test accuracy difference to {_baseline(units)} (points), paired by seed")
    ax.set_title("Mean paired difference and 95% interval (green: Holm-adjusted p < 0.05)")
    ax.grid(axis="x", alpha=0.3)
    save_figure(fig, path)
    return True


def _plot_curves(units: Units, path: Path) -> bool:
    plt = pyplot()
    groups = _pools(units)
    if not groups:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for i, (pool, group) in enumerate(groups.items()):
        xs, ys = mean_curve(group, "curve", "val_acc")
        ax.plot(xs, [100 * y for y in ys], label=pool, color=f"C{i % 10}", linestyle="-" if i < 10 else "--")
    ax.set_xlabel("training iteration")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Validation accuracy during training (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    save_figure(fig, path)
    return True


def pooling_body(run: dict[str, Any], units: Units, out_dir: Path) -> str:
    """The ``pooling`` page."""
    units = in_recipe_order(run, units)
    seeds = sorted({u["seed"] for u in units})
    return page(
        f"{len(_pools(units))} pools; seeds {', '.join(map(str, seeds)) or '–'}; {len(units)} trainings.",
        "Results per pool", "Accuracy: mean ± sample std over seeds, at the early-stop iteration (lowest "
        "validation loss) and at the end. Δ: mean over seeds of (pool − baseline) for the same seed (same initial "
        "weights and batches), with a 95% t interval. p: two-sided paired t-test, Holm-adjusted over all pools, "
        "and the Wilcoxon signed-rank test (which cannot go below 0.0625 with 5 seeds).",
        pooling_rows(units), out_dir, [
            ("accuracy.png", lambda p: _plot_accuracy(units, p), "Test accuracy per pool and seed."),
            ("differences.png", lambda p: _plot_differences(units, p),
             "Paired difference to the baseline with its 95% interval."),
            ("curves.png", lambda p: _plot_curves(units, p), "Validation accuracy during training."),
        ])


KINDS = (Kind("pooling", "subnets.recipes.pooling:PoolingConfig",
              on_data("subnets.pooling.experiments:PoolingExperiment", workers=True),
              lambda run, units: pooling_rows(in_recipe_order(run, units)), pooling_body,
              honours=frozenset({"workers"}),
              description="a network trained with each spatial pooling op, paired tests against a baseline op"),)
