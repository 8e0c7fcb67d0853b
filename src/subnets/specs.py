"""Recipe sections shared by every experiment kind: which dataset and which model, with options."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from subnets.data.registry import dataset_names, validate_options


class DataSpec(BaseModel):
    """``[data]``: a registered dataset name and its options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in dataset_names():
            raise ValueError(f"unknown dataset '{name}'; known: {', '.join(dataset_names())}")
        return name

    def check(self) -> None:
        """Raise ValueError naming an option the dataset does not take."""
        validate_options(self.name, self.options)


class ModelSpec(BaseModel):
    """``[model]``: a registered model name and its options (checked when the model is built)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        from subnets.models import model_names

        if name not in model_names():
            raise ValueError(f"unknown model '{name}'; known: {', '.join(model_names())}")
        return name
