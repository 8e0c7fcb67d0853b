"""Populations against one-at-a-time training: LeNet-300-100 on MNIST, Adam, K networks.

For each K in 1, 2, 4, 8, 16 and batch 60 and 128, trains K masked networks (different initialisations,
seeds and masks) once as a population (``subnets.train.train_population``) and once one after another
(``subnets.train.train``), in the same process on the same data, and reports seconds of training per 1,000
iterations per network (evaluations left out) and the speed-up of the population. At more than one thread
it also trains the K networks one at a time in as many worker processes as threads, one thread each
(``subnets.train.TrainingPool``): the jobs' training seconds divided by the number of workers running at
once. Writes ``benchmarks/results/population.json`` with a ``speedup`` (and ``workers_speedup``) per K and
batch size.

    python benchmarks/population.py [--quick] [--threads 1,2]
"""

from __future__ import annotations

from functools import partial

import torch
from common import parse_args, write_result
from rich.console import Console
from rich.table import Table

from subnets.data import load_dataset
from subnets.masks import Mask, layerwise_magnitude
from subnets.models import build_model, prunable_layers
from subnets.train import TrainConfig, TrainingPool, train, train_population

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


def per_network_seconds_in_workers(data, k: int, batch: int, iterations: int, workers: int) -> float:
    """Seconds of training steps per network when ``workers`` one-thread processes share the ``k`` jobs."""
    config = TrainConfig(length=f"{iterations}it", eval_every=f"{iterations}it", batch_size=batch)
    models, masks = _members(k)
    build = partial(build_model, "lenet300_100", (1, 28, 28), 10)
    with TrainingPool(workers, data, config, build, threads=1) as pool:
        pool.submit("warm-up", models[0], seed=0, mask=masks[0])
        pool.next_done()
        for member, (model, mask) in enumerate(zip(models, masks, strict=True)):
            pool.submit(str(member), model, seed=member, mask=mask)
        results = [pool.next_done().result for _ in range(k)]
    return sum(r.seconds - r.eval_seconds for r in results) / k / min(k, workers)


def main() -> None:
    args = parse_args(__doc__)
    iterations, repeats = (60, 1) if args.quick else (300, 2)
    data = load_dataset("mnist")
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        per_network_seconds(data, 2, 60, 20, True)  # warm-up
        per_network_seconds(data, 2, 60, 20, False)
        for batch in BATCHES:
            for k in SIZES:
                alone = together = in_workers = float("inf")
                for _ in range(repeats):  # interleaved, so that machine noise hits all alike
                    alone = min(alone, per_network_seconds(data, k, batch, iterations, False))
                    together = min(together, per_network_seconds(data, k, batch, iterations, True))
                    if threads > 1:
                        in_workers = min(in_workers,
                                         per_network_seconds_in_workers(data, k, batch, iterations, threads))
                row = {"threads": threads, "k": k, "batch_size": batch,
                       "population_s_per_1000_it_per_network": 1000 * together / iterations,
                       "one_at_a_time_s_per_1000_it_per_network": 1000 * alone / iterations,
                       "speedup": alone / together}
                if threads > 1:
                    row.update(workers=threads, workers_s_per_1000_it_per_network=1000 * in_workers / iterations,
                               workers_speedup=alone / in_workers)
                rows.append(row)
    path = write_result("population", {"model": "lenet300_100", "dataset": "mnist", "optimizer": "adam",
                                       "device": "cpu", "iterations_measured": iterations, "repeats": repeats,
                                       "rows": rows})

    table = Table(title="LeNet-300-100 on MNIST, Adam: s / 1000 it per network")
    for column in ("threads", "batch", "K", "population", "one at a time", "speed-up", "in workers", "speed-up"):
        table.add_column(column, justify="right")
    for row in rows:
        workers = ((f"{row['workers_s_per_1000_it_per_network']:.3f}", f"{row['workers_speedup']:.2f}x")
                   if "workers" in row else ("", ""))
        table.add_row(str(row["threads"]), str(row["batch_size"]), str(row["k"]),
                      f"{row['population_s_per_1000_it_per_network']:.3f}",
                      f"{row['one_at_a_time_s_per_1000_it_per_network']:.3f}", f"{row['speedup']:.2f}x", *workers)
    Console().print(table)
    Console().print(f"written to {path}")


if __name__ == "__main__":
    main()
