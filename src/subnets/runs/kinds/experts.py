"""The experts kinds (:mod:`subnets.experts`): ``moe`` (balancing strategies), ``moefy`` (split dense blocks) and
``moefy-minilm`` (all-MiniLM-L6-v2's FFNs split), their tables and report pages.

Each page is a summary table (mean ± sample std over seeds) and plots; :func:`moe_markdown` and
:func:`moefy_markdown` give the same tables as Markdown for the results documents.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from subnets.runs.kinds import Kind, on_data, self_sourced
from subnets.runs.pages import group_by, markdown_table, mean_curve, mean_std, page, pyplot, save_figure, values

Units = list[dict[str, Any]]
_VARIANT_ORDER = ("dense-active", "dense-total", "none", "switch-micro", "switch-global", "switch-z", "loss-free",
                  "balanced")
_DIAGNOSTIC_LABELS = {"max_violation": "MaxVio", "load_cv": "load CV", "router_entropy": "router entropy (nats)",
                      "dropped": "dropped fraction"}


def _color(variant: str) -> str:
    """One colour per variant on every plot."""
    return f"C{_VARIANT_ORDER.index(variant) % 10}" if variant in _VARIANT_ORDER else "gray"


def _variants(units: Units) -> dict[str, Units]:
    groups = group_by(units, lambda u: u.get("variant"))
    order = {v: i for i, v in enumerate(_VARIANT_ORDER)}
    return dict(sorted(groups.items(), key=lambda item: (order.get(item[0], len(order)), str(item[0]))))


def moe_rows(units: Units) -> list[dict[str, str]]:
    """One row per variant: accuracy, parameters, train-time and test-set load balance, time."""
    rows = []
    for variant, group in _variants(units).items():
        test = [u["test_routing"] for u in group if u.get("test_routing")]
        rows.append({
            "variant": variant,
            "seeds": str(len(group)),
            "params (active / total)": f"{group[0]['active_parameters']:,} / {group[0]['parameters']:,}",
            "MACs / example (test)": mean_std(values(group, "macs"), 1, 0),
            "test acc % (early stop)": mean_std(values(group, "test_acc"), 100),
            "test acc % (end)": mean_std(values(group, "test_acc_end"), 100),
            "MaxVio, last 10% of training": mean_std(values(group, "max_violation_end"), 1, 3),
            "MaxVio, test set": mean_std([t["max_violation"] for t in test], 1, 3),
            "router entropy, test": mean_std([t["router_entropy"] for t in test], 1, 3),
            "seconds": mean_std(values(group, "seconds"), 1, 1),
        })
    return rows


def moe_markdown(units: Units) -> str:
    """The ``moe`` summary table as Markdown."""
    return markdown_table(moe_rows(units))


def _plot_diagnostic(units: Units, key: str, path: Path) -> bool:
    plt = pyplot()
    groups = {v: g for v, g in _variants(units).items() if any(u.get("diagnostics") for u in g)}
    if not groups:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for variant, group in groups.items():
        xs, ys = mean_curve(group, "diagnostics", key)
        ax.plot(xs, ys, label=variant, color=_color(variant))
    ax.set_xlabel("training iteration")
    ax.set_ylabel(_DIAGNOSTIC_LABELS[key])
    if key == "max_violation":
        ax.set_yscale("symlog", linthresh=0.1)
    ax.set_title(f"{_DIAGNOSTIC_LABELS[key]} of the training batches (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)
    return True


def _plot_accuracy(units: Units, path: Path) -> bool:
    plt = pyplot()
    groups = _variants(units)
    if not groups:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for variant, group in groups.items():
        xs, ys = mean_curve(group, "curve", "test_acc")
        ax.plot(xs, [100 * y for y in ys], label=variant, color=_color(variant),
                linestyle="--" if variant.startswith("dense") else "-")
    ax.set_xlabel("training iteration")
    ax.set_ylabel("test accuracy (%)")
    accuracies = [100 * a for g in groups.values() for u in g for a in (u.get("curve") or {}).get("test_acc", [])]
    if accuracies:
        ax.set_ylim(max(min(accuracies), max(accuracies) - 4), max(accuracies) + 0.3)
    ax.set_title("Test accuracy during training (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)
    return True


def _plot_test_load(units: Units, path: Path) -> bool:
    plt = pyplot()
    groups = {v: g for v, g in _variants(units).items() if any(u.get("test_routing") for u in g)}
    if not groups:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    width = 0.8 / len(groups)
    for i, (variant, group) in enumerate(groups.items()):
        loads = [u["test_routing"]["load"] for u in group if u.get("test_routing")]
        mean = [statistics.fmean(col) for col in zip(*loads, strict=True)]
        share = [100 * m / sum(mean) for m in mean]
        ax.bar([e + i * width for e in range(len(share))], share, width, label=variant, color=_color(variant))
    experts = len(next(iter(groups.values()))[0]["test_routing"]["load"])
    ax.axhline(100 / experts, color="black", linewidth=0.8, linestyle=":")
    ax.set_xticks([e + 0.4 - width / 2 for e in range(experts)], [str(e) for e in range(experts)])
    ax.set_xlabel("expert")
    ax.set_ylabel("share of the test set's choices (%)")
    ax.set_title("Expert load on the test set (dotted: uniform)")
    ax.legend(fontsize=8)
    save_figure(fig, path)
    return True


def moe_body(run: dict[str, Any], units: Units, out_dir: Path) -> str:
    """The ``moe`` page."""
    seeds = sorted({u["seed"] for u in units})
    return page(
        f"{len(_variants(units))} variants; seeds {', '.join(map(str, seeds)) or '–'}; {len(units)} trainings.",
        "Results per variant", "Mean ± sample std over seeds. MaxVio = max load / mean load - 1 over the "
        "experts, per training batch (averaged over the last 10% of steps) and over the whole test set with the "
        "trained router.", moe_rows(units), out_dir, [
            ("max_violation.png", lambda p: _plot_diagnostic(units, "max_violation", p),
             "MaxVio of each training batch, averaged over windows of steps (symlog scale)."),
            ("accuracy.png", lambda p: _plot_accuracy(units, p),
             "Test accuracy during training; dashed: dense blocks."),
            ("test_load.png", lambda p: _plot_test_load(units, p), "Share of the test set routed to each expert."),
            ("router_entropy.png", lambda p: _plot_diagnostic(units, "router_entropy", p),
             "Mean entropy of the router's scores per token during training."),
        ])


def _macs(group: Units, k: int) -> str:
    """Mean MACs per test example with ``k`` experts active (router's choice), "–" for units without them."""
    if not all("macs" in u for u in group):
        return "–"
    return f"{statistics.fmean(u['macs'][k - 1] for u in group):,.0f}"


def moefy_rows(units: Units) -> list[dict[str, str]]:
    """One row per (layer, experts, method): test accuracy with a quarter, half and all experts active, for
    the trained router, the oracle choice and a random choice, and the MACs per example with the router's
    choice; the dense accuracy for reference."""
    dense = [u["test_acc_final"] for u in units if u.get("step") == "dense"]
    rows = []
    splits = group_by([u for u in units if u.get("step") == "moefy"], lambda u: (u["layer"], u["experts"], u["method"]))
    for (layer, experts, method), group in sorted(splits.items()):
        row = {"layer": layer, "experts": str(experts), "method": method,
               "neurons per expert": f"{group[0]['expert_sizes'][0]}–{group[0]['expert_sizes'][1]}",
               "dense": mean_std(dense, 100)}
        for label, k in (("1/4", max(1, experts // 4)), ("1/2", max(1, experts // 2))):
            for selection in ("router", "oracle", "random"):
                row[f"{selection} k={label}"] = mean_std([u["test_acc"][selection][k - 1] for u in group], 100)
            row[f"MACs k={label}"] = _macs(group, k)
        row["all active"] = mean_std([u["test_acc"]["router"][-1] for u in group], 100)
        row["MACs all"] = _macs(group, experts)
        rows.append(row)
    return rows


def moefy_markdown(units: Units) -> str:
    """The ``moefy`` summary table as Markdown."""
    return markdown_table(moefy_rows(units))


def _plot_moefy(units: Units, path: Path) -> bool:
    plt = pyplot()
    splits = group_by([u for u in units if u.get("step") == "moefy"], lambda u: u["layer"])
    if not splits:
        return False
    dense = [100 * u["test_acc_final"] for u in units if u.get("step") == "dense"]
    fig, axes = plt.subplots(1, len(splits), figsize=(6.2 * len(splits), 4.4), squeeze=False)
    for ax, (layer, layer_units) in zip(axes[0], sorted(splits.items()), strict=True):
        configs = group_by(layer_units, lambda u: (u["experts"], u["method"]))
        for i, ((experts, method), group) in enumerate(sorted(configs.items())):
            fractions = [k / experts for k in group[0]["k"]]
            for selection, style in (("router", "-"), ("oracle", "--"), ("random", ":")):
                if selection == "random" and method != group[0]["method"]:
                    continue
                ys = [100 * statistics.fmean(u["test_acc"][selection][j] for u in group) for j in range(experts)]
                label = f"{experts} experts, {method}" if selection == "router" else None
                ax.plot(fractions, ys, style, color=f"C{i}", label=label, marker="." if style == "-" else None)
        if dense:
            ax.axhline(statistics.fmean(dense), color="black", linewidth=0.8)
        ax.set_ylim(max(0, min(dense or [90]) - 25), 100)
        ax.set_xlabel("fraction of experts active (k / experts)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"block {layer}: solid router, dashed oracle, dotted random")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)
    return True


def moefy_body(run: dict[str, Any], units: Units, out_dir: Path) -> str:
    """The ``moefy`` page."""
    dense = [u for u in units if u.get("step") == "dense"]
    return page(
        f"{len(dense)} dense trainings, {len(units) - len(dense)} splits.",
        "Test accuracy with a fraction of the experts active", "Mean ± sample std over seeds. router: the "
        "trained router's top-k; oracle: the k experts whose outputs are largest for each input; random: k "
        "experts drawn uniformly per input.", moefy_rows(units), out_dir, [
            ("accuracy_vs_active.png", lambda p: _plot_moefy(units, p),
             "Test accuracy against the fraction of experts active; the black line is the dense network."),
        ])


def moefy_minilm_rows(units: list[dict[str, Any]]) -> list[dict[str, str]]:
    """One row per (experts, method, fraction): cosine similarity to the dense embeddings (router, oracle,
    random; mean over seeds of the per-sentence mean, and the worst sentence), the middle FFN's MACs per token
    with the router's choice (and dense), FFN and encoder speed-ups."""
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for unit in units:
        groups.setdefault((unit["experts"], unit["method"]), []).append(unit)
    rows = []
    for (experts, method), group in sorted(groups.items()):
        for i, fraction in enumerate(group[0]["fractions"]):
            row = {"experts": str(experts), "method": method, "active": f"{100 * fraction:g}% (k={group[0]['k'][i]})"}
            for selection in ("router", "oracle", "random"):
                row[f"cos {selection}"] = f"{statistics.fmean(u['cosine'][selection][i]['mean'] for u in group):.4f}"
            row["cos router, worst sentence"] = f"{min(u['cosine']['router'][i]['min'] for u in group):.3f}"
            if all("retrieval_top1" in u for u in group):
                row["paraphrase top-1 % (dense)"] = (
                    f"{100 * statistics.fmean(u['retrieval_top1'][i] for u in group):.1f} "
                    f"({100 * group[0]['retrieval_top1_dense']:.1f})")
            if all("ffn_macs" in u for u in group):
                row["FFN MACs / token (dense)"] = (f"{statistics.fmean(u['ffn_macs'][i] for u in group):,.0f} "
                                                   f"({group[0]['ffn_macs_dense']:,.0f})")
            row["FFN speed-up"] = f"{statistics.fmean(u['ffn_speedup'][i] for u in group):.2f}x"
            row["encoder speed-up"] = f"{statistics.fmean(u['encode_speedup'][i] for u in group):.2f}x"
            rows.append(row)
    return rows


def _plot_minilm(units: Units, path: Path) -> bool:
    plt = pyplot()
    configs = group_by(units, lambda u: (u["experts"], u["method"]))
    if not configs:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    for i, ((experts, method), group) in enumerate(sorted(configs.items())):
        fractions = [100 * f for f in group[0]["fractions"]]
        for selection, style in (("router", "-"), ("oracle", "--"), ("random", ":")):
            ys = [statistics.fmean(u["cosine"][selection][j]["mean"] for u in group) for j in range(len(fractions))]
            ax.plot(fractions, ys, style, marker="o" if style == "-" else None, color=f"C{i}",
                    label=f"{experts} experts, {method}" if selection == "router" else None)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("experts active in every FFN (%)")
    ax.set_ylabel("cosine similarity to the dense embedding")
    ax.set_title("Held-out sentence embeddings: solid router, dashed oracle, dotted random")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)
    return True


def moefy_minilm_body(run: dict[str, Any], units: Units, out_dir: Path) -> str:
    """The ``moefy-minilm`` page."""
    return page(
        f"{len(units)} splits of the six FFNs of all-MiniLM-L6-v2.",
        "Held-out embeddings with a fraction of the experts active", "Cosine similarity of each held-out "
        "sentence's embedding to the dense model's (mean over sentences, mean over seeds). Speed-ups are the dense "
        "FFN's time (or the dense encoder's) over the split one's, on the CPU, same tokens, minimum of interleaved "
        "repeats.", moefy_minilm_rows(units), out_dir, [
            ("cosine_vs_active.png", lambda p: _plot_minilm(units, p),
             "Mean cosine similarity to the dense embeddings against the share of experts active."),
        ])


KINDS = (
    Kind("moe", "subnets.recipes.experts:MoEConfig",
         on_data("subnets.experts.experiments:MoEExperiment", workers=True),
         lambda run, units: moe_rows(units), moe_body, honours=frozenset({"workers"}),
         description="a mixture-of-experts block against dense blocks, one training per balancing strategy"),
    Kind("moefy", "subnets.recipes.experts:MoefyConfig", on_data("subnets.experts.experiments:MoefyExperiment"),
         lambda run, units: moefy_rows(units), moefy_body,
         description="a trained MLP's hidden blocks split into experts, accuracy against experts active"),
    Kind("moefy-minilm", "subnets.recipes.experts:MoefyMiniLMConfig",
         self_sourced("subnets.experts.moefy_minilm:MoefyMiniLMExperiment"),
         lambda run, units: moefy_minilm_rows(units), moefy_minilm_body, needs=(("transformers", "text"),),
         description="all-MiniLM-L6-v2's feed-forward blocks split into experts"),
)
