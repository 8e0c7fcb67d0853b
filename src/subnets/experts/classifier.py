"""A small classifier with one feed-forward block that is either dense or a mixture of experts.

``flatten -> Linear(in, dim) -> ReLU -> h + ffn(h) -> Linear(dim, classes)``: the block is residual, so a
token's routing decides how its representation is refined, and a dense block of width ``k * hidden`` has
the same active parameters as an MoE of experts of width ``hidden`` with ``k`` active (up to the router).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from subnets.experts.layer import Experts, MoE


class DenseFeedForward(nn.Module):
    """One feed-forward block of width ``hidden``, the dense counterpart of an :class:`MoE` layer."""

    def __init__(self, dim: int, hidden: int, kind: Literal["mlp", "swiglu"] = "mlp",
                 activation: Literal["gelu", "relu"] = "gelu") -> None:
        super().__init__()
        self.block = Experts(1, dim, hidden, kind, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block.expert(0, x.reshape(-1, x.shape[-1])).reshape(x.shape)


class FeedForwardClassifier(nn.Module):
    """Inputs of any shape flattened, embedded to ``dim``, refined by the residual block ``ffn``, classified."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, dim: int, ffn: nn.Module) -> None:
        super().__init__()
        self.embed = nn.Linear(math.prod(input_shape), dim)
        self.ffn = ffn
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.embed(x.flatten(1)))
        return self.head(h + self.ffn(h))

    def moe(self) -> MoE | None:
        """The MoE block, or None when the block is dense."""
        return self.ffn if isinstance(self.ffn, MoE) else None


def active_parameters(model: nn.Module) -> int:
    """Parameters a token uses: all of them, minus the routed experts it does not go to."""
    total = sum(p.numel() for p in model.parameters())
    moes = [m for m in model.modules() if isinstance(m, MoE)]
    for moe in moes:
        per_expert = sum(p[0].numel() for p in moe.experts.parameters())
        total -= (moe.num_experts - moe.router.k) * per_expert
    return total
