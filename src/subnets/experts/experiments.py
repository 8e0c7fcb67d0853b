"""The experts experiments as idempotent steps: ``moe`` (balancing strategies against dense baselines) and
``moefy`` (a trained dense network split into experts, accuracy against the number of active experts)."""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import torch
from torch import nn

from subnets.cost import measure
from subnets.data import Dataset
from subnets.experts import cpu_kernel
from subnets.experts.balancing import (
    DIAGNOSTICS,
    BalancedAssignment,
    Balancing,
    LossFreeBias,
    NoBalancing,
    SwitchLoss,
    ZLoss,
    diagnostics_tensor,
    load_diagnostics,
)
from subnets.experts.classifier import DenseFeedForward, FeedForwardClassifier, active_parameters
from subnets.experts.layer import MoE
from subnets.experts.moefy import MoefiedFeedForward, block_inputs, find_site, moefy
from subnets.models import build_model
from subnets.progress import SILENT, Progress
from subnets.recipes.experts import BalancingSpec, MoEConfig, MoefyConfig
from subnets.steps import StepStore, Tensors, Unit, UnitWorkers, derive_seed, run_trainings, store_step
from subnets.train import evaluate, train


def balancing_strategy(spec: BalancingSpec, name: str) -> NoBalancing:
    """The strategy object called ``name`` (one of :data:`~subnets.recipes.experts.STRATEGIES`) with ``spec``'s
    coefficients."""
    return {
        "none": NoBalancing,
        "switch-micro": lambda: SwitchLoss(spec.switch_coef, "micro"),
        "switch-global": lambda: SwitchLoss(spec.switch_coef, "global"),
        "switch-z": lambda: Balancing(SwitchLoss(spec.switch_coef, "micro"), ZLoss(spec.z_coef)),
        "loss-free": lambda: LossFreeBias(spec.bias_rate),
        "balanced": BalancedAssignment,
    }[name]()


class BalancingHooks:
    """Training-step hooks of an MoE classifier: the strategy's loss over micro-batches, its update after
    the step, and the load diagnostics of every step (kept on the device, no host sync)."""

    def __init__(self, moe: MoE, strategy: NoBalancing, micro_batches: int, steps: int) -> None:
        self.moe, self.strategy, self.micro_batches = moe, strategy, micro_batches
        strategy.attach(moe.router)
        device = moe.router.gate.weight.device
        self.diagnostics = torch.zeros(steps, len(DIAGNOSTICS), device=device)
        self.load = torch.zeros(steps, moe.num_experts, device=device)
        self.step = 0

    def extra_loss(self) -> torch.Tensor:
        routing = self.moe.last_routing
        if isinstance(self.strategy, SwitchLoss):
            self.strategy.new_batch()
        size = len(routing.experts) // self.micro_batches
        parts = [routing.rows(i * size, (i + 1) * size) for i in range(self.micro_batches)]
        return sum(self.strategy.loss(part) for part in parts) / self.micro_batches

    def after_step(self) -> None:
        routing = self.moe.last_routing
        self.strategy.update(self.moe.router, routing)
        if self.step < len(self.load):
            self.diagnostics[self.step] = diagnostics_tensor(routing, self.moe.num_experts)
            self.load[self.step] = routing.load()[: self.moe.num_experts].float()
        self.step += 1


def windowed(values: torch.Tensor, points: int = 60) -> tuple[list[int], torch.Tensor]:
    """Means of ``values`` (per step, first axis) over ``points`` equal windows, with each window's last
    step (1-based): a readable curve of a per-step series."""
    steps = len(values)
    width = max(1, steps // points)
    ends = list(range(width, steps + 1, width))
    return ends, torch.stack([values[end - width:end].mean(0) for end in ends])


class MoEExperiment:
    """The steps of one ``moe`` recipe: every variant trained for every seed; with ``workers`` above one, that many
    trainings at once in worker processes."""

    def __init__(self, config: MoEConfig, data: Dataset, device: torch.device, progress: Progress = SILENT,
                 workers: int = 1) -> None:
        self.config, self.data, self.device, self.progress, self.workers = config, data, device, progress, workers
        self.steps_total = config.train.iterations(len(data.y_train) // config.train.batch_size)

    def build(self, variant: str, seed: int) -> FeedForwardClassifier:
        """The classifier of ``variant``, initialised from ``seed``."""
        spec = self.config.model
        torch.manual_seed(derive_seed(seed, "init"))
        if variant == "dense-active":
            ffn: nn.Module = DenseFeedForward(spec.dim, spec.k * spec.hidden, spec.expert_kind, spec.activation)
        elif variant == "dense-total":
            ffn = DenseFeedForward(spec.dim, spec.experts * spec.hidden, spec.expert_kind, spec.activation)
        else:
            ffn = MoE(spec.dim, spec.hidden, spec.experts, spec.k, kind=spec.expert_kind, activation=spec.activation)
        model = FeedForwardClassifier(self.data.input_shape, self.data.num_classes, spec.dim, ffn)
        return model.to(self.device)

    def run(self, steps: StepStore) -> list[dict[str, Any]]:
        """Run (or resume) every variant and seed, storing each training as one step."""
        workers = UnitWorkers(self.workers, partial(_moe_unit, self.config, self.data.to("cpu"), str(self.device))) \
            if self.workers > 1 else None
        return run_trainings(steps, self.progress, "moe", self.config.variants, self.config.seeds, self._train,
                             self._describe, workers)

    @staticmethod
    def _describe(result: dict[str, Any]) -> str:
        return (f"test acc {100 * result['test_acc']:.2f}%"
                + (f", MaxVio {result['max_violation_end']:.3f}" if "max_violation_end" in result else "")
                + f", {result['seconds']:.1f}s")

    def _train(self, variant: str, seed: int) -> tuple[dict[str, Any], dict[str, Tensors]]:
        model = self.build(variant, seed)
        moe = model.moe()
        hooks = None
        if moe is not None:
            balancing = self.config.balancing
            hooks = BalancingHooks(moe, balancing_strategy(balancing, variant), balancing.micro_batches,
                                   self.steps_total)
        outcome = train(model, self.data, self.config.train, seed=derive_seed(seed, "data"), hooks=hooks,
                        progress=self.progress, progress_key=f"{variant}/s{seed}")
        result: dict[str, Any] = {
            "variant": variant, "seed": seed, "parameters": sum(p.numel() for p in model.parameters()),
            "active_parameters": active_parameters(model), **outcome.summary(),
        }
        tensors: dict[str, Tensors] = {"final": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
        # Per example, by the test set's routing; the forward pass leaves that routing in the MoE for test_routing.
        result["macs"] = measure(model, self.data.x_test).macs
        if moe is not None and hooks is not None:
            # Which implementation ran the experts (the compiled CPU kernel, or the Python loop and why): the
            # results are the same bits either way, the unit's seconds are not.
            result["experts_implementation"] = cpu_kernel.implementation(self.device)
            ends, means = windowed(hooks.diagnostics)
            result["diagnostics"] = {"iteration": ends,
                                     **{name: means[:, i].tolist() for i, name in enumerate(DIAGNOSTICS)}}
            tail = hooks.diagnostics[-max(1, len(hooks.diagnostics) // 10):].mean(0)
            result.update({f"{name}_end": float(tail[i]) for i, name in enumerate(DIAGNOSTICS)})
            result["test_routing"] = routing_diagnostics(moe)
            tensors["diagnostics"] = {"per_step": hooks.diagnostics.cpu(), "load": hooks.load.cpu()}
        return result, tensors


def routing_diagnostics(moe: MoE) -> dict[str, Any]:
    """Load diagnostics of the trained router over the whole test set, as used at inference: from the routing of
    the MoE's last forward pass, which must have been the test set in evaluation mode."""
    routing = moe.last_routing
    return {**load_diagnostics(routing, moe.num_experts), "load": routing.load()[: moe.num_experts].tolist()}


def _moe_unit(config: MoEConfig, data: Dataset, device: str, progress: Progress) -> Unit:
    """The unit function of a worker process (see :class:`subnets.steps.UnitWorkers`)."""
    return MoEExperiment(config, data.to(device), torch.device(device), progress)._train


class MoefyExperiment:
    """The steps of one ``moefy`` recipe: ``dense/s{seed}``, then one step per layer, expert count and
    method, each measuring test accuracy at every number of active experts with the trained router, the
    oracle choice (the experts that truly contribute most) and a random choice."""

    def __init__(self, config: MoefyConfig, data: Dataset, device: torch.device, progress: Progress = SILENT) -> None:
        self.config, self.data, self.device, self.progress = config, data, device, progress
        probe = self.build(0)
        for layer in config.moefy.layers:
            site = find_site(probe, layer)
            for n in config.moefy.experts:
                if not 1 <= n <= site.linear_in.out_features:
                    raise ValueError(f"moefy.experts: {n} experts for layer '{layer}' with "
                                     f"{site.linear_in.out_features} neurons")

    def build(self, seed: int) -> nn.Module:
        """The dense model, initialised from ``seed``."""
        torch.manual_seed(derive_seed(seed, "init"))
        spec = self.config.model
        return build_model(spec.name, self.data.input_shape, self.data.num_classes, **spec.options).to(self.device)

    def units(self) -> list[tuple[int, str, int, str]]:
        """Every (seed, layer, experts, method) split of the recipe."""
        spec = self.config.moefy
        return [(seed, layer, n, method) for seed in self.config.seeds for layer in spec.layers
                for n in spec.experts for method in spec.methods]

    def run(self, steps: StepStore) -> list[dict[str, Any]]:
        """Run (or resume) the dense trainings and every split."""
        units = self.units()
        self.progress.start("moefy", len(self.config.seeds) + len(units), "dense trainings and splits")
        results = []
        dense: dict[int, tuple[dict[str, Any], dict[str, Tensors]]] = {}
        for seed in self.config.seeds:
            dense[seed] = self._step(steps, f"dense/s{seed}", lambda seed=seed: self._train_dense(seed))
            results.append(dense[seed][0])
            self.progress.advance("moefy", 1)
        for unit in units:
            seed, layer, n, method = unit
            found = self._step(steps, f"moefy/{layer}/E{n}/{method}/s{seed}",
                               lambda unit=unit: self._split(*unit, dense[unit[0]][1]["final"]))
            results.append(found[0])
            self.progress.advance("moefy", 1)
        self.progress.finish("moefy")
        return results

    def _step(self, steps: StepStore, key: str, compute: Any) -> tuple[dict[str, Any], dict[str, Tensors]]:
        found = steps.get_step(key)
        if found is None:
            result, tensors = compute()
            store_step(steps, self.progress, key, result, tensors, f"{key}: {result['summary']}")
            found = (result, tensors)
        return found

    def _train_dense(self, seed: int) -> tuple[dict[str, Any], dict[str, Tensors]]:
        model = self.build(seed)
        outcome = train(model, self.data, self.config.train, seed=derive_seed(seed, "data"), progress=self.progress,
                        progress_key=f"dense/s{seed}")
        _, test_acc = evaluate(model, self.data.x_test, self.data.y_test)
        result = {"step": "dense", "seed": seed, "test_acc_final": test_acc, **outcome.summary(),
                  "summary": f"dense test acc {100 * test_acc:.2f}% ({outcome.seconds:.1f}s)"}
        return result, {"final": {k: v.detach().cpu() for k, v in model.state_dict().items()}}

    def _split(self, seed: int, layer: str, n_experts: int, method: str,
               weights: Tensors) -> tuple[dict[str, Any], dict[str, Tensors]]:
        spec = self.config.moefy
        model = self.build(seed)
        model.load_state_dict({k: v.to(self.device) for k, v in weights.items()})
        model.eval()
        x, y = self.data.x_test, self.data.y_test
        dense_logits = model(x).detach()
        generator = torch.Generator().manual_seed(derive_seed(seed, "moefy-samples"))
        rows = torch.randperm(len(self.data.y_train), generator=generator)[: spec.samples].to(self.device)
        inputs = block_inputs(model, layer, [self.data.x_train[rows]])
        started = time.perf_counter()
        block = moefy(model, layer, n_experts, n_experts, inputs, method=method, router_steps=spec.router_steps,
                      seed=derive_seed(seed, layer, n_experts, method))
        seconds = time.perf_counter() - started
        curves: dict[str, list[float]] = {}
        for selection in ("router", "oracle", "random"):
            curves[selection] = [self._accuracy(model, block, k, selection, x, y, seed) for k in
                                 range(1, n_experts + 1)]
        macs = []  # per example over the test set, the router choosing k experts per input (all: the dense model)
        for k in range(1, n_experts + 1):
            block.k = k
            macs.append(measure(model, x).macs)
        agreement = float((model(x).argmax(1) == dense_logits.argmax(1)).float().mean())
        sizes = [len(g) for g in block.groups]
        result = {
            "step": "moefy", "seed": seed, "layer": layer, "experts": n_experts, "method": method,
            "neurons": sum(sizes), "expert_sizes": [min(sizes), max(sizes)], "seconds": seconds,
            "k": list(range(1, n_experts + 1)), "test_acc": curves, "macs": macs, "all_active_agreement": agreement,
            "summary": (f"{layer} into {n_experts} ({method}): test acc at k=1/{n_experts // 4}/{n_experts // 2} "
                        + "/".join(f"{100 * curves['router'][k - 1]:.2f}" for k in
                                   (1, max(1, n_experts // 4), max(1, n_experts // 2))) + "%"),
        }
        return result, {"groups": {"labels": _labels(block)}}

    @torch.no_grad()
    def _accuracy(self, model: nn.Module, block: MoefiedFeedForward, k: int, selection: str, x: torch.Tensor,
                  y: torch.Tensor, seed: int) -> float:
        block.k = k
        block.selection = selection
        torch.manual_seed(derive_seed(seed, "random-experts", k))
        correct = sum(int((model(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum()) for i in range(0, len(y), 1000))
        block.selection = "router"
        return correct / len(y)


def _labels(block: MoefiedFeedForward) -> torch.Tensor:
    labels = torch.empty(sum(len(g) for g in block.groups), dtype=torch.long)
    for e, group in enumerate(block.groups):
        labels[group.cpu()] = e
    return labels
