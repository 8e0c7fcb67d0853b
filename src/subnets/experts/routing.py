"""Routers: which experts each token goes to, and with what weight.

A router scores every expert for every token (a linear map of the token), keeps the ``k`` best and
renormalises their weights to sum to 1 (``normalize=False`` keeps the raw scores, as Switch does with k = 1,
where renormalising would leave the router without a gradient). Scores are softmax probabilities (Switch,
Mixtral, DeepSeekMoE) or independent sigmoids (DeepSeek-V3). An optional per-expert ``selection_bias``
shifts the scores used to *choose* experts but not the weights they are combined with: the hook for
auxiliary-loss-free balancing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn


@dataclass
class Routing:
    """One routing decision for ``T`` tokens and ``E`` experts.

    ``experts`` and ``weights`` are ``(T, k)``: the chosen experts and their combine weights (each row sums
    to 1). ``probs`` are the ``(T, E)`` scores before selection and ``logits`` the raw router outputs, both
    kept for balancing losses and diagnostics. ``kept`` (set by the layer) marks the ``(T, k)`` choices that
    were computed: not dropped for capacity, not a null expert.
    """

    experts: torch.Tensor
    weights: torch.Tensor
    probs: torch.Tensor
    logits: torch.Tensor
    kept: torch.Tensor | None = None

    @property
    def num_experts(self) -> int:
        """``E``."""
        return self.probs.shape[-1]

    def load(self) -> torch.Tensor:
        """Tokens sent to each expert, ``(E,)`` (a token counts once per expert it goes to)."""
        return torch.bincount(self.experts.reshape(-1), minlength=self.num_experts)


class Router(nn.Module):
    """Top-``k`` router over ``num_experts`` experts for tokens of width ``dim``."""

    def __init__(self, dim: int, num_experts: int, k: int, score: Literal["softmax", "sigmoid"] = "softmax",
                 normalize: bool = True) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be at least 1, got {num_experts}")
        if not 1 <= k <= num_experts:
            raise ValueError(f"k must be between 1 and num_experts ({num_experts}), got {k}")
        if score not in ("softmax", "sigmoid"):
            raise ValueError(f"score must be 'softmax' or 'sigmoid', got {score!r}")
        self.num_experts, self.k, self.score, self.normalize = num_experts, k, score, normalize
        self.gate = nn.Linear(dim, num_experts, bias=False)
        self.register_buffer("selection_bias", torch.zeros(num_experts))

    def forward(self, tokens: torch.Tensor) -> Routing:
        """Route ``tokens`` of shape ``(T, dim)``."""
        logits = self.gate(tokens)
        probs = logits.softmax(dim=-1) if self.score == "softmax" else logits.sigmoid()
        _, experts = torch.topk(probs.detach() + self.selection_bias, self.k, dim=-1)
        chosen = probs.gather(-1, experts)
        weights = chosen / chosen.sum(dim=-1, keepdim=True) if self.normalize else chosen
        return Routing(experts=experts, weights=weights, probs=probs, logits=logits)
