"""Dense masked training against sparse training at lottery levels: LeNet-300-100 on MNIST.

At the levels of the paper's schedule (20% of each hidden layer and 10% of the output layer per level) whose
weights remaining are about 100%, 51%, 21%, 17%, 13%, 11%, 7%, 3.6% and 1%, trains the same masked network
with ``subnets.train.train`` on the dense masked path and with every masked layer in sparse form
(``sparse_below`` above 1), in the same process on the same data, and reports seconds of training per
1,000 iterations (evaluations left out). Two settings: the paper's (Adam, batch 60) and open_lth's
(SGD, batch 128). The crossover density (where sparse starts to win) is the threshold to pass as
``--sparse-below``. Writes ``benchmarks/results/sparse_levels.json``.

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

LEVELS = {"100%": 0, "51%": 3, "21%": 7, "17%": 8, "13%": 9, "11%": 10, "7%": 12, "3.6%": 15, "1%": 21}
SETTINGS = {"adam, batch 60": TrainConfig(optimizer="adam", lr=1.2e-3, batch_size=60),
            "sgd, batch 128": TrainConfig(optimizer="sgd", lr=0.1, batch_size=128)}
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


def seconds(data, setting: TrainConfig, level: int, iterations: int, sparse: bool) -> tuple[float, float]:
    """Training seconds (evaluations left out) and the mask's density."""
    torch.manual_seed(0)
    model = build_model("lenet300_100", (1, 28, 28), 10)
    mask = level_mask(model, level)
    config = setting.model_copy(update={"length": f"{iterations}it", "eval_every": f"{iterations}it"})
    result = train(model, data, config, seed=0, mask=mask, sparse_below=1.01 if sparse else 0.0)
    return result.seconds - result.eval_seconds, mask.density()


def main() -> None:
    args = parse_args(__doc__)
    iterations, repeats = (100, 1) if args.quick else (1000, 3)
    data = load_dataset("mnist")
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, setting in SETTINGS.items():
            seconds(data, setting, 3, 20, True)  # warm-up
            seconds(data, setting, 3, 20, False)
            for label, level in LEVELS.items():
                dense = sparse = float("inf")
                for _ in range(repeats):  # interleaved, so that machine noise hits both paths alike
                    dense = min(dense, seconds(data, setting, level, iterations, False)[0])
                    sparse = min(sparse, seconds(data, setting, level, iterations, True)[0])
                rows.append({"threads": threads, "setting": name, "weights_remaining": label, "level": level,
                             "density": seconds(data, setting, level, 1, False)[1],
                             "dense_s_per_1000_it": 1000 * dense / iterations,
                             "sparse_s_per_1000_it": 1000 * sparse / iterations,
                             "sparse_over_dense": sparse / dense})
    path = write_result("sparse_levels", {"model": "lenet300_100", "dataset": "mnist",
                                          "settings": {k: v.model_dump() for k, v in SETTINGS.items()},
                                          "iterations_measured": iterations, "repeats": repeats, "rows": rows})

    table = Table(title="LeNet-300-100 on MNIST: s / 1000 it")
    for column in ("threads", "setting", "weights remaining", "level", "dense masked", "sparse", "sparse / dense"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(str(row["threads"]), row["setting"], f"{100 * row['density']:.2f}%", str(row["level"]),
                      f"{row['dense_s_per_1000_it']:.3f}", f"{row['sparse_s_per_1000_it']:.3f}",
                      f"{100 * row['sparse_over_dense']:.0f}%")
    Console().print(table)
    Console().print(f"written to {path}")


if __name__ == "__main__":
    main()
