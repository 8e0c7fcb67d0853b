"""Fully connected networks: ``lenet300_100`` (Frankle & Carbin 2019) and the configurable ``mlp``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from subnets.models.init import glorot_normal_
from subnets.models.registry import is_positive_int, layer_kinds, register_model

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class MLP(nn.Module):
    """Flatten, then linear layers ``fc1 .. fcN`` with an activation between them; ``fcN`` gives logits.

    ``act`` is the activation; ``act1 .. act{N-1}`` name its uses after each hidden layer (the same
    parameter-free module), so that one of them can be replaced, e.g. when ``subnets.experts.moefy`` puts a
    whole feed-forward block in the place of ``fc{i}``.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int, activation: str = "relu"):
        super().__init__()
        self.flatten = nn.Flatten()
        self.act = ACTIVATIONS[activation]()
        widths = [in_features, *hidden, num_classes]
        self.depth = len(widths) - 1
        # setattr, not a ModuleList, so that parameters are named "fc1.weight", "fc2.weight", ...
        for i in range(self.depth):
            setattr(self, f"fc{i + 1}", nn.Linear(widths[i], widths[i + 1]))
        for i in range(1, self.depth):
            setattr(self, f"act{i}", self.act)

    def layer(self, i: int) -> nn.Linear:
        """The ``i``-th linear layer, counting from 1."""
        return getattr(self, f"fc{i}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)
        for i in range(1, self.depth):
            x = getattr(self, f"act{i}")(self.layer(i)(x))
        return self.layer(self.depth)(x)

    def prunable_layers(self) -> dict[str, str]:
        """Every linear weight: "fc" for hidden layers, "output" for the last."""
        return layer_kinds(self, self.layer(self.depth))


@register_model("lenet300_100")
def lenet300_100(input_shape: tuple[int, ...], num_classes: int) -> MLP:
    """LeNet-300-100: prod(input_shape) -> 300 -> 100 -> num_classes with ReLU, Glorot normal init."""
    return glorot_normal_(MLP(math.prod(input_shape), [300, 100], num_classes))


@register_model("mlp")
def mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    hidden: Sequence[int] = (300, 100),
    activation: str = "relu",
) -> MLP:
    """An MLP with hidden widths ``hidden`` (possibly none) and ``activation``, Glorot normal init."""
    if isinstance(hidden, str) or not isinstance(hidden, Sequence) or not all(map(is_positive_int, hidden)):
        raise ValueError(f"model 'mlp': option 'hidden' must be a list of positive ints, got {hidden!r}")
    if activation not in ACTIVATIONS:
        allowed = ", ".join(sorted(ACTIVATIONS))
        raise ValueError(f"model 'mlp': option 'activation' must be one of {allowed}, got {activation!r}")
    return glorot_normal_(MLP(math.prod(input_shape), list(hidden), num_classes, activation))
