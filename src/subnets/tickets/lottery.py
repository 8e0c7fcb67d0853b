"""Iterative magnitude pruning with rewinding, and its controls, as idempotent steps."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from subnets.cost import measure
from subnets.data import Dataset
from subnets.masks import Mask, global_magnitude, layerwise_magnitude, random_like_counts
from subnets.models import build_model, prunable_layers
from subnets.progress import SILENT, Progress
from subnets.recipes.lottery import LotteryConfig, PruneConfig
from subnets.steps import MemoryStepStore, StepStore, Tensors, derive_seed, store_step
from subnets.train import (
    ONE_AT_A_TIME,
    Execution,
    TrainConfig,
    TrainingPool,
    TrainResult,
    parse_duration,
    population_support,
    train,
    train_population,
)


def step_key(level: int, branch: str, seed: int) -> str:
    """The store key of one unit of work."""
    return f"L{level:03d}/{branch}/s{seed}"


def _to_device(tensors: Tensors, device: torch.device) -> Tensors:
    return {k: v.to(device) for k, v in tensors.items()}


class LotteryExperiment:
    """The steps of one lottery recipe. ``run(steps)`` runs or resumes them all against a step store."""

    def __init__(self, config: LotteryConfig, data: Dataset, device: torch.device,
                 progress: Progress = SILENT, execution: Execution = ONE_AT_A_TIME,
                 model: Callable[[], nn.Module] | None = None) -> None:
        """Check the recipe against the data and model (raising ValueError naming what is wrong).

        ``execution`` says how many units may train together in one batched pass and which layers train
        in sparse form (populations do not use the sparse form). ``model``, when given, builds the network in
        place of the recipe's ``[model]`` (it is called after the global RNG is seeded; picklable for workers).
        """
        self.config, self.data, self.device, self.progress = config, data, device, progress
        spec = config.model
        self.make_model = model or partial(build_model, spec.name, data.input_shape, data.num_classes,
                                           **spec.options)
        self.execution = execution
        self.steps: StepStore = MemoryStepStore()
        steps_per_epoch = len(data.y_train) // config.train.batch_size
        self.rewind_iter = parse_duration(config.prune.rewind, steps_per_epoch)
        total = config.train.iterations(steps_per_epoch)
        if self.rewind_iter >= total:
            raise ValueError(f"prune.rewind ({config.prune.rewind}) must be earlier than train.length "
                             f"({config.train.length})")
        probe = self.build(0)
        self.model_name = type(probe).__name__
        self.kinds = prunable_layers(probe)
        self.population_reason = population_support(probe)
        self.rates = config.prune.layer_rates(self.kinds)
        self.global_layers = config.prune.global_layers(self.kinds)
        self._cache: dict[str, tuple[dict[str, Any], dict[str, Tensors]]] = {}

    def build(self, init_seed: int) -> nn.Module:
        """A freshly initialised model; its initialisation depends only on ``init_seed``."""
        torch.manual_seed(init_seed)
        return self.make_model().to(self.device)

    def units(self) -> list[tuple[int, str, int]]:
        """Every (level, branch, seed) of the recipe, level by level."""
        return [(level, branch, seed)
                for level in range(self.config.prune.levels + 1)
                for seed in self.config.seeds
                for branch in (("imp",) if level == 0 else self.config.prune.branches)]

    def ensure(self, level: int, branch: str, seed: int) -> tuple[dict[str, Any], dict[str, Tensors]]:
        """The stored step, computing it (and the imp steps it depends on) when missing or corrupt."""
        key = step_key(level, branch, seed)
        if self._lookup(level, branch, seed) is None:
            self._compute([(level, branch, seed)])
        return self._cache[key]

    def mask(self, level: int, seed: int) -> Mask:
        """The imp mask of ``level``: the previous level's mask pruned by the previous level's final weights."""
        if level == 0:
            return Mask.ones_like(self.build(0), self.kinds)
        _, tensors = self.ensure(level - 1, "imp", seed)
        model = self.build(0)
        model.load_state_dict(_to_device(tensors["final"], self.device))
        previous = Mask(tensors["mask"]).to(self.device)
        kept, sizes = previous.kept(), previous.sizes()

        def fraction(kept_now: int, size: int, rate: float) -> float:
            # Prune to round(size * (1 - rate)^level) weights: the schedule holds exactly at every level
            # instead of drifting by a rounding error per level.
            target = max(1, round(size * (1.0 - rate) ** level))
            return 1.0 - min(target, kept_now) / kept_now

        if self.config.prune.method == "global":
            layers = self.global_layers
            rate = fraction(sum(kept[n] for n in layers), sum(sizes[n] for n in layers),
                            self.config.prune.global_rate)
            return global_magnitude(model, previous, rate, layers)
        return layerwise_magnitude(model, previous,
                                   {n: fraction(kept[n], sizes[n], self.rates[n]) for n in previous})

    def initial(self, level: int, branch: str, seed: int) -> tuple[nn.Module, Mask, int]:
        """The model a step starts from, its mask and its first iteration.

        Level 0 is the dense network from the seed's initialisation. Above it, ``imp`` and ``random_prune``
        start from the dense run's weights at the rewind iteration, ``reinit`` from a fresh initialisation;
        all three then train from the rewind iteration to the end, under their mask.
        """
        mask = self.mask(level, seed)
        model = self.build(derive_seed(seed, "init"))
        if level == 0:
            return model, mask.to(self.device), 0
        if branch == "reinit":
            model = self.build(derive_seed(seed, level, "reinit"))
        else:
            _, dense = self.ensure(0, "imp", seed)
            model.load_state_dict(_to_device(dense["rewind"], self.device))
        if branch == "random_prune":
            generator = torch.Generator().manual_seed(derive_seed(seed, level, "random_prune"))
            mask = random_like_counts(mask.to("cpu"), generator)
        mask = mask.to(self.device)
        mask.apply(model)
        return model, mask, self.rewind_iter

    def _lookup(self, level: int, branch: str, seed: int) -> tuple[dict[str, Any], dict[str, Tensors]] | None:
        """The step from the cache or the store, or None when it has not finished (or is corrupt)."""
        key = step_key(level, branch, seed)
        if key not in self._cache:
            found = self.steps.get_step(key)
            if found is None:
                return None
            self._cache[key] = found
        return self._cache[key]

    @staticmethod
    def _data_seed(seed: int) -> int:
        """The data-order seed of every unit of recipe seed ``seed`` (rewound units replay its batches)."""
        return derive_seed(seed, "data")

    def _checkpoint_at(self, level: int) -> tuple[int, ...]:
        """Iterations whose weights a unit of ``level`` keeps: level 0 keeps the rewind point."""
        return (self.rewind_iter,) if level == 0 else ()

    def _compute(self, units: list[tuple[int, str, int]]) -> None:
        """Train ``units`` (all of one level), as one population when the model allows, and store each."""
        level = units[0][0]
        starts = [self.initial(*unit) for unit in units]
        models, masks = [m for m, _, _ in starts], [k for _, k, _ in starts]
        start = starts[0][2]
        data_seeds = [self._data_seed(seed) for _, _, seed in units]
        checkpoint_at = self._checkpoint_at(level)
        batched = len(units) > 1 and self.population_reason is None
        if batched:
            outcomes = train_population(models, self.data, self.config.train, seeds=data_seeds, masks=masks,
                                        start_iteration=start, checkpoint_at=checkpoint_at, progress=self.progress,
                                        progress_key=f"{step_key(*units[0])} + {len(units) - 1} more")
        else:
            outcomes = [train(model, self.data, self.config.train, seed=data_seed, mask=mask, start_iteration=start,
                              checkpoint_at=checkpoint_at, progress=self.progress, progress_key=step_key(*unit),
                              sparse_below=self.execution.sparse_below)
                        for unit, model, mask, data_seed in zip(units, models, masks, data_seeds, strict=True)]
        for unit, model, mask, outcome in zip(units, models, masks, outcomes, strict=True):
            self._store(unit, model, mask, start, outcome, len(units) if batched else 1)

    def _store(self, unit: tuple[int, str, int], model: nn.Module, mask: Mask, start: int, outcome: TrainResult,
               population: int) -> None:
        """Store one trained unit (imp units keep their mask and final weights, level 0 its rewind point)."""
        level, branch, seed = unit
        key = step_key(*unit)
        result = {
            "level": level, "branch": branch, "seed": seed, "weights_remaining": mask.density(),
            "layer_density": mask.per_layer(), "macs": measure(model, self.data.x_test[:1], mask).macs,
            "start_iteration": start, "population": population, **outcome.summary(),
        }
        tensors: dict[str, Tensors] = {}
        if branch == "imp":
            tensors = {"mask": mask.state_dict(), "final": {k: v.cpu() for k, v in model.state_dict().items()}}
            if level == 0:
                tensors["rewind"] = {k: v.cpu() for k, v in outcome.checkpoints[self.rewind_iter].items()}
        line = (f"{key}: weights {100 * mask.density():.2f}%, test acc {100 * outcome.test_acc:.2f}% "
                f"at early stop {outcome.early_stop_iter}, {outcome.seconds:.1f}s")
        store_step(self.steps, self.progress, key, result, tensors, line)
        self._cache[key] = (result, tensors)

    def run(self, steps: StepStore) -> list[dict[str, Any]]:
        """Run (or resume) every step against ``steps`` and return the per-step results.

        With one worker, level by level, the missing units of a level (its branches and seeds) train
        together in populations of at most ``execution.population_size``. With several workers, each
        unit trains alone in a worker process as soon as the imp unit it depends on is stored. Either
        way each unit is stored as soon as it finishes.
        """
        self.steps, self._cache = steps, {}
        units = self.units()
        self.progress.start("lottery", len(units), "units (level x branch x seed)")
        todo = []
        for unit in units:
            if self._lookup(*unit) is None:
                todo.append(unit)
            else:
                self.progress.advance("lottery", 1, level=unit[0])
        if self.execution.workers > 1:
            self._run_in_workers(todo)
        else:
            self._run_by_level(todo)
        self.progress.finish("lottery")
        return [self._cache[step_key(*unit)][0] for unit in units]

    def _run_by_level(self, todo: list[tuple[int, str, int]]) -> None:
        size = self.execution.population_size
        if size > 1 and self.population_reason is not None:
            self.steps.log(f"{self.model_name} trains one network at a time: {self.population_reason}")
        for level in range(self.config.prune.levels + 1):
            at_level = [unit for unit in todo if unit[0] == level]
            for first in range(0, len(at_level), size):
                group = at_level[first:first + size]
                self._compute(group)
                self.progress.advance("lottery", len(group), level=level)

    def _run_in_workers(self, todo: list[tuple[int, str, int]]) -> None:
        """Keep every worker busy: a unit starts once its level's imp mask can be computed; imp units and
        lower levels go first, since they unblock the most work."""
        workers = min(self.execution.workers, len(todo))  # a worker with nothing to do would only take memory
        build = self.make_model
        running: dict[str, tuple[tuple[int, str, int], nn.Module, Mask, int]] = {}
        todo = sorted(todo, key=lambda unit: (unit[1] != "imp", unit[0]))
        with TrainingPool(workers, self.data, self.config.train, build, self.device) as pool:
            self.steps.log(f"training in {workers} worker processes with {pool.threads} thread(s) each")
            while todo or running:
                ready = [unit for unit in todo if self._ready(unit)]
                for unit in ready[:workers - len(running)]:
                    todo.remove(unit)
                    model, mask, start = self.initial(*unit)
                    key = step_key(*unit)
                    pool.submit(key, model, seed=self._data_seed(unit[2]), mask=mask, start_iteration=start,
                                checkpoint_at=self._checkpoint_at(unit[0]), sparse_below=self.execution.sparse_below)
                    running[key] = (unit, model, mask, start)
                self.progress.advance("lottery", 0, running=", ".join(running))
                done = pool.next_done()
                unit, model, mask, start = running.pop(done.key)
                model.load_state_dict(_to_device(done.state, self.device))
                self._store(unit, model, mask, start, done.result, 1)
                self.progress.advance("lottery", 1, level=unit[0])

    def _ready(self, unit: tuple[int, str, int]) -> bool:
        """Whether the imp unit that ``unit``'s mask comes from is stored (level 0 is always ready)."""
        level, _, seed = unit
        return level == 0 or self._lookup(level - 1, "imp", seed) is not None


def run_lottery(config: LotteryConfig, data: Dataset, steps: StepStore, device: torch.device,
                progress: Progress = SILENT, execution: Execution = ONE_AT_A_TIME) -> list[dict[str, Any]]:
    """Run (or resume) every step of a lottery recipe and return the per-step results."""
    return LotteryExperiment(config, data, device, progress, execution).run(steps)


class Reinitialised:
    """Builds fresh copies of a network: a deep copy of ``template`` whose every submodule with a
    ``reset_parameters()`` (Linear, Conv, BatchNorm, ...) is re-initialised from the global RNG, so seeding the RNG
    first gives a seed-dependent, reproducible initialisation. Picklable when the template's class is importable."""

    def __init__(self, template: nn.Module) -> None:
        self.template = copy.deepcopy(template).cpu()

    def __call__(self) -> nn.Module:
        model = copy.deepcopy(self.template)
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
        return model


@dataclass
class Tickets:
    """What :func:`find_tickets` found: every unit's result (as ``subnets show --json`` lists them) and the imp
    mask of each level and seed (the ticket's sparse structure; ``masks[level, seed]``)."""

    units: list[dict[str, Any]]
    masks: dict[tuple[int, int], Mask]

    def results(self, branch: str = "imp") -> list[dict[str, Any]]:
        """The units of one branch, by level then seed."""
        return sorted((u for u in self.units if u["branch"] == branch), key=lambda u: (u["level"], u["seed"]))


def find_tickets(model: nn.Module | Callable[[], nn.Module], data: Dataset, *, train: TrainConfig,
                 prune: PruneConfig, seeds: Sequence[int] = (0,), steps: StepStore | None = None,
                 device: torch.device | str = "cpu", progress: Progress = SILENT,
                 execution: Execution = ONE_AT_A_TIME) -> Tickets:
    """Iterative magnitude pruning with rewinding (and the controls in ``prune.branches``) on any network.

    ``model``: an ``nn.Module`` (each seed starts from a re-initialised copy, see :class:`Reinitialised`) or a
    factory returning a fresh one (called after the global RNG is seeded). Its prunable layers are its own
    ``prunable_layers()`` when it defines one, else every Linear and Conv weight with the last Linear as the
    output layer. ``data``: a :class:`~subnets.data.Dataset` (e.g. ``Dataset.from_arrays``). ``steps``: where
    units are kept (a :class:`~subnets.steps.MemoryStepStore` by default; a run store's steps make it resumable).
    """
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"seeds must be distinct non-negative integers, got {list(seeds)}")
    factory = Reinitialised(model) if isinstance(model, nn.Module) else model
    config = LotteryConfig.model_construct(kind="lottery", name="tickets", seeds=list(seeds), data=None, model=None,
                                           train=train, prune=prune)
    experiment = LotteryExperiment(config, data.to(device), torch.device(device), progress, execution, factory)
    store = steps if steps is not None else MemoryStepStore()
    units = experiment.run(store)
    masks = {}
    for level in range(prune.levels + 1):
        for seed in seeds:
            _, tensors = experiment.ensure(level, "imp", seed)
            masks[level, seed] = Mask(tensors["mask"])
    return Tickets(units, masks)
