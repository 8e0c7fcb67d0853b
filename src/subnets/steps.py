"""Idempotent steps: the contract between an experiment and the run store.

An experiment is a sequence of steps (one training, one pruning level of one branch and seed, ...). Each
step is looked up by key before it is computed; a step whose result is stored is skipped, so a killed run
resumes where it stopped and loses at most the step in progress. ``subnets.runs`` provides the store;
method families only see this protocol.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from subnets.progress import Progress

Tensors = dict[str, torch.Tensor]


class StepStore(Protocol):
    """Where an experiment finds and keeps the results of its steps."""

    def get_step(self, key: str) -> tuple[dict[str, Any], dict[str, Tensors]] | None:
        """The step's JSON result and its tensor groups, or None when the step has not finished or one
        of its tensor files is missing or fails its content hash (the step is then computed again)."""

    def put_step(self, key: str, result: dict[str, Any], tensors: dict[str, Tensors] | None = None,
                 log: str | None = None) -> None:
        """Store a finished step atomically, with ``log`` (if given) as its line in the run log: either all of
        it is visible afterwards or none of it."""

    def log(self, message: str) -> None:
        """A line for the run log."""


class MemoryStepStore:
    """A :class:`StepStore` in memory, for library use without a run store and for tests."""

    def __init__(self) -> None:
        self.steps: dict[str, tuple[dict[str, Any], dict[str, Tensors]]] = {}
        self.lines: list[str] = []

    def get_step(self, key: str) -> tuple[dict[str, Any], dict[str, Tensors]] | None:
        return self.steps.get(key)

    def put_step(self, key: str, result: dict[str, Any], tensors: dict[str, Tensors] | None = None,
                 log: str | None = None) -> None:
        self.steps[key] = (result, {g: {k: v.detach().cpu().clone() for k, v in t.items()}
                                    for g, t in (tensors or {}).items()})
        if log is not None:
            self.lines.append(log)

    def log(self, message: str) -> None:
        self.lines.append(message)


def store_step(steps: StepStore, progress: Progress, key: str, result: dict[str, Any],
               tensors: dict[str, Tensors] | None, line: str) -> None:
    """Store a finished step with ``line`` as its log line, in one transaction (a run killed in between would
    otherwise keep the step without its line), and show the line."""
    steps.put_step(key, result, tensors, log=line)
    progress.log(line)


def derive_seed(*parts: object) -> int:
    """A 63-bit seed determined by ``parts`` (e.g. the recipe seed, a level and a purpose)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


Unit = Callable[[str, int], tuple[dict[str, Any], dict[str, Tensors]]]


@dataclass(frozen=True)
class UnitWorkers:
    """Run independent units in ``count`` worker processes: ``make(progress)`` (picklable, e.g. a
    ``functools.partial`` of a module-level function) builds the unit function in each worker."""

    count: int
    make: Callable[[Progress], Unit]


def run_trainings(steps: StepStore, progress: Progress, task: str, variants: Sequence[str], seeds: Sequence[int],
                  train: Unit, describe: Callable[[dict[str, Any]], str],
                  workers: UnitWorkers | None = None) -> list[dict[str, Any]]:
    """Run (or resume) one training per variant and seed (seeds outer), each stored as the step
    ``{variant}/s{seed}``; ``describe(result)`` is the log line after the key. Returns every step's result."""
    return run_units(steps, progress, task, [(variant, seed) for seed in seeds for variant in variants], train,
                     describe, workers)


def run_units(steps: StepStore, progress: Progress, task: str, units: Sequence[tuple[str, int]], train: Unit,
              describe: Callable[[dict[str, Any]], str], workers: UnitWorkers | None = None) -> list[dict[str, Any]]:
    """Run (or resume) ``train(variant, seed)`` for each ``(variant, seed)`` of ``units``, each stored as the step
    ``{variant}/s{seed}``; ``describe(result)`` is the log line after the key. Returns every result, in the order
    of ``units``.

    With ``workers`` of more than one process the units not yet stored run there, as many at once as there are
    workers, and are stored here (one writer) as they finish; each unit's result is what the unit function gives
    in a process with the worker's thread count.
    """
    progress.start(task, len(units), f"trainings ({task} variant x seed)")
    found: dict[tuple[str, int], dict[str, Any]] = {}
    pending = []
    for variant, seed in units:
        stored = steps.get_step(f"{variant}/s{seed}")
        if stored is None:
            pending.append((variant, seed))
        else:
            found[variant, seed] = stored[0]
            progress.advance(task, 1, variant=variant, seed=seed)

    def store(variant: str, seed: int, result: dict[str, Any], tensors: dict[str, Tensors]) -> None:
        key = f"{variant}/s{seed}"
        store_step(steps, progress, key, result, tensors, f"{key}: {describe(result)}")
        found[variant, seed] = result
        progress.advance(task, 1, variant=variant, seed=seed)

    if workers is not None and workers.count > 1 and len(pending) > 1:
        from subnets.train.workers import UnitPool

        with UnitPool(min(workers.count, len(pending)), workers.make) as pool:
            for variant, seed in pending:
                pool.submit(variant, seed)
            while pool.pending:
                store(*pool.next_done())
    else:
        for variant, seed in pending:
            store(variant, seed, *train(variant, seed))
    progress.finish(task)
    return [found[unit] for unit in units]
