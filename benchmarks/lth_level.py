"""Seconds per 1,000 training iterations and per lottery level: LeNet-300-100 on MNIST, Adam, batch 60.

Three ways to train the same masked network, timed in one process on the same data:

- ``subnets``: ``subnets.train.train`` (in-memory batches from seeded permutations, fused Adam, masks
  applied around each step), the loop every lottery level runs;
- ``plain loop``: a hand-written PyTorch loop over in-memory tensors with ``foreach`` Adam and the same
  masking, the baseline a careful researcher writes;
- ``DataLoader loop``: the same with a ``TensorDataset`` + shuffling ``DataLoader``, as most research
  code does.

A level's time is ``length`` iterations of training plus its evaluations (validation and test sets every
``eval_every``), as in ``recipes/lth-mnist-lenet300.toml``. Writes ``benchmarks/results/lth_level.json``.

    python benchmarks/lth_level.py [--quick] [--threads 1,2]
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import parse_args, write_result
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, TensorDataset

from subnets.data import load_dataset
from subnets.masks import Mask, MaskedParameters
from subnets.models import build_model, prunable_layers
from subnets.train import TrainConfig, evaluate, train

BATCH = 60
LEVEL_ITERATIONS = 15_000
EVALS_PER_LEVEL = LEVEL_ITERATIONS // 500 + 1


def _model_and_mask() -> tuple[torch.nn.Module, Mask]:
    torch.manual_seed(0)
    model = build_model("lenet300_100", (1, 28, 28), 10)
    return model, Mask.ones_like(model, prunable_layers(model))


def _manual_loop(batches: Callable[[], tuple[torch.Tensor, torch.Tensor]], iterations: int) -> float:
    """Seconds for ``iterations`` masked Adam steps (``foreach``) drawing batches from ``batches``."""
    model, mask = _model_and_mask()
    masked = MaskedParameters(model, mask)
    optimizer = torch.optim.Adam(model.parameters(), lr=1.2e-3, foreach=True)
    started = time.perf_counter()
    for _ in range(iterations):
        x, y = batches()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        masked.mask_gradients()
        optimizer.step()
        masked.mask_weights()
    return time.perf_counter() - started


def time_subnets(data, iterations: int) -> float:
    """Seconds of training steps in ``train()`` over ``iterations`` (its evaluations left out)."""
    model, mask = _model_and_mask()
    config = TrainConfig(length=f"{iterations}it", eval_every=f"{iterations}it", batch_size=BATCH)
    result = train(model, data, config, seed=0, mask=mask)
    return result.seconds - result.eval_seconds


def time_plain(data, iterations: int) -> float:
    """Seconds for the hand-written loop over seeded permutations of in-memory tensors."""
    generator = torch.Generator().manual_seed(0)
    n = len(data.y_train)
    order, position = torch.randperm(n, generator=generator), 0

    def batches() -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal order, position
        if position + BATCH > n:
            order, position = torch.randperm(n, generator=generator), 0
        index = order[position:position + BATCH]
        position += BATCH
        return data.x_train[index], data.y_train[index]

    return _manual_loop(batches, iterations)


def time_dataloader(data, iterations: int) -> float:
    """Seconds for the hand-written loop fed by a shuffling DataLoader."""
    loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=BATCH, shuffle=True,
                        drop_last=True, generator=torch.Generator().manual_seed(0))
    stream = iter(loader)

    def batches() -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal stream
        try:
            return next(stream)
        except StopIteration:
            stream = iter(loader)
            return next(stream)

    return _manual_loop(batches, iterations)


def time_evaluation(data) -> float:
    """Seconds for one evaluation: validation and test sets, as ``train()`` does every ``eval_every``."""
    model, _ = _model_and_mask()
    started = time.perf_counter()
    evaluate(model, data.x_val, data.y_val)
    evaluate(model, data.x_test, data.y_test)
    return time.perf_counter() - started


def measure(data, iterations: int, repeats: int) -> list[dict]:
    """One row per variant at the current thread count."""
    variants = {"subnets": time_subnets, "plain loop": time_plain, "DataLoader loop": time_dataloader}
    for timer in variants.values():  # warm up allocator and kernels
        timer(data, 50)
    best = {name: float("inf") for name in variants}
    for _ in range(repeats):  # interleaved, so that machine noise hits every variant alike
        for name, timer in variants.items():
            best[name] = min(best[name], timer(data, iterations))
    evaluation = min(time_evaluation(data) for _ in range(5))
    rows = []
    for name in variants:
        per_1000 = 1000 * best[name] / iterations
        rows.append({"threads": torch.get_num_threads(), "variant": name, "seconds_per_1000_iterations": per_1000,
                     "seconds_per_evaluation": evaluation,
                     "seconds_per_level": LEVEL_ITERATIONS / 1000 * per_1000 + EVALS_PER_LEVEL * evaluation,
                     "speedup_vs_plain_loop": 1000 * best["plain loop"] / iterations / per_1000})
    return rows


def main() -> None:
    args = parse_args(__doc__)
    iterations, repeats = (500, 1) if args.quick else (3000, 3)
    data = load_dataset("mnist")
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        rows += measure(data, iterations, repeats)
    path = write_result("lth_level", {
        "model": "lenet300_100", "dataset": "mnist", "batch_size": BATCH, "optimizer": "adam",
        "level_iterations": LEVEL_ITERATIONS, "evaluations_per_level": EVALS_PER_LEVEL,
        "iterations_measured": iterations, "repeats": repeats, "rows": rows})

    table = Table(title=f"LeNet-300-100 on MNIST, Adam, batch {BATCH}")
    for column in ("threads", "variant", "s / 1000 it", f"s / level ({LEVEL_ITERATIONS} it + {EVALS_PER_LEVEL} evals)",
                   "speed-up vs plain loop"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(str(row["threads"]), row["variant"], f"{row['seconds_per_1000_iterations']:.3f}",
                      f"{row['seconds_per_level']:.1f}", f"{row['speedup_vs_plain_loop']:.2f}x")
    Console().print(table)
    Console().print(f"written to {path}")


if __name__ == "__main__":
    main()
