"""Recipe sections shared by every experiment kind: which dataset and which model, with options."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from subnets.data.registry import dataset_names, validate_options


class _RegisteredSpec(BaseModel):
    """A registered name and its options; an unknown name is an error that lists the known ones."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    what: ClassVar[str]

    name: str
    options: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def known(cls) -> list[str]:
        """The registered names."""
        raise NotImplementedError

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in cls.known():
            raise ValueError(f"unknown {cls.what} '{name}'; known: {', '.join(cls.known())}")
        return name


class DataSpec(_RegisteredSpec):
    """``[data]``: a registered dataset name and its options."""

    what = "dataset"

    @classmethod
    def known(cls) -> list[str]:
        return dataset_names()

    def check(self) -> None:
        """Raise ValueError naming an option the dataset does not take."""
        validate_options(self.name, self.options)


class ModelSpec(_RegisteredSpec):
    """``[model]``: a registered model name and its options (checked when the model is built)."""

    what = "model"

    @classmethod
    def known(cls) -> list[str]:
        from subnets.models import model_names

        return model_names()


def _distinct_seeds(seeds: list[int]) -> list[int]:
    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError("seeds must be distinct non-negative integers")
    return seeds


Seeds = Annotated[list[int], Field(min_length=1), AfterValidator(_distinct_seeds)]
"""``seeds``: one or more distinct non-negative integers, one repetition of the experiment each."""


class ExperimentSpec(BaseModel):
    """The fields every recipe has besides its ``kind``: a name, the seeds and the data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    seeds: Seeds
    data: DataSpec
