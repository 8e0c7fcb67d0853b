"""The ``boosting-tabular`` recipe: the boosted MLP against end-to-end MLPs and gradient-boosted trees on tables;
imports no torch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from pydantic import Field, field_validator

from subnets.catalogue import table_names
from subnets.recipes.common import Section

MLP_OPTIMIZERS = ("adam", "sgd", "lbfgs")
TREES = ("lightgbm", "xgboost", "hist-gb")
BOOSTED = "boosted"
MLPS = tuple(f"mlp-{name}" for name in MLP_OPTIMIZERS)
METHODS = (BOOSTED, *MLPS, *TREES)


class BoostedSection(Section):
    """``[boosted]``: the boosted MLP's settings (see :class:`~subnets.boosting.BoostedMLPClassifier`);
    it stops after ``n_iter_no_change`` stages without a better validation loss (never when None)."""

    n_stages: int = Field(20, ge=1)
    units_per_stage: int = Field(8, ge=1)
    learning_rate: float = Field(0.5, gt=0)
    max_step: float = Field(10.0, gt=0)
    stage_optimizer: Literal["adam", "lbfgs"] = "adam"
    stage_steps: int = Field(200, ge=1)
    stage_lr: float = Field(0.01, gt=0)
    batch_size: int | None = Field(None, ge=1)
    subsample: float = Field(1.0, gt=0, le=1)
    n_iter_no_change: int | None = Field(5, ge=1)


class MLPSection(Section):
    """``[mlp]``: the end-to-end MLPs' settings (see :class:`~subnets.boosting.baselines.MLPSettings`)."""

    steps: int = Field(4000, ge=1)
    batch_size: int = Field(128, ge=1)
    adam_lr: float = Field(1e-3, gt=0)
    sgd_lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    eval_every: int = Field(100, ge=1)
    lbfgs_iterations: int = Field(500, ge=1)
    lbfgs_eval_every: int = Field(10, ge=1)
    patience: int = Field(10, ge=1)


class TreeSection(Section):
    """``[trees]``: the tree ensembles' settings (see :class:`~subnets.boosting.baselines.TreeSettings`)."""

    rounds: int = Field(1000, ge=1)
    learning_rate: float = Field(0.1, gt=0)
    leaves: int = Field(31, ge=2)
    patience: int = Field(20, ge=1)


def _known_distinct(what: str, known: Callable[[], Sequence[str]]) -> Callable[[list[str]], list[str]]:
    def check(names: list[str]) -> list[str]:
        for name in names:
            if name not in known():
                raise ValueError(f"unknown {what} {name!r}; known: {', '.join(known())}")
        if len(set(names)) != len(names):
            raise ValueError(f"{what}s must be distinct")
        return names

    return check


class BoostingTabularConfig(Section):
    """A ``boosting-tabular`` recipe: ``methods`` on each of ``tables``, ``folds`` folds each, splits and model
    seeds drawn from ``seed``; ``validation_fraction`` of each fold's training rows is held out for early
    stopping (MNIST has its own validation split)."""

    kind: Literal["boosting-tabular"] = "boosting-tabular"
    name: str = Field(min_length=1)
    seed: int = Field(0, ge=0)
    folds: int = Field(5, ge=2, le=10)
    validation_fraction: float = Field(0.1, gt=0, lt=0.5)
    tables: list[str] = Field(min_length=1)
    methods: list[str] = Field(default_factory=lambda: list(METHODS), min_length=1)
    boosted: BoostedSection = BoostedSection()
    mlp: MLPSection = MLPSection()
    trees: TreeSection = TreeSection()

    _tables = field_validator("tables")(_known_distinct("table", table_names))
    _methods = field_validator("methods")(_known_distinct("method", lambda: METHODS))
