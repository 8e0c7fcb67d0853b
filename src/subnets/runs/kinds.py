"""The registry of experiment kinds: the only place where ``subnets.runs`` meets the method families."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel

from subnets.data import load_dataset
from subnets.experts.experiments import MoEConfig, MoEExperiment, MoefyConfig, MoefyExperiment
from subnets.experts.moefy_minilm import MoefyMiniLMConfig, MoefyMiniLMExperiment
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


def _prepare_moe(config: MoEConfig, device: torch.device, progress: Progress, execution: Execution) -> Prepared:
    config.data.check()
    data = load_dataset(config.data.name, **config.data.options).to(device)
    return Prepared(data.source, MoEExperiment(config, data, device, progress).run)


def _prepare_moefy(config: MoefyConfig, device: torch.device, progress: Progress, execution: Execution) -> Prepared:
    config.data.check()
    data = load_dataset(config.data.name, **config.data.options).to(device)
    return Prepared(data.source, MoefyExperiment(config, data, device, progress).run)


def _prepare_moefy_minilm(config: MoefyMiniLMConfig, device: torch.device, progress: Progress,
                          execution: Execution) -> Prepared:
    experiment = MoefyMiniLMExperiment(config, device, progress)
    return Prepared(experiment.source, experiment.run)


def _prepare_pooling(config: PoolingConfig, device: torch.device, progress: Progress,
                     execution: Execution) -> Prepared:
    config.data.check()
    data = load_dataset(config.data.name, **config.data.options).to(device)
    return Prepared(data.source, PoolingExperiment(config, data, device, progress).run)


KINDS: dict[str, Kind] = {
    "lottery": Kind("lottery", LotteryConfig, _prepare_lottery),
    "moe": Kind("moe", MoEConfig, _prepare_moe),
    "moefy": Kind("moefy", MoefyConfig, _prepare_moefy),
    "moefy-minilm": Kind("moefy-minilm", MoefyMiniLMConfig, _prepare_moefy_minilm),
    "pooling": Kind("pooling", PoolingConfig, _prepare_pooling),
}
