"""Recipe sections shared by every experiment kind: which dataset and which model, with options, and the seeds."""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from subnets.catalogue import check_dataset_name, check_model_name


class Section(BaseModel):
    """A recipe section: unknown fields and non-finite numbers (``inf``, ``nan``, ``1e309``) are errors, and a
    validated section cannot change."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def finite(value: Any, where: str) -> Any:
    """``value`` unchanged when every number in it (nested in lists and tables) is finite; else a ValueError naming
    the key under ``where``. For free-form options, which the sections' types do not check."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number, got {value}")
    if isinstance(value, dict):
        for key, item in value.items():
            finite(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            finite(item, f"{where}[{i}]")
    return value


class _NamedSpec(Section):
    """A name (registered, or an import path ``"package.module:factory"``) and its options."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("options")
    @classmethod
    def _finite(cls, options: dict[str, Any]) -> dict[str, Any]:
        return finite(options, "")


class DataSpec(_NamedSpec):
    """``[data]``: a registered tensor dataset (``subnets data list``; ``file`` reads a ``.npz`` or CSV file given
    by ``options.path``) or an import path ``"package.module:factory"`` to your own ``factory(**options) ->
    Dataset``, and its options. A name that is neither, or an import that fails, is a one-line error."""

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        return check_dataset_name(name)

    def check(self) -> None:
        """Raise ValueError naming an option the dataset does not take or a required one left out (this imports
        the data registry, and with it torch: it runs when the data is about to be loaded)."""
        from subnets.data.registry import validate_options

        validate_options(self.name, self.options)


class ModelSpec(_NamedSpec):
    """``[model]``: a registered model or an import path ``"package.module:factory"`` to your own
    ``factory(input_shape, num_classes, **options) -> nn.Module``, and its options (checked when it is built)."""

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        return check_model_name(name)


def _distinct_seeds(seeds: list[int]) -> list[int]:
    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError("seeds must be distinct non-negative integers")
    return seeds


Seeds = Annotated[list[int], Field(min_length=1), AfterValidator(_distinct_seeds)]
"""``seeds``: one or more distinct non-negative integers, one repetition of the experiment each."""


class ExperimentSpec(Section):
    """The fields every recipe has besides its ``kind``: a name, the seeds and the data."""

    name: str = Field(min_length=1)
    seeds: Seeds
    data: DataSpec
