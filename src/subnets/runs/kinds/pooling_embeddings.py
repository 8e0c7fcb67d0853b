"""The ``pooling-embeddings`` kind (:mod:`subnets.pooling.embeddings`): MiniLM readouts on verse-pair retrieval.

One row per readout: top-1 accuracy and MRR (mean ± sample std over seeds; unlearned readouts are
deterministic, one value, std 0), the accuracy's interval over test pairs, the difference to the standard readout
with its paired bootstrap interval and the paired permutation test's p-value (raw and Holm-adjusted), all from the
run's ``compare`` step. :func:`markdown` gives the same table as Markdown for the results documents.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from subnets import stats
from subnets.runs.kinds import Kind, self_sourced
from subnets.runs.pages import markdown_table, mean_std, p_value, page, pyplot, save_figure, values

Units = list[dict[str, Any]]
_STATES = 7


def _readouts(units: Units) -> dict[str, Units]:
    """Readout steps by readout, in the recipe's order."""
    groups: dict[str, Units] = {}
    for unit in sorted((u for u in units if u.get("step") == "readout"), key=lambda u: (u["order"], u.get("seed", 0))):
        groups.setdefault(unit["readout"], []).append(unit)
    return groups


def _step(units: Units, name: str) -> dict[str, Any]:
    return next((u for u in units if u.get("step") == name), {})


def _pct_interval(interval: list[float] | None, signed: bool = False) -> str:
    if not interval:
        return "–"
    sign = "+" if signed else ""
    return f"[{100 * interval[0]:{sign}.2f}, {100 * interval[1]:{sign}.2f}]"


def rows(units: Units, described: bool = False) -> list[dict[str, str]]:
    """One row per readout (see the module docstring), with the readout in words if ``described``; the comparison
    columns stay empty until the ``compare`` step."""
    compared = _step(units, "compare")
    tests = compared.get("readouts", {})
    reference = compared.get("reference", "mean")
    level = int(100 * compared.get("confidence", 0.95))
    out = []
    for name, group in _readouts(units).items():
        test = tests.get(name, {})
        learned = group[0]["learned"]
        seeds_p = test.get("p_per_seed")
        out.append({
            "readout": name,
            **({"what": group[0]["description"]} if described else {}),
            "seeds": str(len(group)) if learned else "–",
            "top-1 %": mean_std(values(group, "top1"), 100),
            f"top-1 {level}% CI (test pairs)": _pct_interval(test.get("interval")),
            "MRR %": mean_std(values(group, "mrr"), 100),
            f"Δ top-1 vs {reference} (pts) [{level}% CI]": "reference" if name == reference else (
                f"{100 * test['diff']:+.2f} {_pct_interval([test['low'], test['high']], True)}" if test else "–"),
            "p": "–" if name == reference else p_value(test.get("p")),
            "p (Holm)": "–" if name == reference else p_value(test.get("p_holm")),
            "p per seed": f"{p_value(min(seeds_p))}–{p_value(max(seeds_p))}" if seeds_p else "–",
            "cos partner / other": (f"{statistics.fmean(values(group, 'cos_partner')):.2f} / "
                                    f"{statistics.fmean(values(group, 'cos_other')):.2f}"),
            "top-1 % at init": mean_std(values(group, "top1_init"), 100) if learned else "–",
            "train s": mean_std(values(group, "train_seconds"), 1, 1) if learned else "–",
        })
    return out


def markdown(units: Units) -> str:
    """The summary table as Markdown."""
    return markdown_table(rows(units, described=True))


def _color(group: Units, reference: bool) -> str:
    return "C3" if reference else "C2" if group[0]["learned"] else "C0"


def _plot_top1(units: Units, path: Path) -> bool:
    """Top-1 accuracy per readout: bar = mean over seeds, error bar = interval over test pairs, dots = seeds."""
    plt = pyplot()
    groups = _readouts(units)
    if not groups:
        return False
    compared = _step(units, "compare")
    tests, reference = compared.get("readouts", {}), compared.get("reference", "mean")
    fig, ax = plt.subplots(figsize=(max(6.5, 0.55 * len(groups) + 2), 4.4))
    lows = []
    for i, (name, group) in enumerate(groups.items()):
        values = [100 * u["top1"] for u in group]
        mean = statistics.fmean(values)
        ax.bar(i, mean, color=_color(group, name == reference), alpha=0.75)
        interval = tests.get(name, {}).get("interval")
        if interval:
            ax.errorbar(i, mean, yerr=[[mean - 100 * interval[0]], [100 * interval[1] - mean]], color="black",
                        capsize=3, linewidth=1)
            lows.append(100 * interval[0])
        if len(values) > 1:
            ax.scatter([i] * len(values), values, s=9, color="black", zorder=3)
        lows.append(min(values))
        if name == reference:
            ax.axhline(mean, color="C3", linestyle=":", linewidth=1)
    ax.set_ylim(max(0.0, min(lows) - 3), 100.5)
    ax.set_xticks(range(len(groups)), list(groups), rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("top-1 retrieval accuracy (%), test pairs")
    level = int(100 * compared.get("confidence", 0.95))
    ax.set_title(f"Top-1 per readout (red: standard, green: learned; bars {level}% CI over test pairs; dots: seeds)",
                 fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)
    return True


def _plot_layer_weights(units: Units, path: Path) -> bool:
    """The learned softmax weights of ``weighted-layers`` readouts per hidden state (mean ± std over seeds)."""
    plt = pyplot()
    weighted = {name: group for name, group in _readouts(units).items() if group[0].get("layer_weights")}
    if not weighted:
        return False
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    width = 0.8 / len(weighted)
    for j, (name, group) in enumerate(weighted.items()):
        columns = list(zip(*(u["layer_weights"] for u in group), strict=True))
        ax.bar([k + j * width for k in range(len(columns))], [statistics.fmean(c) for c in columns], width,
               yerr=[stats.mean_std(c)[1] or 0.0 for c in columns], capsize=3, label=f"{name} ({len(group)} seeds)")
    ax.axhline(1 / _STATES, color="black", linestyle=":", linewidth=1)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(_STATES)],
                  ["emb"] + [f"layer {k}" for k in range(1, _STATES)], fontsize=8)
    ax.set_ylabel("softmax weight")
    ax.set_title("Learned layer weights (mean ± std over seeds; dotted: the equal start)", fontsize=9)
    ax.legend(fontsize=8)
    save_figure(fig, path)
    return True


def _plot_by_layer(units: Units, path: Path) -> bool:
    """Top-1 of the mean over one hidden state's tokens against the state, with the layer-pooled readouts."""
    plt = pyplot()
    groups = _readouts(units)
    states = {}
    for name, group in groups.items():
        token, _, state = name.partition("@")
        if token == "mean" and "/" not in name:
            states[int(state) if state else _STATES - 1] = 100 * group[0]["top1"]
    if len(states) < 2:
        return False
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    xs = sorted(states)
    ax.plot(xs, [states[x] for x in xs], marker="o", color="C0", label="mean of one hidden state's tokens")
    pooled = [(name, group) for name, group in groups.items() if name.endswith("-layers/mean")]
    for i, (name, group) in enumerate(pooled):
        ax.axhline(statistics.fmean(100 * u["top1"] for u in group), color=f"C{i + 1}", linestyle="--",
                   linewidth=1, label=name)
    ax.set_xticks(range(_STATES), ["emb"] + [str(k) for k in range(1, _STATES)])
    ax.set_xlabel("hidden state (emb: embedding layer)")
    ax.set_ylabel("top-1 accuracy (%), test pairs")
    ax.set_title("Last layer vs earlier layers vs pooled over layers (mean tokens)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)
    return True


def body(run: dict[str, Any], units: Units, out_dir: Path) -> str:
    """The ``pooling-embeddings`` page."""
    groups, encoded, compared = _readouts(units), _step(units, "encode"), _step(units, "compare")
    learned = [name for name, group in groups.items() if group[0]["learned"]]
    summary = (f"{len(groups)} readouts of all-MiniLM-L6-v2 ({len(learned)} learned); "
               f"{encoded.get('train_pairs', '–')} train / {encoded.get('test_pairs', '–')} test verse pairs "
               f"(test books: {', '.join(encoded.get('test_books', [])) or '–'}).")
    if encoded:
        summary += (f" Encoding {encoded['sentences']} verses ({encoded['tokens']} tokens) took "
                    f"{encoded['seconds']:.1f}s on {encoded['threads']} thread(s); the standard readout matches "
                    f"MiniLM.embed to {encoded['standard_check_max_abs_diff']:.1e}.")
    note = ("Retrieval of each test WEB verse's OEB partner among all test OEB verses by cosine, and the reverse; "
            "top-1 and MRR are the mean of both directions. ± is the sample std over seeds (unlearned readouts "
            "are deterministic: one value, std 0). Intervals are bootstrap percentile intervals over test pairs; "
            "p: " + compared.get("test", "not computed yet (the run has not finished)") + ". p per seed: the same "
            "test for each seed of a learned readout. cos: mean cosine similarity of "
            "partners and of all other (WEB, OEB) combinations of test verses.")
    return page(summary, "Readouts", note, rows(units, described=True), out_dir, [
        ("top1.png", lambda p: _plot_top1(units, p), "Top-1 retrieval accuracy per readout."),
        ("by_layer.png", lambda p: _plot_by_layer(units, p),
         "Mean over the tokens of one hidden state, and the readouts pooled over all hidden states."),
        ("layer_weights.png", lambda p: _plot_layer_weights(units, p), "Learned layer weights."),
    ])


KINDS = (Kind("pooling-embeddings", "subnets.recipes.pooling:PoolingEmbeddingsConfig",
              self_sourced("subnets.pooling.embeddings:PoolingEmbeddingsExperiment"),
              lambda run, units: rows(units), body, needs=(("transformers", "text"),),
              description="all-MiniLM-L6-v2 readouts (token and layer pooling) on paraphrase retrieval"),)
