"""The experts recipes: ``moe`` (balancing strategies against dense baselines), ``moefy`` (a trained dense network
split into experts) and ``moefy-minilm`` (all-MiniLM-L6-v2's feed-forward blocks split); imports no torch."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from subnets.recipes.common import ExperimentSpec, ModelSpec, Section, Seeds
from subnets.recipes.training import TrainConfig

DENSE_VARIANTS = ("dense-active", "dense-total")
STRATEGIES = ("none", "switch-micro", "switch-global", "switch-z", "loss-free", "balanced")


class MoEModelSpec(Section):
    """``[model]`` of a ``moe`` recipe: the classifier's width and its MoE block."""

    dim: int = Field(128, ge=1)
    hidden: int = Field(64, ge=1)
    experts: int = Field(8, ge=1)
    k: int = Field(2, ge=1)
    expert_kind: Literal["mlp", "swiglu"] = "mlp"
    activation: Literal["gelu", "relu"] = "gelu"

    @model_validator(mode="after")
    def _k(self) -> MoEModelSpec:
        if self.k > self.experts:
            raise ValueError(f"k ({self.k}) must not exceed experts ({self.experts})")
        return self


class BalancingSpec(Section):
    """``[balancing]``: the coefficients of the strategies and how many micro-batches a batch is split into
    for the Switch loss (``switch-micro`` counts loads per micro-batch, ``switch-global`` over the batch)."""

    switch_coef: float = Field(0.01, ge=0)
    z_coef: float = Field(1e-3, ge=0)
    bias_rate: float = Field(1e-3, gt=0)
    micro_batches: int = Field(4, ge=1)


class MoEConfig(ExperimentSpec):
    """A mixture-of-experts recipe (``kind = "moe"``): one training per variant and seed."""

    kind: Literal["moe"] = "moe"
    model: MoEModelSpec = Field(default_factory=MoEModelSpec)
    train: TrainConfig
    balancing: BalancingSpec = Field(default_factory=BalancingSpec)
    variants: list[Literal["dense-active", "dense-total", "none", "switch-micro", "switch-global", "switch-z",
                           "loss-free", "balanced"]] = Field(default_factory=lambda: [*DENSE_VARIANTS, *STRATEGIES],
                                                            min_length=1)

    @model_validator(mode="after")
    def _distinct(self) -> MoEConfig:
        if len(set(self.variants)) != len(self.variants):
            raise ValueError("variants must be distinct")
        if self.train.batch_size % self.balancing.micro_batches:
            raise ValueError(f"balancing.micro_batches ({self.balancing.micro_batches}) must divide "
                             f"train.batch_size ({self.train.batch_size})")
        return self


class MoefyExperimentSpec(Section):
    """``[moefy]``: which blocks to split, into how many experts, by which clustering, and the router's
    training (``samples`` training inputs, ``router_steps`` Adam steps)."""

    layers: list[str] = Field(min_length=1)
    experts: list[int] = Field(default_factory=lambda: [8, 16], min_length=1)
    methods: list[Literal["coactivation", "weights"]] = Field(default_factory=lambda: ["coactivation"],
                                                              min_length=1)
    samples: int = Field(5000, ge=1)
    router_steps: int = Field(1000, ge=1)


class MoefyConfig(ExperimentSpec):
    """A MoE-fication recipe (``kind = "moefy"``): train a dense model per seed, then split its blocks."""

    kind: Literal["moefy"] = "moefy"
    model: ModelSpec
    train: TrainConfig
    moefy: MoefyExperimentSpec


class MoefyMiniLMSpec(Section):
    """``[moefy]``: expert counts, clustering methods, fractions of experts active, and the router's data."""

    experts: list[int] = Field(default_factory=lambda: [16, 32], min_length=1)
    methods: list[Literal["coactivation", "weights"]] = Field(default_factory=lambda: ["coactivation"],
                                                              min_length=1)
    fractions: list[float] = Field(default_factory=lambda: [0.25, 0.5], min_length=1)
    router_steps: int = Field(1000, ge=1)
    batch_size: int = Field(64, ge=1)
    timing_repeats: int = Field(7, ge=1)

    @field_validator("experts")
    @classmethod
    def _experts(cls, experts: list[int]) -> list[int]:
        for n in experts:
            if not 1 <= n <= 1536:
                raise ValueError(f"each expert count must be between 1 and the FFN's 1536 neurons, got {n}")
        return experts

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, fractions: list[float]) -> list[float]:
        for f in fractions:
            if not 0 < f <= 1:
                raise ValueError(f"each fraction of experts active must be in (0, 1], got {f}")
        return fractions


class MoefyMiniLMConfig(Section):
    """A recipe (``kind = "moefy-minilm"``) splitting all-MiniLM-L6-v2's FFNs; the data is the shipped text."""

    kind: Literal["moefy-minilm"] = "moefy-minilm"
    name: str = Field(min_length=1)
    seeds: Seeds
    moefy: MoefyMiniLMSpec = Field(default_factory=MoefyMiniLMSpec)
