"""Where a training step's time goes: LeNet-300-100 on MNIST, SGD batch 128, dense masked against sparse.

At the lottery level with 3.6% of the weights (the paper's per-layer schedule, as in ``sparse_levels.py``),
runs the steps of ``subnets.train.train`` by hand with a clock around each phase: batch gathering, forward,
loss, zero_grad, backward, masking (dense path only) and the optimizer step. Also times ``fc1``'s forward
product alone, dense and CSR, on one batch. Writes ``benchmarks/results/step_phases.json`` with
microseconds per phase per step.

    python benchmarks/step_phases.py [--quick] [--threads 1,2]
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from common import parse_args, write_result
from rich.console import Console
from rich.table import Table
from sparse_levels import level_mask

from subnets.data import Batches, load_dataset
from subnets.masks import MaskedParameters
from subnets.models import build_model
from subnets.train.sparse import SparseLinear, sparsify

LEVEL = 15
PHASES = ("gather", "forward", "loss", "zero_grad", "backward", "masking", "optimizer")


class Stopwatch:
    """Adds the time since the previous tick to a phase's total, while counting."""

    def __init__(self) -> None:
        self.totals = dict.fromkeys(PHASES, 0.0)
        self.counting, self.last = False, 0.0

    def start(self, counting: bool) -> None:
        self.counting, self.last = counting, time.perf_counter()

    def tick(self, phase: str) -> None:
        now = time.perf_counter()
        if self.counting:
            self.totals[phase] += now - self.last
        self.last = now


def phase_microseconds(data, sparse: bool, steps: int, warmup: int) -> dict[str, float]:
    """Mean microseconds per step in each phase, over ``steps`` steps after ``warmup``."""
    torch.manual_seed(0)
    model = build_model("lenet300_100", (1, 28, 28), 10)
    mask = level_mask(model, LEVEL)
    masked = None
    if sparse:
        sparsify(model, mask, 1.01)
    else:
        masked = MaskedParameters(model, mask)
        masked.mask_weights()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, foreach=True)
    batches = Batches(data.x_train, data.y_train, 128, 0)
    watch = Stopwatch()
    tick = watch.tick
    for step in range(warmup + steps):
        watch.start(counting=step >= warmup)
        x, y = batches.next()
        tick("gather")
        logits = model(x)
        tick("forward")
        loss = F.cross_entropy(logits, y)
        tick("loss")
        optimizer.zero_grad(set_to_none=True)
        tick("zero_grad")
        loss.backward()
        tick("backward")
        if masked is not None:
            masked.mask_gradients()
        tick("masking")
        optimizer.step()
        tick("optimizer")
        if masked is not None:
            masked.mask_weights()
        tick("masking")
    return {phase: 1e6 * total / steps for phase, total in watch.totals.items()}


def fc1_product_microseconds(data, repeats: int) -> dict[str, float]:
    """``fc1``'s forward product on one batch of 128, dense (``x @ W.T``) and CSR (``W @ x.T``)."""
    torch.manual_seed(0)
    model = build_model("lenet300_100", (1, 28, 28), 10)
    keep = level_mask(model, LEVEL)["fc1.weight"]
    weight = model.fc1.weight.detach() * keep
    csr = SparseLinear(model.fc1, keep).pattern.matrix(weight[keep])
    x = data.x_train[:128].reshape(128, -1)
    x_t = x.t().contiguous()
    timings = {}
    for name, product in (("dense", lambda: x @ weight.t()), ("sparse", lambda: torch.sparse.mm(csr, x_t))):
        product()
        started = time.perf_counter()
        for _ in range(repeats):
            product()
        timings[name] = 1e6 * (time.perf_counter() - started) / repeats
    return {**timings, "kept_weights": int(keep.sum())}


def main() -> None:
    args = parse_args(__doc__)
    steps, warmup, repeats = (50, 10, 1) if args.quick else (500, 50, 3)
    data = load_dataset("mnist")
    rows, products = [], []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for sparse in (False, True):
            runs = [phase_microseconds(data, sparse, steps, warmup) for _ in range(repeats)]
            best = min(runs, key=lambda r: sum(r.values()))
            rows.append({"threads": threads, "path": "sparse" if sparse else "dense masked",
                         "us_per_step": best, "total_us": sum(best.values())})
        products.append({"threads": threads, **fc1_product_microseconds(data, steps)})
    path = write_result("step_phases", {"model": "lenet300_100", "dataset": "mnist", "optimizer": "sgd",
                                        "batch_size": 128, "level": LEVEL, "steps": steps, "repeats": repeats,
                                        "rows": rows, "fc1_forward_product_us": products})
    table = Table(title=f"LeNet-300-100, SGD batch 128, level {LEVEL} (3.6% of the weights): us per step")
    for column in ("threads", "path", *PHASES, "total"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(str(row["threads"]), row["path"], *(f"{row['us_per_step'][p]:.0f}" for p in PHASES),
                      f"{row['total_us']:.0f}")
    console = Console(width=120)
    console.print(table)
    for row in products:
        console.print(f"{row['threads']} thread(s): fc1 forward product on 128 examples, {row['kept_weights']} kept "
                      f"weights: dense {row['dense']:.0f} us, CSR {row['sparse']:.0f} us")
    console.print(f"written to {path}")


if __name__ == "__main__":
    main()
