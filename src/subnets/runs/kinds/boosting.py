"""The ``boosting-tabular`` kind (:mod:`subnets.boosting`): every method's test score and fit time per table,
paired by fold against the boosted MLP, and the truncation curves (score vs hidden units kept).

Scores are accuracy (classification) and RMSE with R^2 (regression), mean ± sample std over folds. Δ is the
mean over folds of (method − boosted MLP) in accuracy points or RMSE with a 95% interval and p-value,
Holm-adjusted over the methods of the table: on cross-validated tables from the corrected resampled t-test of
Nadeau & Bengio (2003), since folds share training rows and a plain paired t-test over them is too optimistic; on a
fixed split repeated with other model seeds from the paired t-test over seeds. Trees fitted once on a fixed split
have no interval. The truncation table gives the score with 10%, 25% and 50% of the hidden units kept.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, NamedTuple

from subnets import stats
from subnets.runs.kinds import Kind, self_sourced
from subnets.runs.pages import group_by, html_table, mean_std, p_value, page, pyplot, save_figure, values
from subnets.stats import against_reference

Units = list[dict[str, Any]]
BOOSTED = "boosted"
COLORS = {"boosted": "C3", "mlp-adam": "C1", "mlp-sgd": "C2", "mlp-lbfgs": "C0", "lightgbm": "C4", "xgboost": "C5",
          "hist-gb": "C6"}


def in_recipe_order(run: dict[str, Any], units: Units) -> Units:
    """``units`` sorted by their table's and method's places in the recipe, then by fold."""
    recipe = run.get("recipe", {})
    tables = {name: i for i, name in enumerate(recipe.get("tables", []))}
    methods = {name: i for i, name in enumerate(recipe.get("methods", []))}
    return sorted(units, key=lambda u: (tables.get(u["table"], len(tables)), methods.get(u["method"], len(methods)),
                                        u["fold"]))


def _tables(units: Units) -> dict[str, dict[str, Units]]:
    """Units by table, then by method, each in the order first seen."""
    return {table: group_by(group, lambda u: u["method"])
            for table, group in group_by(units, lambda u: u["table"]).items()}


def _comparisons(methods: dict[str, Units], key: str) -> dict[str, dict[str, Any]]:
    """Each method against the boosted MLP on ``key``, paired by fold: the corrected resampled t-test where the
    folds are cross-validation folds, the paired t-test where every fold has the same rows (a fixed split, folds
    being model seeds). Units stored before they recorded their ``resampling`` take the corrected test, the
    more conservative one."""
    reference = methods.get(BOOSTED, [])
    cross_validated = any(u.get("resampling", "cross-validation") == "cross-validation" for u in reference)
    if not cross_validated:
        return against_reference(methods, BOOSTED, key, pair="fold")
    rows = reference[0]["rows"]
    return against_reference(methods, BOOSTED, key, pair="fold", test="corrected-t",
                             train_test_ratio=rows["test"] / rows["fit"])


def _classification(methods: dict[str, Units]) -> bool:
    """Whether a table's units (by method) are a classification task."""
    return next(iter(methods.values()))[0]["task"] == "classification"


def _size(group: Units) -> str:
    if "hidden_units" in group[0]:
        return f"{statistics.fmean(u['hidden_units'] for u in group):.0f} units"
    return f"{statistics.fmean(u['rounds'] for u in group):.0f} rounds"


def boosting_rows(units: Units) -> list[dict[str, str]]:
    """One row per table and method: score, Δ to the boosted MLP with interval and p-values, fit time, size."""
    rows = []
    for table, methods in _tables(units).items():
        classification = _classification(methods)
        key, scale, digits = ("accuracy", 100, 2) if classification else ("rmse", 1, 3)
        tests = _comparisons(methods, key)
        for method, group in methods.items():
            test = tests.get(method)
            ci = test["ci95"] if test else None
            rows.append({
                "table": table,
                "method": method,
                "fits": str(len(group)),
                "accuracy % / RMSE": mean_std(values(group, key), scale, digits),
                "R²": "–" if classification else mean_std(values(group, "r2"), 1, 3),
                "Δ vs boosted [95% CI]": "reference" if method == BOOSTED else "–" if not test or test["n"] == 0
                else f"{scale * test['mean_diff']:+.{digits}f}" + (
                    f" [{scale * ci[0]:+.{digits}f}, {scale * ci[1]:+.{digits}f}]" if ci else ""),
                "p (Holm)": "–" if test is None else p_value(test.get("p_t_holm")),
                "test": "–" if test is None or test.get("p_t") is None else test["test"],
                "fit s": mean_std(values(group, "fit_seconds"), 1, 2),
                "size": _size(group),
            })
    return rows


def _full_curve(unit: dict[str, Any], key: str, width: int, step: int) -> list[float]:
    """The unit's truncation scores at 0, step, ..., width units (the recipe's full width): a boosted MLP that
    stopped early with fewer units scores its full length beyond them (a budget it does not use up)."""
    curve = unit["truncation"]
    at = dict(zip(curve["units"], curve[key], strict=True))
    return [at.get(k, curve[key][-1]) for k in range(0, width + 1, step)]


class _Line(NamedTuple):
    method: str
    label: str
    xs: list[float]
    ys: list[float]
    color: str
    style: str


def _truncation_lines(methods: dict[str, Units], width: int, step: int) -> list[_Line]:
    """(method, label, x = fraction of the ``width`` units kept, mean score over folds, color, style) for the boosted
    MLP and the MLPs: the end-to-end MLPs keep their units of largest magnitude (mlp-adam also its first units by
    index)."""
    xs = [k / width for k in range(0, width + 1, step)]

    def mean(group: Units, key: str) -> list[float]:
        curves = (_full_curve(u, key, width, step) for u in group)
        return [statistics.fmean(column) for column in zip(*curves, strict=True)]

    lines = []
    for method in (m for m in methods if m == BOOSTED or m.startswith("mlp-")):
        if method == BOOSTED:
            lines.append(_Line(method, "boosted (first stages)", xs, mean(methods[method], "score"), COLORS[method],
                               "-"))
            continue
        lines.append(_Line(method, f"{method} (largest ‖w_in‖·‖w_out‖)", xs,
                           mean(methods[method], "score_magnitude"), COLORS[method], ":"))
        if method == "mlp-adam":
            lines.append(_Line(method, "mlp-adam (first by index)", xs, mean(methods[method], "score"),
                               COLORS[method], "--"))
    return lines


def truncation_rows(recipe: dict[str, Any], units: Units, fractions: tuple[float, ...] = (0.1, 0.25, 0.5)
                    ) -> list[dict[str, str]]:
    """Per table and MLP method: the test score (accuracy % or R²) with ``fractions`` of the hidden units kept
    (rounded down to whole stages), and with all, and the MACs per example at each (mean over folds; a boosted
    MLP that stopped early costs its full length beyond it)."""
    step = recipe["boosted"]["units_per_stage"]
    width = recipe["boosted"]["n_stages"] * step
    rows = []
    for table, methods in _tables(units).items():
        classification = _classification(methods)
        for method, label, xs, ys, _, _ in _truncation_lines(methods, width, step):
            at = [max(i for i, x in enumerate(xs) if x <= f + 1e-9) for f in (*fractions, 1.0)]
            text = [f"{100 * ys[i]:.2f}" if classification else f"{ys[i]:.3f}" for i in at]
            group = methods[method]
            macs = "–"
            if all("macs" in u["truncation"] for u in group):
                curve = [statistics.fmean(c) for c in zip(*(_full_curve(u, "macs", width, step) for u in group),
                                                           strict=True)]
                macs = " / ".join(f"{curve[i]:,.0f}" for i in at)
            rows.append({"table": table, "units kept": label,
                         **{f"{round(100 * f)}% kept": t for f, t in zip(fractions, text, strict=False)},
                         "all": text[-1], "MACs / example (" + ", ".join(
                             [*(f"{round(100 * f)}%" for f in fractions), "all"]) + ")": macs})
    return rows


def _grid(count: int) -> tuple[Any, list[Any]]:
    plt = pyplot()
    columns = min(4, count)
    rows = -(-count // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat


def _plot_truncation(recipe: dict[str, Any], units: Units, path: Path) -> bool:
    """Per table: test score vs fraction of hidden units kept (of the recipe's full width), mean over folds."""
    step = recipe["boosted"]["units_per_stage"]
    width = recipe["boosted"]["n_stages"] * step
    tables = {t: m for t, m in _tables(units).items() if _truncation_lines(m, width, step)}
    if not tables:
        return False
    fig, axes = _grid(len(tables))
    for ax, (table, methods) in zip(axes, tables.items(), strict=False):
        classification = _classification(methods)
        for _, label, xs, ys, color, style in _truncation_lines(methods, width, step):
            ax.plot(xs, [100 * y if classification else y for y in ys], style, color=color, label=label, linewidth=1.4)
        values = [100 * u["score"] if classification else u["score"] for g in methods.values() for u in g]
        top = max(values)
        ax.set_ylim(top - (30 if classification else 0.6), top + (2 if classification else 0.05))
        ax.set_title(table)
        ax.set_xlabel("fraction of hidden units kept")
        ax.set_ylabel("test accuracy (%)" if classification else "test R²")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Truncation: the boosted MLP keeps its first stages; the end-to-end MLPs keep as many units "
                 "(mean over folds)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    return True


def _plot_score_time(units: Units, path: Path) -> bool:
    """Per table: each method's mean test score against its mean fit time (log scale), ± std bars."""
    tables = _tables(units)
    if not tables:
        return False
    plt = pyplot()
    fig, axes = _grid(len(tables))
    for ax, (table, methods) in zip(axes, tables.items(), strict=False):
        classification = _classification(methods)
        for method, group in methods.items():
            scores = [100 * u["score"] if classification else u["score"] for u in group]
            seconds = [u["fit_seconds"] for u in group]
            ax.errorbar(statistics.fmean(seconds), statistics.fmean(scores), yerr=stats.mean_std(scores)[1] or 0.0,
                        xerr=stats.mean_std(seconds)[1] or 0.0, fmt="o", color=COLORS[method],
                        capsize=3, label=method)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_title(table)
        ax.set_xlabel("fit seconds (log)")
        ax.set_ylabel("test accuracy (%)" if classification else "test R²")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Test score vs fit time (mean ± std over folds)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    return True


def boosting_body(run: dict[str, Any], units: Units, out_dir: Path) -> str:
    """The ``boosting-tabular`` page."""
    units = in_recipe_order(run, units)
    tables = _tables(units)
    truncation = truncation_rows(run["recipe"], units)
    return page(
        f"{len(tables)} tables; {len({u['method'] for u in units})} methods; {len(units)} fits.",
        "Results per table and method",
        "Accuracy % (classification) or RMSE and R² (regression) on the test rows, mean ± sample std over "
        "folds. Δ: mean over folds of (method − boosted MLP) in accuracy points or RMSE, with a 95% t interval; "
        "p: two-sided, Holm-adjusted over the table's methods, from the corrected resampled t-test (Nadeau & Bengio) "
        "on cross-validated tables and the paired t-test over model seeds on a fixed split (column 'test'). "
        "Every method of a fold is fitted on "
        "the same rows and stops early on the same validation rows. Size: hidden units (MLPs) or boosting rounds "
        "kept (trees).",
        boosting_rows(units), out_dir, [
            ("truncation.png", lambda p: _plot_truncation(run["recipe"], units, p),
             "Test score vs fraction of hidden units kept."),
            ("score_time.png", lambda p: _plot_score_time(units, p), "Test score vs fit time."),
        ]) + ("\n<h2>Truncation</h2>\n<p class='note'>Test accuracy % (classification) or R² (regression) with a "
              "fraction of the hidden units kept, mean over folds: the boosted MLP keeps its first stages (a model "
              "that stopped early keeps all it has), the end-to-end MLPs keep their units of largest "
              "‖w_in‖·‖w_out‖ (mlp-adam also its first units by index).</p>\n" + html_table(truncation)
              if truncation else "")


KINDS = (Kind("boosting-tabular", "subnets.recipes.boosting:BoostingTabularConfig",
              self_sourced("subnets.boosting.experiments:BoostingTabularExperiment", workers=True),
              lambda run, units: boosting_rows(in_recipe_order(run, units)), boosting_body,
              honours=frozenset({"workers"}), needs=(("sklearn", "tabular"),),
              description="boosted MLPs against end-to-end MLPs and tree ensembles on tables, cross-validated"),)
