"""Training several networks (or running several units of an experiment) at once in worker processes, each
with its share of the CPU threads.

On a small CPU, one small network cannot keep every core busy: its matmuls are too small to split well
across threads, and the rest of a step is single-threaded Python. Two processes with one thread each train
two networks in about the time one takes, without changing either network's arithmetic (each trains with
:func:`subnets.train.train` exactly as it would in the parent with that many threads).

:class:`TrainingPool` starts ``workers`` spawned processes that each hold the dataset and train the jobs
they are given; :meth:`TrainingPool.submit` queues one training and :meth:`TrainingPool.next_done` returns
the next finished one. Tensors travel as numpy arrays (pickled bytes), so nothing keeps shared-memory file
descriptors open. A worker that dies or raises turns into an exception in the parent, and a worker whose
parent is gone (killed) exits on its own: within a second when idle, at its training's next evaluation
when busy.

:class:`UnitPool` does the same for whole units of an experiment whose units are independent (a pooling op and
seed, an MoE variant and seed, a table, method and fold): each worker builds the experiment's unit function
once, from a picklable factory, and runs the ``(variant, seed)`` units it is given; the parent stores the results,
so the run store keeps one writer.
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as mp
from torch import nn

from subnets.data import Dataset
from subnets.masks import Mask
from subnets.progress import Progress
from subnets.recipes.training import TrainConfig
from subnets.train.loop import TrainResult, train

POLL_SECONDS = 1.0


@dataclass(frozen=True)
class Done:
    """A finished job: its key, the trained weights (CPU) and the training's result."""

    key: str
    state: dict[str, torch.Tensor]
    result: TrainResult


class WorkerFailed(RuntimeError):
    """A worker raised (the message carries its traceback) or exited unexpectedly."""


def _to_numpy(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in tensors.items()}


def _to_torch(arrays: dict[str, np.ndarray], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v).to(device) for k, v in arrays.items()}


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies, however it dies (SIGTERM, SIGKILL, a crash), so that
    no worker outlives its run even while deep in a training; elsewhere the parent checks of :class:`_ParentWatch`
    remain the only guard."""
    if sys.platform != "linux":
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


class _ParentWatch(Progress):
    """Ends the worker at once when its parent is gone, checked at every progress report of a training.

    ``os._exit``: a normal exit would wait for the result queue's feeder thread, which may block forever on
    a pipe that nobody reads any more.
    """

    def __init__(self, parent: int) -> None:
        self.parent = parent
        _die_with_parent()

    def advance(self, key: str, steps: int = 1, **metrics: float) -> None:
        self.check()

    def check(self) -> None:
        """Exit if the parent process has died (this process was handed to another parent)."""
        if os.getppid() != self.parent:
            os._exit(1)


def _serve(data: Dataset, config: TrainConfig, build: Callable[[], nn.Module], device: str, threads: int,
           parent: int, jobs: Any, done: Any) -> None:
    """A worker's life: take jobs until its parent stops it or is gone; send back each outcome."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the workers
    torch.set_num_threads(threads)
    data = data.to(device)
    watch = _ParentWatch(parent)
    while True:
        watch.check()
        try:
            key, state, mask, options = jobs.get(timeout=POLL_SECONDS)
        except queue.Empty:
            continue
        try:
            model = build().to(device)
            model.load_state_dict(_to_torch(state, device))
            result = train(model, data, config, mask=Mask(_to_torch(mask, device)) if mask is not None else None,
                           progress=watch, **options)
            checkpoints = {i: _to_numpy(c) for i, c in result.checkpoints.items()}
            done.put((key, _to_numpy(model.state_dict()), replace(result, checkpoints={}), checkpoints, None))
        except Exception:  # noqa: BLE001 - any failure goes back to the parent, which raises it
            done.put((f"training {key}", None, None, None, traceback.format_exc()))


class _Pool:
    """``workers`` spawned processes running ``serve(*args, threads, parent, jobs, done)``, with the queues, the
    failure checks and the shutdown every pool shares. ``threads``: each worker's torch thread count (default: this
    process's count split evenly, at least 1). Use as a context manager; leaving it stops the workers."""

    def __init__(self, workers: int, serve: Callable[..., None], args: tuple, threads: int | None) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.threads = threads or max(1, torch.get_num_threads() // workers)
        context = mp.get_context("spawn")
        self._jobs, self._done = context.Queue(), context.Queue()
        self._processes = [
            context.Process(target=serve, daemon=True, name=f"subnets-worker-{i}",
                            args=(*args, self.threads, os.getpid(), self._jobs, self._done))
            for i in range(workers)
        ]
        for process in self._processes:
            process.start()
        self.pending = 0

    def __enter__(self) -> _Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _put(self, job: tuple) -> None:
        self._jobs.put(job)
        self.pending += 1

    def _get(self) -> tuple:
        """The next finished job's message (its key first, its error last); raise :class:`WorkerFailed` if a
        worker failed or died."""
        if self.pending == 0:
            raise RuntimeError("no job is pending")
        while True:
            try:
                message = self._done.get(timeout=POLL_SECONDS)
                break
            except queue.Empty:
                dead = [p for p in self._processes if not p.is_alive()]
                if dead:
                    raise WorkerFailed(f"{dead[0].name} exited with code {dead[0].exitcode}") from None
        self.pending -= 1
        if message[-1] is not None:
            raise WorkerFailed(f"{message[0]} failed in a worker:\n{message[-1]}")
        return message

    def close(self) -> None:
        """Stop every worker now (a job in progress is abandoned)."""
        for process in self._processes:
            if process.is_alive():
                process.terminate()
        for process in self._processes:
            process.join()
        self._jobs.close()
        self._done.close()


class TrainingPool(_Pool):
    """``workers`` processes training networks built by ``build`` on ``data`` with ``config``.

    ``threads`` is each worker's torch thread count (default: this process's count split evenly, at
    least 1). Use as a context manager; leaving it stops the workers, finished or not.
    """

    def __init__(self, workers: int, data: Dataset, config: TrainConfig, build: Callable[[], nn.Module],
                 device: torch.device | str = "cpu", threads: int | None = None) -> None:
        super().__init__(workers, _serve, (data.to("cpu"), config, build, str(device)), threads)

    def submit(self, key: str, model: nn.Module, *, seed: int, mask: Mask | None = None, start_iteration: int = 0,
               checkpoint_at: tuple[int, ...] = (), sparse_below: float = 0.0) -> None:
        """Queue the training of (a copy of) ``model``, as :func:`subnets.train.train` takes it."""
        options = {"seed": seed, "start_iteration": start_iteration, "checkpoint_at": checkpoint_at,
                   "sparse_below": sparse_below}
        self._put((key, _to_numpy(model.state_dict()), _to_numpy(mask.state_dict()) if mask is not None else None,
                   options))

    def next_done(self) -> Done:
        """Wait for the next finished job; raise :class:`WorkerFailed` if a worker failed or died."""
        key, state, result, checkpoints, _ = self._get()
        result.checkpoints = {i: _to_torch(c) for i, c in checkpoints.items()}
        return Done(key, _to_torch(state), result)


UnitFunction = Callable[[str, int], tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]]]


def _serve_units(make: Callable[[Progress], UnitFunction], threads: int, parent: int, jobs: Any, done: Any) -> None:
    """A unit worker's life: build the unit function once, then run units until the parent stops it or is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    watch = _ParentWatch(parent)
    run = make(watch)
    while True:
        watch.check()
        try:
            variant, seed = jobs.get(timeout=POLL_SECONDS)
        except queue.Empty:
            continue
        try:
            result, tensors = run(variant, seed)
            done.put((variant, seed, result, {g: _to_numpy(t) for g, t in tensors.items()}, None))
        except Exception:  # noqa: BLE001 - any failure goes back to the parent, which raises it
            done.put((f"unit {variant}/s{seed}", None, None, None, traceback.format_exc()))


class UnitPool(_Pool):
    """``workers`` processes running units ``(variant, seed)`` of one experiment.

    ``make(progress)`` (picklable: a module-level function or a ``functools.partial`` of one) builds the unit
    function ``(variant, seed) -> (result, tensor groups)`` in each worker; ``progress`` is the worker's own (it
    ends the worker when the parent is gone). Results come back in the order units finish.
    """

    def __init__(self, workers: int, make: Callable[[Progress], UnitFunction], threads: int | None = None) -> None:
        super().__init__(workers, _serve_units, (make,), threads)

    def submit(self, variant: str, seed: int) -> None:
        """Queue the unit ``(variant, seed)``."""
        self._put((variant, seed))

    def next_done(self) -> tuple[str, int, dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
        """Wait for the next finished unit: its variant, seed, result and tensor groups (CPU)."""
        variant, seed, result, tensors, _ = self._get()
        return variant, seed, result, {g: _to_torch(t) for g, t in tensors.items()}
