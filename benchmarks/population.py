"""Populations against one-at-a-time training: LeNet-300-100 on MNIST, Adam, K networks.

For each K in 1, 2, 4, 8, 16 and batch 60 and 128, trains K masked networks (different initialisations,
seeds and masks) once as a population (``subnets.train.train_population``) and once one after another
(``subnets.train.train``), in the same process on the same data, and reports seconds of training per 1,000
iterations per network (evaluations left out) and the speed-up of the population. Writes
``benchmarks/results/population.json`` with a ``speedup`` per K and batch size.

    python benchmarks/population.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from subnets.data import load_dataset
from subnets.masks import Mask, layerwise_magnitude
from subnets.models import build_model, prunable_layers
from subnets.train import TrainConfig, train, train_population

RESULTS = Path(__file__).parent / "results" / "population.json"
SIZES = (1, 2, 4, 8, 16)
BATCHES = (60, 128)


def _members(k: int) -> tuple[list[torch.nn.Module], list[Mask]]:
    models, masks = [], []
    for member in range(k):
        torch.manual_seed(member)
        model = build_model("lenet300_100", (1, 28, 28), 10)
        layers = prunable_layers(model)
        masks.append(layerwise_magnitude(model, Mask.ones_like(model, layers), {n: 0.2 for n in layers}))
        models.append(model)
    return models, masks


def per_network_seconds(data, k: int, batch: int, iterations: int, population: bool) -> float:
    """Seconds of training steps per network for ``iterations`` iterations of ``k`` networks."""
    config = TrainConfig(length=f"{iterations}it", eval_every=f"{iterations}it", batch_size=batch)
    models, masks = _members(k)
    seeds = list(range(k))
    if population:
        results = train_population(models, data, config, seeds=seeds, masks=masks)
    else:
        results = [train(m, data, config, seed=s, mask=mask) for m, s, mask in zip(models, seeds, masks, strict=True)]
    return sum(r.seconds - r.eval_seconds for r in results) / k  # a member's share of a population's time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations, one repeat")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    iterations, repeats = (60, 1) if args.quick else (300, 2)
    data = load_dataset("mnist")
    per_network_seconds(data, 2, 60, 20, True)  # warm-up
    per_network_seconds(data, 2, 60, 20, False)
    rows = []
    for batch in BATCHES:
        for k in SIZES:
            alone = min(per_network_seconds(data, k, batch, iterations, False) for _ in range(repeats))
            together = min(per_network_seconds(data, k, batch, iterations, True) for _ in range(repeats))
            rows.append({"k": k, "batch_size": batch,
                         "population_s_per_1000_it_per_network": 1000 * together / iterations,
                         "one_at_a_time_s_per_1000_it_per_network": 1000 * alone / iterations,
                         "speedup": alone / together})
    result = {"benchmark": "population", "model": "lenet300_100", "dataset": "mnist", "optimizer": "adam",
              "iterations_measured": iterations, "repeats": repeats, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "machine": platform.machine(),
              "device": "cpu", "rows": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")

    table = Table(title=f"LeNet-300-100 on MNIST, Adam, {torch.get_num_threads()} thread(s): s / 1000 it per network")
    for column in ("batch", "K", "population", "one at a time", "speed-up"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(str(row["batch_size"]), str(row["k"]), f"{row['population_s_per_1000_it_per_network']:.3f}",
                      f"{row['one_at_a_time_s_per_1000_it_per_network']:.3f}", f"{row['speedup']:.2f}x")
    Console().print(table)
    Console().print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
