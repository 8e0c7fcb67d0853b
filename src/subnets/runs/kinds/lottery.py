"""The ``lottery`` kind: iterative magnitude pruning with rewinding and its controls
(:mod:`subnets.tickets`), its per-level table, the paper's findings checked on a run, and its report page.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from subnets import stats
from subnets.runs.kinds import Kind, Prepared, data_identity, recipe_data
from subnets.runs.pages import esc, figures, html_table, pyplot, save_figure

if TYPE_CHECKING:
    import torch

    from subnets.progress import Progress
    from subnets.recipes.execution import Execution
    from subnets.recipes.lottery import LotteryConfig

BRANCH_ORDER = ("imp", "reinit", "random_prune")
BRANCH_LABELS = {
    "imp": "winning ticket (IMP)",
    "reinit": "same mask, random reinit",
    "random_prune": "random pruning",
}
_BRANCH_COLORS = {"imp": "C0", "reinit": "C1", "random_prune": "C2"}
# Weights remaining (fractions) whose nearest levels get a training curve, as in Frankle & Carbin (2019).
_CURVE_TARGETS = (1.0, 0.51, 0.21, 0.07, 0.036)
_CURVE_COLORS = ("black", "#1f77b4", "#2ca02c", "#ff7f0e", "#d62728")  # one per target, densest first

Group = dict[tuple[int, str], list[dict[str, Any]]]


def summarize_levels(units: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (level, branch) with means and sample stds over seeds (None for one seed), sorted by level and
    branch, and each seed's test accuracy (``test_acc_by_seed``) for paired tests between branches.

    Metrics that no unit of a group has are ``None``.
    """
    rows = []
    for (level, branch), group in _group(units).items():
        acc_mean, acc_std = _mean_std(_values(group, "test_acc"))
        end_mean, end_std = _mean_std(_values(group, "test_acc_end"))
        rows.append(
            {
                "level": level,
                "branch": branch,
                "weights_remaining": _mean_std(_values(group, "weights_remaining"))[0],
                "test_acc_mean": acc_mean,
                "test_acc_std": acc_std,
                "test_acc_end_mean": end_mean,
                "test_acc_end_std": end_std,
                "early_stop_iter_mean": _mean_std(_values(group, "early_stop_iter"))[0],
                "macs_mean": _mean_std(_values(group, "macs"))[0],
                "n_seeds": len({u.get("seed") for u in group}),
                "test_acc_by_seed": {u.get("seed", 0): float(u["test_acc"]) for u in group
                                     if u.get("test_acc") is not None},
            }
        )
    return rows


def lottery_findings(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The three LeNet findings of Frankle & Carbin (2019), checked on :func:`summarize_levels` rows.

    Each finding is ``{"claim", "criterion", "measure", "evidence", "holds"}``; ``evidence`` lists the levels
    the claim covers with their ``measure``, ``holds`` is True or False by the stated criterion, or None when
    the run has no level in the claim's range (or no dense level, or too few seeds for the criterion's test).
    The weight ranges are the paper's (its Figure 3 and 4 levels); the first and third criteria are tolerances
    on means, the second a paired t-test over seeds (the ticket and its reinit control share the seed's mask),
    Holm-adjusted over the levels it covers.
    """
    by_key = {(r["level"], r["branch"]): r for r in rows}
    dense = by_key.get((0, "imp"))
    imp = [r for r in rows if r["branch"] == "imp" and r["level"] > 0 and r["test_acc_mean"] is not None]

    def finding(claim: str, criterion: str, measure: str, checks: list[tuple[str, bool | None]]) -> dict[str, Any]:
        oks = [ok for _, ok in checks]
        holds = None if dense is None or not checks or None in oks else all(oks)
        evidence = "; ".join(text for text, _ in checks) or "no level in range"
        return {"claim": claim, "criterion": criterion, "measure": measure, "evidence": evidence, "holds": holds}

    def pct(row: dict[str, Any]) -> str:
        return f"{_pct_label(row['weights_remaining'])}%"

    matches, earlier, pairs = [], [], []
    if dense is not None:
        for r in imp:
            gap = 100 * (r["test_acc_mean"] - dense["test_acc_mean"])
            if 0.035 <= r["weights_remaining"] <= 0.215:
                matches.append((f"{pct(r)}: {gap:+.2f}", gap >= -0.1))
            if r["weights_remaining"] >= 0.205 and r["early_stop_iter_mean"] is not None:
                shift = r["early_stop_iter_mean"] - dense["early_stop_iter_mean"]
                earlier.append((f"{pct(r)}: {shift:+.0f}", shift <= 0))
            reinit = by_key.get((r["level"], "reinit"))
            if r["weights_remaining"] <= 0.075 and reinit is not None and reinit["test_acc_mean"] is not None:
                pairs.append((r, stats.paired_comparison(r["test_acc_by_seed"], reinit["test_acc_by_seed"])))
    below = []
    for (r, test), p_holm in zip(pairs, stats.holm([t["p_t"] for _, t in pairs]), strict=True):
        gap = 100 * test["mean_diff"]
        if p_holm is None:
            below.append((f"{pct(r)}: {gap:+.2f} ({test['n']} paired seed: no test)", None))
        else:
            verdict = gap > 0.5 and p_holm < 0.05
            below.append((f"{pct(r)}: {gap:+.2f} (Holm p {p_holm:.2g}, {test['n']} seeds)", verdict))
    return [
        finding("Tickets with 21% or fewer of the weights (down to 3.6%) match or beat the dense network's "
                "test accuracy.",
                "at every such level, ticket mean test accuracy at early stop is at most 0.1 points below the "
                "dense mean (a tolerance, not a test)", "ticket minus dense, points", matches),
        finding("The reinit control falls clearly below the tickets at 7% of the weights and fewer.",
                "at every such level, ticket minus reinit mean test accuracy exceeds 0.5 points and a two-sided "
                "paired t-test over seeds, Holm-adjusted over these levels, gives p < 0.05 (needs 2 or more seeds)",
                "ticket minus reinit, points", below),
        finding("Tickets reach their early-stop iteration no later than the dense network down to about 21%.",
                "at every level with 21% or more of the weights, the ticket's mean early-stop iteration is at "
                "most the dense one's (a comparison of means, not a test)", "ticket minus dense, iterations",
                earlier),
    ]


def lottery_markdown(units: list[dict[str, Any]]) -> str:
    """A lottery run as Markdown: one row per level with every branch side by side, then the findings."""
    rows = summarize_levels(units)
    branches = sorted({r["branch"] for r in rows}, key=_branch_key)
    by_key = {(r["level"], r["branch"]): r for r in rows}
    head = (["level", "weights %"] + [f"{b} test acc %" for b in branches]
            + [f"{b} early stop (it)" for b in branches] + ["seeds"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for level in sorted({r["level"] for r in rows}):
        cells = [by_key.get((level, b)) for b in branches]
        present = [c for c in cells if c is not None]
        accs = ["" if c is None else _fmt_acc(c["test_acc_mean"], c["test_acc_std"]) for c in cells]
        stops = ["" if c is None or c["early_stop_iter_mean"] is None else f"{c['early_stop_iter_mean']:.0f}"
                 for c in cells]
        weights = present[0]["weights_remaining"]
        lines.append("| " + " | ".join([str(level), "–" if weights is None else f"{100 * weights:.3g}", *accs,
                                        *stops, str(max(c["n_seeds"] for c in present))]) + " |")
    verdicts = {True: "holds", False: "does not hold", None: "no data"}
    findings = [f"- **{verdicts[f['holds']]}**: {f['claim']} Criterion: {f['criterion']}. Per level "
                f"({f['measure']}): {f['evidence']}." for f in lottery_findings(rows)]
    return "\n".join(lines) + "\n\nTest accuracy at the early-stop iteration, mean ± sample std over seeds.\n\n" + \
        "\n".join(findings) + "\n"


# ---------------------------------------------------------------------------------------------------------
# grouping and statistics


def _branch_key(branch: str) -> tuple[int, str]:
    """Sort key: the known branches in their fixed order, unknown ones after them by name."""
    return (BRANCH_ORDER.index(branch), "") if branch in BRANCH_ORDER else (len(BRANCH_ORDER), branch)


def _group(units: list[dict[str, Any]]) -> Group:
    """Units by (level, branch), sorted by level then branch."""
    groups: Group = {}
    for unit in units:
        groups.setdefault((int(unit["level"]), str(unit["branch"])), []).append(unit)
    return dict(sorted(groups.items(), key=lambda item: (item[0][0], _branch_key(item[0][1]))))


def _values(units: list[dict[str, Any]], key: str) -> list[float]:
    """The present (non-None) values of ``key`` over ``units``."""
    return [float(u[key]) for u in units if u.get(key) is not None]


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample std of ``values``; ``(None, None)`` when there are none, std None for one value."""
    return stats.mean_std(values)


def _branches(groups: Group) -> list[str]:
    """The branches present, in display order."""
    return sorted({branch for _, branch in groups}, key=_branch_key)


def _curve(unit: dict[str, Any]) -> tuple[list[float], list[float]]:
    """The (iteration, test accuracy %) points of a unit's curve; empty when it has none."""
    curve = unit.get("curve") or {}
    pairs = [
        (float(i), 100.0 * float(a))
        for i, a in zip(curve.get("iteration") or [], curve.get("test_acc") or [], strict=False)
        if i is not None and a is not None
    ]
    return [p[0] for p in pairs], [p[1] for p in pairs]


# ---------------------------------------------------------------------------------------------------------
# formatting


def _pct_label(fraction: float) -> str:
    """Weights remaining as a short percentage label: 100, 51.2, 8.6, 0.42."""
    pct = 100.0 * fraction
    if pct >= 99.95:
        return "100"
    return f"{pct:.1f}" if pct >= 1 else f"{pct:.2g}"


def _fmt_acc(mean: float | None, std: float | None) -> str:
    """An accuracy fraction's mean ± std as percentages (the mean alone when there is no std)."""
    if mean is None:
        return "–"
    return f"{100 * mean:.2f}" if std is None else f"{100 * mean:.2f} ± {100 * std:.2f}"


def _weight_ticks(groups: Group) -> list[float]:
    """X ticks (fractions): the imp line's weights remaining, thinned so labels do not overlap."""
    imp = {u.get("weights_remaining") for (_, b), us in groups.items() if b == "imp" for u in us}
    every = {u.get("weights_remaining") for us in groups.values() for u in us}
    values = sorted((float(w) for w in (imp or every) if w is not None and w > 0), reverse=True)
    ticks: list[float] = []
    for w in values:
        if not ticks or math.log10(ticks[-1] / w) >= 0.12:
            ticks.append(w)
    if values and ticks[-1] != values[-1]:  # always label the sparsest level, in place of its neighbour
        ticks[-1:] = [values[-1]] if len(ticks) > 1 else [ticks[-1], values[-1]]
    return ticks


def _plot_vs_weights(groups: Group, key: str, ylabel: str, title: str, scale: float, path: Path) -> bool:
    """Plot ``key`` (times ``scale``) against weights remaining, one line per branch with a min–max band.

    Returns False (and writes nothing) when no unit has the metric.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    drawn = False
    for branch in _branches(groups):
        points = []
        for (_, b), us in groups.items():
            ws, vs = _values(us, "weights_remaining"), _values(us, key)
            if b == branch and ws and vs and ws[0] > 0:
                points.append((statistics.fmean(ws) * 100, [v * scale for v in vs]))
        if not points:
            continue
        points.sort(reverse=True)
        xs = [p[0] for p in points]
        color = _BRANCH_COLORS.get(branch)
        ax.plot(
            xs,
            [statistics.fmean(p[1]) for p in points],
            marker="o",
            ms=4,
            lw=1.8,
            color=color,
            label=BRANCH_LABELS.get(branch, branch),
        )
        ax.fill_between(
            xs,
            [min(p[1]) for p in points],
            [max(p[1]) for p in points],
            color=ax.lines[-1].get_color(),
            alpha=0.2,
            lw=0,
        )
        drawn = True
    if not drawn:
        plt.close(fig)
        return False
    dense = _values(groups.get((0, "imp"), []), key)
    if dense:
        ref = statistics.fmean(dense) * scale
        label = f"dense ({ref:.2f}%)" if scale == 100 else f"dense ({ref:.0f})"
        ax.axhline(ref, ls="--", lw=1.2, color="0.35", label=label)
    ax.set_xscale("log")
    ticks = _weight_ticks(groups)
    ax.set_xticks([100 * t for t in ticks], labels=[_pct_label(t) for t in ticks])
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.invert_xaxis()
    ax.set_xlabel("weights remaining (%)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.35)
    ax.legend(fontsize=9)
    save_figure(fig, path)
    return True


def _curve_levels(groups: Group) -> list[int]:
    """The imp levels (with a curve) nearest, in log scale, to each of the target weights remaining."""
    candidates = {}
    for (level, branch), us in groups.items():
        ws = _values(us, "weights_remaining")
        if branch == "imp" and ws and ws[0] > 0 and any(_curve(u)[0] for u in us):
            candidates[level] = statistics.fmean(ws)
    chosen: list[int] = []
    for target in _CURVE_TARGETS:
        left = {level: w for level, w in candidates.items() if level not in chosen}
        if not left:
            break
        chosen.append(min(left, key=lambda level: abs(math.log(left[level] / target))))
    return sorted(chosen)


def _first_seed_curve(units: list[dict[str, Any]]) -> tuple[dict[str, Any], list[float], list[float]] | None:
    """The unit with the smallest seed that has a curve, with its curve points."""
    for unit in sorted(units, key=lambda u: u.get("seed", 0)):
        xs, ys = _curve(unit)
        if xs:
            return unit, xs, ys
    return None


def _plot_curves(groups: Group, path: Path) -> bool:
    """Test accuracy during training at a few imp levels, plus a panel with reinit at the same levels."""
    levels = _curve_levels(groups)
    if not levels:
        return False
    plt = pyplot()
    colors = dict(zip(levels, _CURVE_COLORS, strict=False))
    dense = _first_seed_curve(groups.get((0, "imp"), []))
    panels = [b for b in ("imp", "reinit") if any(_first_seed_curve(groups.get((v, b), [])) for v in levels)]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.6), sharey=True, squeeze=False)
    tails: list[float] = []
    all_ys: list[float] = []
    for ax, branch in zip(axes[0], panels, strict=True):
        seeds = set()
        if branch != "imp" and dense is not None:
            ax.plot(dense[1], dense[2], ls="--", lw=1.2, color="black", label="dense (level 0, imp)")
        for level in levels:
            found = _first_seed_curve(groups.get((level, branch), []))
            if found is None:
                continue
            unit, xs, ys = found
            seeds.add(unit.get("seed", 0))
            weights = unit.get("weights_remaining")
            label = f"{_pct_label(weights)}% (level {level})" if weights is not None else f"level {level}"
            ax.plot(xs, ys, lw=1.6, color=colors[level], label=label)
            stop = unit.get("early_stop_iter")
            if stop is not None and stop in xs:
                ax.plot([stop], [ys[xs.index(stop)]], "o", ms=5, color=colors[level])
            tails.append(min(ys[len(ys) // 4 :]))
            all_ys.extend(ys)
        seed_text = ", ".join(str(s) for s in sorted(seeds))
        ax.set_title(f"{BRANCH_LABELS[branch]} (seed {seed_text})")
        ax.set_xlabel("training iteration")
        ax.grid(True, alpha=0.35)
        ax.legend(fontsize=8, title="weights remaining", title_fontsize=8)
    axes[0][0].set_ylabel("test accuracy (%)")
    # Zoom on the later part of training: the first evaluations (near chance) would flatten the rest.
    low, high = min(tails), max(all_ys)
    pad = max(0.1 * (high - low), 0.5)
    if min(all_ys) < low - pad:
        axes[0][0].set_ylim(low - pad, high + pad)
    save_figure(fig, path)
    return True


# ---------------------------------------------------------------------------------------------------------
# pages


def lottery_page(run: dict[str, Any], units: list[dict[str, Any]], out_dir: Path) -> str:
    """The lottery ticket page: summary, per-level table and the four plots (those that have data)."""
    groups = _group(units)
    rows = summarize_levels(units)
    levels = sorted({level for level, _ in groups})
    seeds = sorted({u["seed"] for u in units if u.get("seed") is not None})
    imp_weights = [r["weights_remaining"] for r in rows if r["branch"] == "imp" and r["weights_remaining"]]
    span = (
        f" (weights remaining {_pct_label(max(imp_weights))}% → {_pct_label(min(imp_weights))}%)"
        if imp_weights
        else ""
    )
    summary = (
        f"{len(levels)} levels{span}; seeds {', '.join(map(str, seeds)) or '–'}; "
        f"branches {', '.join(_branches(groups)) or '–'}; {len(units)} units."
    )
    parts = [f"<p class='summary'>{esc(summary)}</p>"]

    parts.append("<h2>Results per level</h2>\n<p class='note'>Test accuracy: mean ± sample std over seeds. "
                 "MACs: multiply-accumulates per example of the network as pruned (kept weights only).</p>\n"
                 + html_table(lottery_rows(run, units)))

    verdicts = {True: "holds", False: "does not hold", None: "no data"}
    findings = ["<table class='findings'><thead><tr><th>finding of the paper</th><th>here</th><th>evidence per "
                "level (weights remaining: value)</th><th>criterion</th></tr></thead><tbody>"]
    for f in lottery_findings(rows):
        findings.append(f"<tr><td>{esc(f['claim'])}</td><td class='verdict-{str(f['holds']).lower()}'>"
                        f"{verdicts[f['holds']]}</td><td>{esc(f['measure'])}: {esc(f['evidence'])}</td>"
                        f"<td>{esc(f['criterion'])}</td></tr>")
    findings.append("</tbody></table>")
    parts.append("<h2>Findings of Frankle &amp; Carbin (2019), checked on this run</h2>\n" + "\n".join(findings))

    band = "Lines: mean over seeds; shaded band: min–max over seeds; dashed: dense network (level 0)."
    plots = [
        (
            "accuracy_vs_weights.png",
            lambda p: _plot_vs_weights(
                groups,
                "test_acc",
                "test accuracy (%) at early stop",
                "Test accuracy at the early-stop iteration",
                100,
                p,
            ),
            f"Test accuracy at the early-stop iteration vs. weights remaining (log scale). {band}",
        ),
        (
            "early_stop_vs_weights.png",
            lambda p: _plot_vs_weights(
                groups, "early_stop_iter", "early-stop iteration", "Early-stop iteration", 1, p
            ),
            f"Iteration of early stopping vs. weights remaining (log scale). {band}",
        ),
        (
            "final_accuracy_vs_weights.png",
            lambda p: _plot_vs_weights(
                groups,
                "test_acc_end",
                "test accuracy (%) at end of training",
                "Test accuracy at the end of training",
                100,
                p,
            ),
            f"Test accuracy at the end of training vs. weights remaining (log scale). {band}",
        ),
        (
            "curves.png",
            lambda p: _plot_curves(groups, p),
            "Test accuracy during training at selected levels (smallest seed); dots mark the early-stop "
            "iteration; the y axis is zoomed on the later part of training.",
        ),
    ]
    parts.append(figures(out_dir, plots))
    return "\n".join(parts)




def lottery_rows(run: dict[str, Any], units: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The per-level table of ``show`` and the report: one row per level and branch."""
    rows = []
    for r in summarize_levels(units):
        rows.append({
            "level": str(r["level"]),
            "branch": r["branch"],
            "weights %": "–" if r["weights_remaining"] is None else f"{100 * r['weights_remaining']:.3g}",
            "MACs / example": "–" if r["macs_mean"] is None else f"{r['macs_mean']:,.0f}",
            "test acc % (early stop)": _fmt_acc(r["test_acc_mean"], r["test_acc_std"]),
            "test acc % (end)": _fmt_acc(r["test_acc_end_mean"], r["test_acc_end_std"]),
            "early-stop iter": "–" if r["early_stop_iter_mean"] is None else f"{r['early_stop_iter_mean']:.0f}",
            "seeds": str(r["n_seeds"]),
        })
    return rows


def _unit_order(unit: dict[str, Any]) -> tuple:
    return (unit.get("level", 0), _branch_key(str(unit.get("branch"))), unit.get("seed", 0))


def _prepare(config: LotteryConfig, device: torch.device, progress: Progress, execution: Execution) -> Prepared:
    from subnets.tickets.lottery import LotteryExperiment

    data = recipe_data(config, device)
    experiment = LotteryExperiment(config, data, device, progress, execution)
    return Prepared(data.source, experiment.run, data_identity(config, data.source))


KINDS = (Kind("lottery", "subnets.recipes.lottery:LotteryConfig", _prepare, lottery_rows, lottery_page,
              honours=frozenset({"workers", "population_size", "sparse_below"}),
              markdown=lambda run, units: lottery_markdown(units), unit_order=_unit_order, legacy_levels=True,
              description="lottery tickets: iterative magnitude pruning with rewinding and its controls"),)
