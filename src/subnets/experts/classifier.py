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

from subnets.cost import Keep, RowCost, measure
from subnets.experts.layer import Experts, MoE


class DenseFeedForward(nn.Module):
    """One feed-forward block of width ``hidden``, the dense counterpart of an :class:`MoE` layer."""

    def __init__(self, dim: int, hidden: int, kind: Literal["mlp", "swiglu"] = "mlp",
                 activation: Literal["gelu", "relu"] = "gelu") -> None:
        super().__init__()
        self.block = Experts(1, dim, hidden, kind, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block.expert(0, x.reshape(-1, x.shape[-1])).reshape(x.shape)

    def forward_cost(self, inputs: tuple, kwargs: dict, output: torch.Tensor, kept: Keep) -> RowCost:
        """Every token uses the whole block (:mod:`subnets.cost`)."""
        tokens = output.numel() // output.shape[-1]
        macs, params = self.block.sizes(kept)
        return RowCost(macs.expand(tokens), params.expand(tokens))


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


def active_parameters(model: FeedForwardClassifier, inputs: torch.Tensor | None = None) -> int:
    """Parameters a token uses, averaged over ``inputs`` and rounded, as :func:`subnets.cost.measure` counts them
    from the routing taken: all of them, minus the routed experts a token does not go to.

    Without ``inputs`` one all-zero example stands in. Any example gives the same count then: a token uses the
    router, the shared experts and exactly ``k`` routed experts of one size (one token never overflows a
    capacity). With null experts the count depends on the inputs, which must then be given.
    """
    moe = model.moe()
    if inputs is None:
        if moe is not None and moe.router.num_experts > moe.num_experts:
            raise ValueError("with null experts the active parameters depend on the routing: pass inputs")
        inputs = torch.zeros(1, model.embed.in_features, device=model.embed.weight.device)
    return round(measure(model, inputs).active_parameters)
