"""The registry of experiment kinds: the only place where ``subnets.runs`` meets the method families."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel

from subnets.boosting.experiments import BoostingTabularConfig, BoostingTabularExperiment
from subnets.data import Dataset, load_dataset
from subnets.experts.experiments import MoEConfig, MoEExperiment, MoefyConfig, MoefyExperiment
from subnets.experts.moefy_minilm import MoefyMiniLMConfig, MoefyMiniLMExperiment
from subnets.pooling.embeddings import PoolingEmbeddingsConfig, PoolingEmbeddingsExperiment
from subnets.pooling.experiments import PoolingConfig, PoolingExperiment
from subnets.progress import Progress
from subnets.steps import StepStore
from subnets.tickets import LotteryConfig
from subnets.tickets.lottery import LotteryExperiment
from subnets.train import Execution


@dataclass
class Prepared:
    """An experiment checked against its data and model, ready to run against a step store."""

    data_source: dict[str, Any]
    run: Callable[[StepStore], list[dict[str, Any]]]


@dataclass(frozen=True)
class Kind:
    """An experiment kind: its recipe model and how to prepare it (loading data, building models).

    ``prepare(recipe, device, progress, execution)``: ``execution`` (populations, sparse compute) is a
    setting of the run like the device, not part of the recipe.
    """

    name: str
    config: type[BaseModel]
    prepare: Callable[[Any, torch.device, Progress, Execution], Prepared]


def _prepare_lottery(config: LotteryConfig, device: torch.device, progress: Progress,
                     execution: Execution) -> Prepared:
    config.data.check()
    data = load_dataset(config.data.name, **config.data.options).to(device)
    experiment = LotteryExperiment(config, data, device, progress, execution)
    return Prepared(data.source, experiment.run)


def _on_data(experiment: Callable[[Any, Dataset, torch.device, Progress], Any]) -> Callable[..., Prepared]:
    """The ``prepare`` of a kind whose experiment takes ``(config, data, device, progress)`` and has ``run``:
    the recipe's dataset is checked, loaded and moved to the device first."""

    def prepare(config: Any, device: torch.device, progress: Progress, execution: Execution) -> Prepared:
        config.data.check()
        data = load_dataset(config.data.name, **config.data.options).to(device)
        return Prepared(data.source, experiment(config, data, device, progress).run)

    return prepare


def _self_sourced(experiment: Callable[[Any, torch.device, Progress], Any]) -> Callable[..., Prepared]:
    """The ``prepare`` of a kind whose experiment loads its own data and model (``(config, device, progress)``)
    and has ``source`` and ``run``."""

    def prepare(config: Any, device: torch.device, progress: Progress, execution: Execution) -> Prepared:
        built = experiment(config, device, progress)
        return Prepared(built.source, built.run)

    return prepare


KINDS: dict[str, Kind] = {
    "lottery": Kind("lottery", LotteryConfig, _prepare_lottery),
    "moe": Kind("moe", MoEConfig, _on_data(MoEExperiment)),
    "moefy": Kind("moefy", MoefyConfig, _on_data(MoefyExperiment)),
    "moefy-minilm": Kind("moefy-minilm", MoefyMiniLMConfig, _self_sourced(MoefyMiniLMExperiment)),
    "pooling": Kind("pooling", PoolingConfig, _on_data(PoolingExperiment)),
    "pooling-embeddings": Kind("pooling-embeddings", PoolingEmbeddingsConfig,
                               _self_sourced(PoolingEmbeddingsExperiment)),
    "boosting-tabular": Kind("boosting-tabular", BoostingTabularConfig, _self_sourced(BoostingTabularExperiment)),
}
