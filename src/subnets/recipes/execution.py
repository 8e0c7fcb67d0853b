"""How to execute a run's trainings (worker processes, populations, sparse layers): settings of a run, not of its
recipe (they change speed, not results, and are not part of the run id). Imports only the standard library."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Execution:
    """How to run trainings, apart from what to train: results agree up to float rounding either way.

    ``population_size``: up to this many networks that share a schedule train in one batched pass.
    ``sparse_below``: masked linear layers with a density below this train in sparse (CSR) form.
    ``workers``: this many processes train networks concurrently, each with its share of the threads
    (:mod:`subnets.train.workers`); it excludes populations.
    """

    population_size: int = 1
    sparse_below: float = 0.0
    workers: int = 1

    def __post_init__(self) -> None:
        if self.population_size < 1:
            raise ValueError(f"population size must be at least 1, got {self.population_size}")
        if not 0.0 <= self.sparse_below <= 1.0:
            raise ValueError(f"sparse_below must be a density in [0, 1], got {self.sparse_below}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.workers > 1 and self.population_size > 1:
            raise ValueError("workers and population size: choose one (each worker trains one network at a time)")


ONE_AT_A_TIME = Execution()
