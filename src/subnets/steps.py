"""Idempotent steps: the contract between an experiment and the run store.

An experiment is a sequence of steps (one training, one pruning level of one branch and seed, ...). Each
step is looked up by key before it is computed; a step whose result is stored is skipped, so a killed run
resumes where it stopped and loses at most the step in progress. ``subnets.runs`` provides the store;
method families only see this protocol.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
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


def run_trainings(steps: StepStore, progress: Progress, task: str, variants: Sequence[str], seeds: Sequence[int],
                  train: Callable[[str, int], tuple[dict[str, Any], dict[str, Tensors]]],
                  describe: Callable[[dict[str, Any]], str]) -> list[dict[str, Any]]:
    """Run (or resume) one training per variant and seed (seeds outer), each stored as the step
    ``{variant}/s{seed}``; ``describe(result)`` is the log line after the key. Returns every step's result."""
    return run_units(steps, progress, task, [(variant, seed) for seed in seeds for variant in variants], train,
                     describe)


def run_units(steps: StepStore, progress: Progress, task: str, units: Sequence[tuple[str, int]],
              train: Callable[[str, int], tuple[dict[str, Any], dict[str, Tensors]]],
              describe: Callable[[dict[str, Any]], str]) -> list[dict[str, Any]]:
    """Run (or resume) ``train(variant, seed)`` for each ``(variant, seed)`` of ``units`` in order, each stored as
    the step ``{variant}/s{seed}``; ``describe(result)`` is the log line after the key. Returns every result."""
    progress.start(task, len(units), f"trainings ({task} variant x seed)")
    results = []
    for variant, seed in units:
        key = f"{variant}/s{seed}"
        found = steps.get_step(key)
        if found is None:
            found = train(variant, seed)
            store_step(steps, progress, key, *found, f"{key}: {describe(found[0])}")
        results.append(found[0])
        progress.advance(task, 1, variant=variant, seed=seed)
    progress.finish(task)
    return results
