"""The training loop."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from subnets.data import Batches, Dataset
from subnets.masks import Mask, MaskedParameters
from subnets.progress import SILENT, Progress
from subnets.recipes.training import TrainConfig, parse_duration
from subnets.train.sparse import Sparsified, sparsify


class StepHooks(Protocol):
    """Extra work in each training step, for methods whose layers carry their own objectives (e.g. the
    balancing of mixture-of-experts routers)."""

    def extra_loss(self) -> torch.Tensor:
        """A term added to the step's loss after the forward pass."""

    def after_step(self) -> None:
        """Called after each optimizer step."""


@dataclass
class TrainResult:
    """What one training produced. Accuracies are fractions; iterations count optimizer steps."""

    iterations: int
    early_stop_iter: int
    test_acc: float
    val_loss: float
    test_acc_end: float
    val_acc_end: float
    seconds: float
    eval_seconds: float
    curve: dict[str, list[float]]
    checkpoints: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)

    def summary(self) -> dict:
        """The JSON-ready part (curves and numbers, no tensors)."""
        return {
            "iterations": self.iterations, "early_stop_iter": self.early_stop_iter, "test_acc": self.test_acc,
            "val_loss": self.val_loss, "test_acc_end": self.test_acc_end, "val_acc_end": self.val_acc_end,
            "seconds": self.seconds, "eval_seconds": self.eval_seconds, "curve": self.curve,
        }


class Diverged(RuntimeError):
    """A training's loss became infinite or NaN: its weights are no longer numbers, and an early stop read from its
    curve (at the last finite point) would pass a failed training off as a result."""


class Curve:
    """The evaluation points of one training, and the early-stop iteration read from them."""

    KEYS = ("iteration", "train_loss", "val_loss", "val_acc", "test_acc")

    def __init__(self) -> None:
        self.points: dict[str, list[float]] = {k: [] for k in self.KEYS}
        self.eval_seconds = 0.0

    def add(self, iteration: int, train_loss: float | None, val_loss: float, val_acc: float,
            test_acc: float) -> None:
        """One evaluation; ``train_loss`` is the mean since the previous one (None at the start). Raises
        :class:`Diverged` when either loss is not finite."""
        for name, loss in (("training", train_loss), ("validation", val_loss)):
            if loss is not None and not math.isfinite(loss):
                raise Diverged(f"training diverged: {name} loss {loss} at iteration {iteration}; lower train.lr, or "
                               "check the data for extreme values")
        for key, value in zip(self.KEYS, (iteration, train_loss, val_loss, val_acc, test_acc), strict=True):
            self.points[key].append(value)

    def result(self, iterations: int, seconds: float,
               checkpoints: dict[int, dict[str, torch.Tensor]]) -> TrainResult:
        """The training's result: early stop at the evaluation of minimum validation loss."""
        curve = self.points
        best = min(range(len(curve["val_loss"])), key=lambda i: curve["val_loss"][i])
        return TrainResult(
            iterations=iterations, early_stop_iter=int(curve["iteration"][best]), test_acc=curve["test_acc"][best],
            val_loss=curve["val_loss"][best], test_acc_end=curve["test_acc"][-1],
            val_acc_end=curve["val_acc"][-1], seconds=seconds, eval_seconds=self.eval_seconds, curve=curve,
            checkpoints=checkpoints,
        )


def build_optimizer(config: TrainConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizer ``config`` names over ``params``, with fused kernels (one kernel for all parameters).

    With fused Adam a whole LeNet-300-100 training step is 1.25-1.3x faster than in a loop with ``foreach`` Adam
    (``benchmarks/lth_level.py``, "subnets" against "plain loop").
    """
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                           weight_decay=config.weight_decay, fused=True)


def lr_setter(config: TrainConfig, optimizer: torch.optim.Optimizer,
              steps_per_epoch: int) -> Callable[[int], None] | None:
    """``set_lr(iteration)`` applying the schedule to ``optimizer``, or None for a constant rate."""
    if config.schedule == "constant" and parse_duration(config.warmup, steps_per_epoch) == 0:
        return None
    factor = config.lr_factor(steps_per_epoch)
    bases = [g["lr"] for g in optimizer.param_groups]

    def set_lr(iteration: int) -> None:
        scale = factor(iteration)
        for group, base in zip(optimizer.param_groups, bases, strict=True):
            group["lr"] = base * scale

    return set_lr


@dataclass
class Plan:
    """What both training loops set up before their first step: schedule length, cadence, optimizer."""

    total: int
    eval_every: int
    optimizer: torch.optim.Optimizer
    set_lr: Callable[[int], None] | None


def plan(config: TrainConfig, streams: list[Batches], start_iteration: int,
         parameters: list[torch.Tensor]) -> Plan:
    """Check ``start_iteration``, advance the batch ``streams`` to it and build the optimizer and schedule."""
    steps_per_epoch = streams[0].steps_per_epoch
    total = config.iterations(steps_per_epoch)
    if not 0 <= start_iteration <= total:
        raise ValueError(f"start_iteration must be in [0, {total}], got {start_iteration}")
    for stream in streams:
        stream.skip(start_iteration)
    optimizer = build_optimizer(config, parameters)
    return Plan(total, parse_duration(config.eval_every, steps_per_epoch), optimizer,
                lr_setter(config, optimizer, steps_per_epoch))


def run_schedule(start: int, total: int, eval_every: int, checkpoint_at: tuple[int, ...], *,
                 set_lr: Callable[[int], None] | None, step: Callable[[], None], record: Callable[[int], None],
                 snapshot: Callable[[int], None], progress: Progress, key: str, description: str) -> None:
    """The iteration loop shared by lone and population training.

    Calls ``record`` at ``start``, every ``eval_every`` iterations and at ``total``; ``snapshot`` at the
    iterations in ``checkpoint_at``; ``set_lr`` (if any) before each ``step``; and reports progress.
    """
    progress.start(key, total - start, description)
    if start in checkpoint_at:
        snapshot(start)
    record(start)
    reported = start
    for iteration in range(start, total):
        if set_lr is not None:
            set_lr(iteration)
        step()
        done = iteration + 1
        if done in checkpoint_at:
            snapshot(done)
        if done % eval_every == 0 or done == total:
            record(done)
            progress.advance(key, done - reported)
            reported = done
    progress.finish(key)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)``, with one device sync at the end."""
    was_training = model.training
    model.eval()
    loss = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for start in range(0, len(y), batch_size):
        logits = model(x[start:start + batch_size])
        target = y[start:start + batch_size]
        loss += F.cross_entropy(logits, target, reduction="sum")
        correct += (logits.argmax(dim=1) == target).sum()
    model.train(was_training)
    return loss.item() / len(y), correct.item() / len(y)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig,
    *,
    seed: int,
    mask: Mask | None = None,
    start_iteration: int = 0,
    checkpoint_at: tuple[int, ...] = (),
    progress: Progress = SILENT,
    progress_key: str = "train",
    sparse_below: float = 0.0,
    hooks: StepHooks | None = None,
) -> TrainResult:
    """Train ``model`` in place from ``start_iteration`` to the configured length.

    ``seed`` fixes the data order (the batch stream is advanced by ``start_iteration`` batches, so a
    rewound run sees the same batches as the original from there on). ``mask`` keeps pruned weights at
    exactly zero. ``checkpoint_at`` lists iterations whose weights are copied into the result (iteration
    ``start_iteration`` included if listed). Model and data must already be on the same device.
    Masked linear layers whose density is below ``sparse_below`` train in sparse form
    (:mod:`subnets.train.sparse`): the same result up to float rounding, less arithmetic. ``hooks`` add a
    loss term to each step and run after it; the curve's ``train_loss`` stays the cross-entropy alone.
    """
    sparse = sparsify(model, mask, sparse_below) if mask is not None and sparse_below > 0 else None
    try:
        return _train(model, data, config, seed, mask, start_iteration, checkpoint_at, progress, progress_key,
                      sparse, hooks)
    finally:
        if sparse is not None:
            sparse.restore()


def _train(model: nn.Module, data: Dataset, config: TrainConfig, seed: int, mask: Mask | None,
           start_iteration: int, checkpoint_at: tuple[int, ...], progress: Progress, progress_key: str,
           sparse: Sparsified | None, hooks: StepHooks | None) -> TrainResult:
    batches = Batches(data.x_train, data.y_train, config.batch_size, seed)
    setup = plan(config, [batches], start_iteration, [p for p in model.parameters() if p.requires_grad])
    optimizer = setup.optimizer
    if mask is not None and sparse is not None:
        mask = Mask({name: keep for name, keep in mask.items() if name not in sparse.names})
    masked = MaskedParameters(model, mask) if mask else None
    if masked is not None:
        masked.mask_weights()

    curve = Curve()
    checkpoints: dict[int, dict[str, torch.Tensor]] = {}
    running_loss = torch.zeros((), device=data.x_train.device)
    running_steps = 0

    def snapshot(iteration: int) -> None:
        checkpoints[iteration] = sparse.state_dict() if sparse is not None else _snapshot(model)

    def record(iteration: int) -> None:
        nonlocal running_loss, running_steps
        started_eval = time.perf_counter()
        val_loss, val_acc = evaluate(model, data.x_val, data.y_val, config.eval_batch_size)
        _, test_acc = evaluate(model, data.x_test, data.y_test, config.eval_batch_size)
        curve.eval_seconds += time.perf_counter() - started_eval
        train_loss = running_loss.item() / running_steps if running_steps else None
        running_loss, running_steps = torch.zeros_like(running_loss), 0
        curve.add(iteration, train_loss, val_loss, val_acc, test_acc)
        progress.advance(progress_key, 0, val_acc=val_acc, test_acc=test_acc)

    def step() -> None:
        nonlocal running_loss, running_steps
        x, y = batches.next()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        (loss + hooks.extra_loss() if hooks is not None else loss).backward()
        if masked is not None:
            masked.mask_gradients()
        optimizer.step()
        if masked is not None:
            masked.mask_weights()
        if hooks is not None:
            hooks.after_step()
        running_loss += loss.detach()
        running_steps += 1

    started = time.perf_counter()
    model.train()
    run_schedule(start_iteration, setup.total, setup.eval_every, checkpoint_at, set_lr=setup.set_lr, step=step,
                 record=record, snapshot=snapshot, progress=progress, key=progress_key, description="train")
    return curve.result(setup.total, time.perf_counter() - started, checkpoints)
