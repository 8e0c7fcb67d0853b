"""Dense masked training against sparse training at lottery levels: LeNet-300-100 on MNIST, Adam, batch 60.

At the levels of the paper's schedule (20% of each hidden layer and 10% of the output layer per level) whose
weights remaining are about 100%, 51%, 21%, 7%, 3.6% and 1%, trains the same masked network with
``subnets.train.train`` on the dense masked path and with every masked layer in sparse form
(``sparse_below`` above 1), in the same process on the same data, and reports seconds of training per
1,000 iterations (evaluations left out). Writes ``benchmarks/results/sparse_levels.json``.

    python benchmarks/sparse_levels.py [--quick] [--threads N]
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
from subnets.masks import Mask
from subnets.models import build_model, prunable_layers
from subnets.train import TrainConfig, train

RESULTS = Path(__file__).parent / "results" / "sparse_levels.json"
LEVELS = {"100%": 0, "51%": 3, "21%": 7, "7%": 12, "3.6%": 15, "1%": 21}
RATES = {"fc": 0.2, "output": 0.1}


def level_mask(model: torch.nn.Module, level: int) -> Mask:
    """A random mask with the per-layer counts of the paper's schedule at ``level``."""
    generator = torch.Generator().manual_seed(level)
    kept = {}
    for name, kind in prunable_layers(model).items():
        weight = model.get_parameter(name)
        count = max(1, round(weight.numel() * (1 - RATES[kind]) ** level))
        keep = torch.zeros(weight.numel(), dtype=torch.bool)
        keep[torch.randperm(weight.numel(), generator=generator)[:count]] = True
        kept[name] = keep.view_as(weight)
    return Mask(kept)


def seconds(data, level: int, iterations: int, sparse: bool) -> tuple[float, float]:
    """Training seconds (evaluations left out) and the mask's density."""
    torch.manual_seed(0)
    model = build_model("lenet300_100", (1, 28, 28), 10)
    mask = level_mask(model, level)
    config = TrainConfig(length=f"{iterations}it", eval_every=f"{iterations}it")
    result = train(model, data, config, seed=0, mask=mask, sparse_below=1.01 if sparse else 0.0)
    return result.seconds - result.eval_seconds, mask.density()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations, one repeat")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    iterations, repeats = (100, 1) if args.quick else (1000, 3)
    data = load_dataset("mnist")
    seconds(data, 3, 20, True)  # warm-up
    seconds(data, 3, 20, False)
    rows = []
    for label, level in LEVELS.items():
        dense = sparse = float("inf")
        for _ in range(repeats):  # interleaved, so that machine noise hits both paths alike
            dense = min(dense, seconds(data, level, iterations, False)[0])
            sparse = min(sparse, seconds(data, level, iterations, True)[0])
        density = seconds(data, level, 1, False)[1]
        rows.append({"weights_remaining": label, "level": level, "density": density,
                     "dense_s_per_1000_it": 1000 * dense / iterations,
                     "sparse_s_per_1000_it": 1000 * sparse / iterations, "sparse_over_dense": sparse / dense})
    result = {"benchmark": "sparse_levels", "model": "lenet300_100", "dataset": "mnist", "optimizer": "adam",
              "batch_size": 60, "iterations_measured": iterations, "repeats": repeats, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "machine": platform.machine(), "rows": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")

    table = Table(title=f"LeNet-300-100, Adam, batch 60, {torch.get_num_threads()} thread(s): s / 1000 it")
    for column in ("weights remaining", "level", "dense masked", "sparse", "sparse / dense"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(f"{100 * row['density']:.2f}%", str(row["level"]), f"{row['dense_s_per_1000_it']:.3f}",
                      f"{row['sparse_s_per_1000_it']:.3f}", f"{100 * row['sparse_over_dense']:.0f}%")
    Console().print(table)
    Console().print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
