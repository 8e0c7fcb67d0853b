"""The pooling recipes: ``pooling`` (spatial pooling ops swapped into a network) and ``pooling-embeddings``
(sentence readouts of all-MiniLM-L6-v2, named as below); imports no torch."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from subnets.catalogue import LAYER_POOLS, SPATIAL_POOLS, TOKEN_POOLS
from subnets.recipes.common import ExperimentSpec, ModelSpec, Section, Seeds, finite
from subnets.recipes.training import TrainConfig

SWAPPABLE_POOLS = tuple(name for name in SPATIAL_POOLS if name != "spp")
"""The spatial ops a ``pooling`` recipe may swap in (spatial pyramid pooling changes the output's shape)."""


class PoolingConfig(ExperimentSpec):
    """A pooling recipe (``kind = "pooling"``): ``model`` trained with each of ``pools`` swapped in for its
    pooling layers, for every seed; ``baseline`` is the op the others are tested against;
    ``pool_options`` gives options per op (e.g. ``{ gem = { p = 2.0 } }``)."""

    kind: Literal["pooling"] = "pooling"
    model: ModelSpec
    train: TrainConfig
    pools: list[str] = Field(default_factory=lambda: list(SWAPPABLE_POOLS), min_length=1)
    baseline: str = "max"
    pool_options: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("pool_options")
    @classmethod
    def _finite(cls, options: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return finite(options, "")

    @model_validator(mode="after")
    def _pools(self) -> PoolingConfig:
        for name in [*self.pools, *self.pool_options]:
            if name not in SWAPPABLE_POOLS:
                raise ValueError(f"unknown pool {name!r}; known: {', '.join(SWAPPABLE_POOLS)}")
        if len(set(self.pools)) != len(self.pools):
            raise ValueError("pools must be distinct")
        if self.baseline not in self.pools:
            raise ValueError(f"baseline {self.baseline!r} must be one of pools ({', '.join(self.pools)})")
        return self


STATES = 7  # all-MiniLM-L6-v2's hidden states: the embedding layer's output and six transformer layers
LAST = STATES - 1
FEATURES = 384
STANDARD = "mean"  # sentence-transformers' readout: the mean of the last layer's real tokens
_NAME = re.compile(r"(?:(?P<layers>[a-z]+)-layers/)?(?P<tokens>[a-z]+)(?:@(?P<state>\d+))?")
_TOKEN_WORDS = {"mean": "mean", "max": "max", "first": "first token ([CLS])", "last": "last token ([SEP])",
                "attention": "attention pooling (learned query)",
                "multihead": "multi-head attention pooling (learned)"}
_LAYER_WORDS = {"mean": "mean", "max": "max", "weighted": "learned softmax-weighted sum",
                "attention": "learned cross-layer attention"}


@dataclass(frozen=True)
class Readout:
    """A readout: a token op over hidden state ``state``, or over the output of layer op ``layers`` applied to
    all hidden states (``state`` is then None)."""

    tokens: str
    state: int | None = LAST
    layers: str | None = None

    @property
    def name(self) -> str:
        """The canonical name, e.g. ``mean``, ``max@3``, ``weighted-layers/mean``."""
        if self.layers is not None:
            return f"{self.layers}-layers/{self.tokens}"
        return self.tokens if self.state == LAST else f"{self.tokens}@{self.state}"

    def describe(self) -> str:
        """The readout in words."""
        tokens = _TOKEN_WORDS[self.tokens]
        if self.layers is not None:
            return f"{_LAYER_WORDS[self.layers]} over all {STATES} hidden states, then {tokens} over tokens"
        where = {0: "the embedding layer", LAST: "the last layer"}.get(self.state, f"layer {self.state}")
        return f"{tokens} over the tokens of {where}" + (" (standard)" if self.name == STANDARD else "")


def parse_readout(name: str) -> Readout:
    """The readout called ``name``; ValueError (one line listing the known parts) for a bad name."""
    found = _NAME.fullmatch(name)
    if found is not None and found["tokens"] in TOKEN_POOLS and found["layers"] in (None, *LAYER_POOLS) and (
            found["state"] is None or (found["layers"] is None and int(found["state"]) <= LAST)):
        if found["layers"] is not None:
            return Readout(found["tokens"], None, found["layers"])
        return Readout(found["tokens"], LAST if found["state"] is None else int(found["state"]))
    raise ValueError(f"unknown readout {name!r}: write TOKEN, TOKEN@STATE or LAYERS-layers/TOKEN with TOKEN one of "
                     f"{', '.join(TOKEN_POOLS)}; STATE 0-{LAST} (0: embeddings, {LAST}: last layer); LAYERS one of "
                     f"{', '.join(LAYER_POOLS)}")


class SplitSpec(Section):
    """``[split]``: which books are test books (sorted by name, every ``every``-th from index ``offset``), and an
    optional cap on the pairs used per side (the first ones in file order; 0 = all), for quick runs."""

    every: int = Field(4, ge=2)
    offset: int = Field(1, ge=0)
    max_train: int = Field(0, ge=0)
    max_test: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _offset(self) -> SplitSpec:
        if self.offset >= self.every:
            raise ValueError(f"offset ({self.offset}) must be below every ({self.every})")
        if self.max_test == 1:
            raise ValueError("max_test must be 0 (all) or at least 2: retrieval needs more than one candidate")
        return self


class LearnedSpec(Section):
    """``[learned]``: how readouts with parameters train (symmetric InfoNCE over in-batch pairs, Adam).

    ``lr`` is for vectors and scalars (queries, layer logits), ``matrix_lr`` for projection matrices (multi-head
    pooling's key, value and output); ``heads`` is multi-head pooling's number of heads."""

    steps: int = Field(200, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(0.01, gt=0)
    matrix_lr: float = Field(0.001, gt=0)
    temperature: float = Field(0.05, gt=0)
    heads: int = Field(4, ge=1)

    @field_validator("heads")
    @classmethod
    def _heads(cls, heads: int) -> int:
        if FEATURES % heads:
            raise ValueError(f"heads must divide the model's {FEATURES} features, got {heads}")
        return heads


class StatsSpec(Section):
    """``[stats]``: resamples of the permutation test and of the bootstrap, and the interval's confidence."""

    resamples: int = Field(10000, ge=100)
    confidence: float = Field(0.95, gt=0, lt=1)


class PoolingEmbeddingsConfig(Section):
    """A recipe (``kind = "pooling-embeddings"``): readouts of all-MiniLM-L6-v2 on verse-pair retrieval."""

    kind: Literal["pooling-embeddings"] = "pooling-embeddings"
    name: str = Field(min_length=1)
    seeds: Seeds
    readouts: list[str] = Field(min_length=1)
    split: SplitSpec = Field(default_factory=SplitSpec)
    learned: LearnedSpec = Field(default_factory=LearnedSpec)
    stats: StatsSpec = Field(default_factory=StatsSpec)

    @field_validator("readouts")
    @classmethod
    def _readouts(cls, names: list[str]) -> list[str]:
        canonical = [parse_readout(name).name for name in names]
        if len(set(canonical)) != len(canonical):
            raise ValueError(f"readouts must be distinct (mean@{LAST} is mean), got {', '.join(names)}")
        if STANDARD not in canonical:
            raise ValueError(f"readouts must include {STANDARD!r}, the standard readout the others are compared with")
        return canonical
