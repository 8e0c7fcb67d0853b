"""The ``lottery`` recipe: iterative magnitude pruning with rewinding and its controls (imports no torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from subnets.recipes.common import ExperimentSpec, ModelSpec, Section
from subnets.recipes.training import TrainConfig, check_duration

BRANCHES = ("imp", "reinit", "random_prune")
LAYER_KINDS = ("conv", "fc", "output")


class PruneConfig(Section):
    """``[prune]``: how many levels, how much per level, where to rewind, which branches to train."""

    levels: int = Field(ge=0, le=200)
    method: Literal["layerwise", "global"] = "layerwise"
    rates: dict[str, float] = Field(default_factory=lambda: {"conv": 0.1, "fc": 0.2, "output": 0.1})
    global_rate: float = Field(0.2, gt=0, lt=1)
    exclude: list[str] = Field(default_factory=lambda: ["output"])
    rewind: str = "0it"
    branches: list[Literal["imp", "reinit", "random_prune"]] = Field(default_factory=lambda: list(BRANCHES))

    @field_validator("rates")
    @classmethod
    def _rates(cls, rates: dict[str, float]) -> dict[str, float]:
        for key, rate in rates.items():
            if not 0 <= rate < 1:
                raise ValueError(f"rate of '{key}' must be in [0, 1), got {rate}")
        return rates

    @field_validator("rewind")
    @classmethod
    def _rewind(cls, value: str) -> str:
        return check_duration(value)

    @model_validator(mode="after")
    def _branches(self) -> PruneConfig:
        if "imp" not in self.branches:
            raise ValueError("branches must include 'imp' (the controls are defined by its masks)")
        if len(set(self.branches)) != len(self.branches):
            raise ValueError("branches must not repeat")
        return self

    def layer_rates(self, kinds: dict[str, str]) -> dict[str, float]:
        """Per-parameter pruning fraction from per-kind (or per-parameter-name) rates."""
        unknown = [k for k in self.rates if k not in LAYER_KINDS and k not in kinds]
        if unknown:
            raise ValueError(f"prune.rates: '{unknown[0]}' is neither a layer kind ({', '.join(LAYER_KINDS)}) "
                             f"nor a prunable parameter ({', '.join(kinds)})")
        return {name: self.rates.get(name, self.rates.get(kind, 0.0)) for name, kind in kinds.items()}

    def global_layers(self, kinds: dict[str, str]) -> list[str]:
        """Parameters that take part in global pruning."""
        unknown = [k for k in self.exclude if k not in LAYER_KINDS and k not in kinds]
        if unknown:
            raise ValueError(f"prune.exclude: '{unknown[0]}' is neither a layer kind nor a prunable parameter")
        return [n for n, k in kinds.items() if n not in self.exclude and k not in self.exclude]


class LotteryConfig(ExperimentSpec):
    """A lottery-ticket recipe (``kind = "lottery"``)."""

    kind: Literal["lottery"] = "lottery"
    model: ModelSpec
    train: TrainConfig
    prune: PruneConfig
