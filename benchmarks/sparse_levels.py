"""Dense masked training against sparse training at lottery levels: LeNet-300-100 on MNIST, Adam, batch 60.

At the levels of the paper's schedule (20% of each hidden layer and 10% of the output layer per level) whose
weights remaining are about 100%, 51%, 21%, 7%, 3.6% and 1%, trains the same masked network with
``subnets.train.train`` on the dense masked path and with every masked layer in sparse form
(``sparse_below`` above 1), in the same process on the same data, and reports seconds of training per
1,000 iterations (evaluations left out). Writes ``benchmarks/results/sparse_levels.json``.

    python benchmarks/sparse_levels.py [--quick] [--threads 1,2]
"""

from __future__ import annotations

import torch
from common import parse_args, write_result
from rich.console import Console
from rich.table import Table

from subnets.data import load_dataset
from subnets.masks import Mask
from subnets.models import build_model, prunable_layers
from subnets.train import TrainConfig, train

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
    args = parse_args(__doc__)
    iterations, repeats = (100, 1) if args.quick else (1000, 3)
    data = load_dataset("mnist")
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        seconds(data, 3, 20, True)  # warm-up
        seconds(data, 3, 20, False)
        for label, level in LEVELS.items():
            dense = sparse = float("inf")
            for _ in range(repeats):  # interleaved, so that machine noise hits both paths alike
                dense = min(dense, seconds(data, level, iterations, False)[0])
                sparse = min(sparse, seconds(data, level, iterations, True)[0])
            rows.append({"threads": threads, "weights_remaining": label, "level": level,
                         "density": seconds(data, level, 1, False)[1],
                         "dense_s_per_1000_it": 1000 * dense / iterations,
                         "sparse_s_per_1000_it": 1000 * sparse / iterations, "sparse_over_dense": sparse / dense})
    path = write_result("sparse_levels", {"model": "lenet300_100", "dataset": "mnist", "optimizer": "adam",
                                          "batch_size": 60, "iterations_measured": iterations,
                                          "repeats": repeats, "rows": rows})

    table = Table(title="LeNet-300-100, Adam, batch 60: s / 1000 it")
    for column in ("threads", "weights remaining", "level", "dense masked", "sparse", "sparse / dense"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(str(row["threads"]), f"{100 * row['density']:.2f}%", str(row["level"]),
                      f"{row['dense_s_per_1000_it']:.3f}", f"{row['sparse_s_per_1000_it']:.3f}",
                      f"{100 * row['sparse_over_dense']:.0f}%")
    Console().print(table)
    Console().print(f"written to {path}")


if __name__ == "__main__":
    main()
