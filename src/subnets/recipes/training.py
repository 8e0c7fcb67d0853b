"""Training hyper-parameters as a validated model, and durations like ``"50000it"`` or ``"10ep"``."""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from subnets.recipes.common import Section

_DURATION = re.compile(r"^\s*(\d+)\s*(it|ep)\s*$")


MAX_AMOUNT = {"it": 10**9, "ep": 10**6}
"""The longest duration accepted, per unit: nothing sensible lies beyond (a billion iterations of LeNet-300-100 would
take this machine a year), and a typo like ``50000000000000it`` should fail at once, not train until killed."""


def check_duration(text: str) -> str:
    """Return ``text`` normalised (``"10ep"``) or raise ValueError saying what a duration looks like."""
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"'{text}' is not a duration; write e.g. '50000it' (iterations) or '10ep' (epochs)")
    amount, unit = int(match.group(1)), match.group(2)
    if amount > MAX_AMOUNT[unit]:
        raise ValueError(f"'{text}' is longer than the longest duration accepted ({MAX_AMOUNT[unit]:,} {unit})")
    return f"{amount}{unit}"


def parse_duration(text: str, steps_per_epoch: int) -> int:
    """Number of iterations in a duration such as ``"50000it"`` or ``"10ep"``."""
    amount, unit = _DURATION.match(check_duration(text)).groups()
    return int(amount) * (steps_per_epoch if unit == "ep" else 1)


class TrainConfig(Section):
    """How to train one network. Every field is checked; unknown fields are rejected."""

    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1.2e-3, gt=0)
    batch_size: int = Field(60, ge=1)
    length: str = "50000it"
    momentum: float = Field(0.0, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    warmup: str = "0it"
    schedule: Literal["constant", "step", "cosine"] = "constant"
    milestones: list[str] = Field(default_factory=list)
    gamma: float = Field(0.1, gt=0, le=1)
    eval_every: str = "1000it"
    eval_batch_size: int = Field(1000, ge=1)

    @field_validator("length", "warmup", "eval_every")
    @classmethod
    def _duration(cls, value: str) -> str:
        return check_duration(value)

    @field_validator("milestones")
    @classmethod
    def _milestones(cls, value: list[str]) -> list[str]:
        return [check_duration(v) for v in value]

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ValueError("nesterov needs optimizer = 'sgd' and momentum > 0")
        if self.momentum and self.optimizer != "sgd":
            raise ValueError(f"momentum applies to optimizer 'sgd' only, not '{self.optimizer}'")
        if self.schedule != "step" and self.milestones:
            raise ValueError("milestones apply to schedule = 'step' only")
        if parse_duration(self.eval_every, 1) == 0:
            raise ValueError("eval_every must be at least one iteration")
        warmup, length = (_DURATION.match(d).groups() for d in (self.warmup, self.length))
        if warmup[1] == length[1] and int(warmup[0]) > 0 and int(warmup[0]) >= int(length[0]):
            raise ValueError(f"warmup ({self.warmup}) must be shorter than length ({self.length}): training would end "
                             "before the learning rate reaches its value")
        return self

    def iterations(self, steps_per_epoch: int) -> int:
        """Total training iterations."""
        return parse_duration(self.length, steps_per_epoch)

    def lr_factor(self, steps_per_epoch: int) -> callable:
        """``factor(iteration) -> float`` multiplying ``lr``: linear warm-up, then constant/step/cosine."""
        total = self.iterations(steps_per_epoch)
        warmup = parse_duration(self.warmup, steps_per_epoch)
        milestones = sorted(parse_duration(m, steps_per_epoch) for m in self.milestones)

        def factor(iteration: int) -> float:
            if iteration < warmup:
                return (iteration + 1) / warmup
            if self.schedule == "step":
                return self.gamma ** sum(iteration >= m for m in milestones)
            if self.schedule == "cosine":
                progress = (iteration - warmup) / max(1, total - warmup)
                return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
            return 1.0

        return factor
