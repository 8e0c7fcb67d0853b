"""The ``pooling`` experiment: one network trained with each pooling op in place of its pools, several seeds,
every op compared with a baseline op (max pooling) by paired tests over seeds.

For a given seed every op starts from the same weights (the model is built from the seed, then its pools are
swapped) and sees the same batches, so differences between ops are paired. Stochastic pooling's draws come
from torch's global generator, seeded per training, so a resumed run reproduces them.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from subnets.cost import measure
from subnets.data import Dataset
from subnets.models import build_model
from subnets.pooling.factory import swap_pooling
from subnets.pooling.spatial import SpatialPool
from subnets.progress import SILENT, Progress
from subnets.recipes.pooling import PoolingConfig
from subnets.steps import StepStore, Tensors, Unit, UnitWorkers, derive_seed, run_trainings
from subnets.train import train

# Learned pool parameters this small are reported (GeM's p, mixed pooling's alpha, ...).
_REPORTED_SIZE = 16


class PoolingExperiment:
    """The steps of one ``pooling`` recipe: ``{pool}/s{seed}``, one training each; with ``workers`` above one, that
    many trainings at once in worker processes."""

    def __init__(self, config: PoolingConfig, data: Dataset, device: torch.device,
                 progress: Progress = SILENT, workers: int = 1) -> None:
        self.config, self.data, self.device, self.progress, self.workers = config, data, device, progress, workers
        for pool in config.pools:  # a model without pools or a bad pool option fails here, before any training
            self.build(pool, config.seeds[0])

    def build(self, pool: str, seed: int) -> tuple[torch.nn.Module, list[str]]:
        """The model of ``seed`` with ``pool`` in place of its pooling layers, and the swapped layers' names."""
        spec = self.config.model
        torch.manual_seed(derive_seed(seed, "init"))
        model = build_model(spec.name, self.data.input_shape, self.data.num_classes, **spec.options)
        torch.manual_seed(derive_seed(seed, "pool", pool))
        try:
            swapped = swap_pooling(model, pool, **self.config.pool_options.get(pool, {}))
        except ValueError as error:
            raise ValueError(f"pool_options.{pool}: {error}") from None
        if not swapped:
            raise ValueError(f"model {spec.name!r} has no pooling layer to swap")
        return model.to(self.device), swapped

    def run(self, steps: StepStore) -> list[dict[str, Any]]:
        """Run (or resume) every pool and seed, storing each training as one step."""
        workers = UnitWorkers(self.workers, partial(_unit, self.config, self.data.to("cpu"), str(self.device))) \
            if self.workers > 1 else None
        return run_trainings(steps, self.progress, "pooling", self.config.pools, self.config.seeds, self._train,
                             lambda result: f"test acc {100 * result['test_acc']:.2f}%, {result['seconds']:.1f}s",
                             workers)

    def _train(self, pool: str, seed: int) -> tuple[dict[str, Any], dict[str, Tensors]]:
        model, swapped = self.build(pool, seed)
        torch.manual_seed(derive_seed(seed, "pool-draws"))
        outcome = train(model, self.data, self.config.train, seed=derive_seed(seed, "data"),
                        progress=self.progress, progress_key=f"{pool}/s{seed}")
        learned = {}
        for name in swapped:
            module = model.get_submodule(name)
            if isinstance(module, SpatialPool):
                learned.update({f"{name}.{key}": value.detach().cpu().flatten().tolist()
                                for key, value in module.named_parameters() if value.numel() <= _REPORTED_SIZE})
        result = {"pool": pool, "seed": seed, "baseline": self.config.baseline, "swapped": swapped,
                  "parameters": sum(p.numel() for p in model.parameters()),
                  "macs": measure(model, self.data.x_test[:1]).macs, "learned": learned,
                  **outcome.summary()}
        return result, {"final": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def _unit(config: PoolingConfig, data: Dataset, device: str, progress: Progress) -> Unit:
    """The unit function of a worker process (see :class:`subnets.steps.UnitWorkers`)."""
    return PoolingExperiment(config, data.to(device), torch.device(device), progress)._train
