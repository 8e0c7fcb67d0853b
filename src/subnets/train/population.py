"""Populations: K networks of one architecture trained in one batched pass.

Each member has its own parameters, mask, data order (seed) and optimizer state, exactly as if it were
trained alone by :func:`subnets.train.train`; only the arithmetic is shared. Parameters are stacked along a
new leading member axis and the model runs under ``torch.func.vmap`` (batched matrix products for linear
layers, grouped convolutions for conv layers), so one forward, one backward and one fused optimizer step
serve all K members. Optimizer updates are elementwise, so a member's update is the one it would get alone;
forward and backward sums are computed in another order than the single-model kernels, so members agree
with lone training up to float rounding: within 2e-4 in every weight after 150 Adam or SGD steps
(``tests/test_population.py``). Over longer runs training amplifies rounding, as it does between 1 and 2
CPU threads for one lone network, so long-run agreement is statistical (the accuracies): see the
population run in ``docs/results/lth-mnist.md``.

Models with buffers (BatchNorm running statistics) are not supported: :func:`population_support` says why,
and callers train such models one at a time.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from subnets.data import Batches, Dataset
from subnets.data.batches import gather
from subnets.masks import Mask
from subnets.models import MLP
from subnets.progress import SILENT, Progress
from subnets.recipes.training import TrainConfig
from subnets.train.loop import Curve, TrainResult, plan, run_schedule


class _BatchedLinear(torch.autograd.Function):
    """``x @ w.T + b`` per member (x ``(K, B, in)``, w ``(K, out, in)``, b ``(K, out)``).

    Autograd through a vmap'd ``F.linear`` computes the weight gradient as ``(K, in, out)`` and then
    copies it into the weight's ``(K, out, in)`` layout; this writes it in place once.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, w: torch.Tensor,
                b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx,
                 grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w = ctx.saved_tensors
        grad_x = torch.bmm(grad, w) if ctx.needs_input_grad[0] else None
        grad_w = torch.bmm(grad.transpose(1, 2), x) if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(dim=1) if ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def population_support(model: nn.Module) -> str | None:
    """None when ``model`` can be trained in a population, else the reason it cannot."""
    buffers = [name for name, _ in model.named_buffers()]
    if buffers:
        return f"{type(model).__name__} has buffers ({buffers[0]}, ...), which a population does not batch"
    return None


class Population:
    """K members of one architecture as stacked parameters ``(K, *shape)`` with stacked masks."""

    def __init__(self, models: Sequence[nn.Module], masks: Sequence[Mask | None] | None = None) -> None:
        if not models:
            raise ValueError("a population needs at least one member")
        masks = list(masks) if masks is not None else [None] * len(models)
        if len(masks) != len(models):
            raise ValueError(f"got {len(models)} models but {len(masks)} masks")
        first = models[0]
        reason = population_support(first)
        if reason:
            raise ValueError(reason)
        shapes = {n: p.shape for n, p in first.named_parameters()}
        for i, model in enumerate(models):
            if type(model) is not type(first) or {n: p.shape for n, p in model.named_parameters()} != shapes:
                raise ValueError(f"member {i} is not the same architecture as member 0")
        self.size = len(models)
        self.template = copy.deepcopy(first).to("meta")
        self.params: dict[str, torch.Tensor] = {
            name: torch.stack([dict(m.named_parameters())[name].detach() for m in models]).requires_grad_(
                first.get_parameter(name).requires_grad)
            for name in shapes
        }
        masked = sorted({name for mask in masks if mask is not None for name in mask}, key=list(shapes).index)
        unknown = [n for n in masked if n not in shapes]
        if unknown:
            raise ValueError(f"mask names '{unknown[0]}', which is not a parameter of the model")
        self.factors = [
            torch.stack([
                (mask[name] if mask is not None and name in mask else torch.ones(shapes[name], dtype=torch.bool))
                .to(device=self.params[name].device, dtype=self.params[name].dtype)
                for mask in masks
            ])
            for name in masked
        ]
        self.masked = [self.params[name] for name in masked]
        self._forward = vmap(self._member_forward)
        self._forward_shared = vmap(self._member_forward, in_dims=(0, None))
        self._mlp = isinstance(first, MLP)

    def _member_forward(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.template, params, (x,))

    def _mlp_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP's forward with batched products written for this layout (faster than vmap here)."""
        mlp: MLP = self.template
        h = x.flatten(2)
        for i in range(1, mlp.depth + 1):
            h = _BatchedLinear.apply(h, self.params[f"fc{i}.weight"], self.params[f"fc{i}.bias"])
            if i < mlp.depth:
                h = mlp.act(h)
        return h

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(K, B, classes)`` for per-member inputs ``x`` of shape ``(K, B, *input_shape)``."""
        if self._mlp:
            return self._mlp_forward(x)
        return self._forward(self.params, x)

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(K, N, classes)`` of every member on the same inputs ``x`` of shape ``(N, *input_shape)``."""
        if self._mlp:
            return self._mlp_forward(x.unsqueeze(0).expand(self.size, *x.shape))
        return self._forward_shared(self.params, x)

    def parameters(self) -> list[torch.Tensor]:
        """The stacked parameters that require gradients (what the optimizer steps)."""
        return [p for p in self.params.values() if p.requires_grad]

    def mask_gradients(self) -> None:
        """Zero the gradients of every member's pruned weights (one fused multiply)."""
        grads = [p.grad for p in self.masked]
        if self.masked and all(g is not None for g in grads):
            torch._foreach_mul_(grads, self.factors)

    @torch.no_grad()
    def mask_weights(self) -> None:
        """Zero every member's pruned weights (one fused multiply)."""
        if self.masked:
            torch._foreach_mul_(self.masked, self.factors)

    def state_dict(self, member: int) -> dict[str, torch.Tensor]:
        """Member ``member``'s parameters as a state dict of the architecture (copies)."""
        return {name: stacked[member].detach().clone() for name, stacked in self.params.items()}

    def write_back(self, models: Sequence[nn.Module]) -> None:
        """Copy each member's parameters into the corresponding model of ``models``."""
        for member, model in enumerate(models):
            model.load_state_dict(self.state_dict(member))


@torch.no_grad()
def evaluate_population(population: Population, x: torch.Tensor, y: torch.Tensor,
                        batch_size: int = 1000) -> tuple[list[float], list[float]]:
    """Per-member mean cross-entropy and accuracy on ``(x, y)``, with one device sync at the end."""
    was_training = population.template.training
    population.template.eval()
    loss = torch.zeros(population.size, device=x.device)
    correct = torch.zeros(population.size, device=x.device, dtype=torch.long)
    for start in range(0, len(y), batch_size):
        logits = population.shared(x[start:start + batch_size])
        target = y[start:start + batch_size].expand(population.size, -1)
        loss += F.cross_entropy(logits.transpose(1, 2), target, reduction="none").sum(dim=1)
        correct += (logits.argmax(dim=2) == target).sum(dim=1)
    population.template.train(was_training)
    return (loss / len(y)).tolist(), (correct.double() / len(y)).tolist()


def train_population(
    models: Sequence[nn.Module],
    data: Dataset,
    config: TrainConfig,
    *,
    seeds: Sequence[int],
    masks: Sequence[Mask | None] | None = None,
    start_iteration: int = 0,
    checkpoint_at: tuple[int, ...] = (),
    progress: Progress = SILENT,
    progress_key: str = "population",
) -> list[TrainResult]:
    """Train ``models`` as one population and write the trained weights back into them.

    Member i behaves as ``train(models[i], data, config, seed=seeds[i], mask=masks[i], ...)``: same data
    order, same schedule, same early-stop rule, its own optimizer state. All members share the schedule and
    ``start_iteration``. Models and data must already be on the same device. Each result's
    ``seconds`` and ``eval_seconds`` are the population's divided by its size.
    """
    if len(seeds) != len(models):
        raise ValueError(f"got {len(models)} models but {len(seeds)} seeds")
    population = Population(models, masks)
    streams = [Batches(data.x_train, data.y_train, config.batch_size, seed) for seed in seeds]
    setup = plan(config, streams, start_iteration, population.parameters())
    optimizer = setup.optimizer
    population.mask_weights()

    curves = [Curve() for _ in models]
    checkpoints: list[dict[int, dict[str, torch.Tensor]]] = [{} for _ in models]
    running_loss = torch.zeros(population.size, device=data.x_train.device)
    running_steps = 0

    def record(iteration: int) -> None:
        nonlocal running_loss, running_steps
        started_eval = time.perf_counter()
        val_loss, val_acc = evaluate_population(population, data.x_val, data.y_val, config.eval_batch_size)
        _, test_acc = evaluate_population(population, data.x_test, data.y_test, config.eval_batch_size)
        for curve in curves:
            curve.eval_seconds += (time.perf_counter() - started_eval) / population.size
        train_loss = (running_loss / running_steps).tolist() if running_steps else [None] * population.size
        running_loss, running_steps = torch.zeros_like(running_loss), 0
        for member, curve in enumerate(curves):
            curve.add(iteration, train_loss[member], val_loss[member], val_acc[member], test_acc[member])
        progress.advance(progress_key, 0, best_val_acc=max(val_acc), best_test_acc=max(test_acc))

    def snapshot(iteration: int) -> None:
        for member in range(population.size):
            checkpoints[member][iteration] = population.state_dict(member)

    def step() -> None:
        nonlocal running_loss, running_steps
        index = torch.stack([stream.next_index() for stream in streams])
        x, y = gather(data.x_train, data.y_train, index)
        losses = _member_losses(population(x), y)
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        population.mask_gradients()
        optimizer.step()
        population.mask_weights()
        running_loss += losses.detach()
        running_steps += 1

    started = time.perf_counter()
    population.template.train()
    run_schedule(start_iteration, setup.total, setup.eval_every, checkpoint_at, set_lr=setup.set_lr, step=step,
                 record=record, snapshot=snapshot, progress=progress, key=progress_key,
                 description=f"train {population.size} networks")
    population.write_back(models)
    seconds = (time.perf_counter() - started) / population.size
    return [curve.result(setup.total, seconds, points) for curve, points in zip(curves, checkpoints, strict=True)]


def _member_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each member: logits ``(K, B, C)``, targets ``(K, B)`` -> ``(K,)``."""
    return F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").mean(dim=1)
