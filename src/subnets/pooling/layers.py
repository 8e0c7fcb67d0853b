"""Pooling across layers: a model's per-layer hidden states ``L x (N, T, D)`` -> ``(N, T, D)``.

Mean and max over layers (as in MaxPoolBERT's max over the last layers), a learned softmax-weighted sum
(ELMo's scalar mix, also the multi-layer trainable pooling of LLM embedders), and cross-layer attention: each
token weights its own layers by a learned query.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def stack_layers(op: nn.Module, hidden: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """The hidden states as one ``(L, N, T, D)`` tensor, after checking their shapes."""
    stacked = hidden if isinstance(hidden, torch.Tensor) else torch.stack(list(hidden))
    if stacked.dim() != 4 or stacked.shape[0] == 0:
        raise ValueError(f"{type(op).__name__} expects L hidden states (N, T, D) or one (L, N, T, D) tensor, "
                         f"got shape {tuple(stacked.shape)}")
    return stacked


class MeanLayers(nn.Module):
    """The mean over layers."""

    def forward(self, hidden: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        return stack_layers(self, hidden).mean(0)


class MaxLayers(nn.Module):
    """The element-wise maximum over layers."""

    def forward(self, hidden: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        return stack_layers(self, hidden).amax(0)


class WeightedLayers(nn.Module):
    """``gamma * sum_l softmax(w)_l h_l`` with learned layer logits ``w`` (initially equal) and scale ``gamma``."""

    def __init__(self, num_layers: int) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"weighted: num_layers must be >= 1, got {num_layers}")
        self.logits = nn.Parameter(torch.zeros(num_layers))
        self.gamma = nn.Parameter(torch.ones(()))

    def forward(self, hidden: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        stacked = stack_layers(self, hidden)
        if stacked.shape[0] != len(self.logits):
            raise ValueError(f"WeightedLayers was built for {len(self.logits)} layers, got {stacked.shape[0]}")
        weights = torch.softmax(self.logits, 0).to(stacked.dtype)
        return self.gamma * torch.tensordot(weights, stacked, dims=1)


class AttentionLayers(nn.Module):
    """Cross-layer attention: each token averages its layers with weights ``softmax_l(h_l . q / sqrt(D))``
    from a learned query ``q`` (initially zero: the mean)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(features))

    def forward(self, hidden: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        stacked = stack_layers(self, hidden)
        scores = stacked @ self.query / math.sqrt(stacked.shape[-1])  # (L, N, T)
        weights = torch.softmax(scores, 0)
        return (weights.unsqueeze(-1) * stacked).sum(0)
