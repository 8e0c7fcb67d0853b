"""Routers: which experts each token goes to, and with what weight.

A router scores every expert for every token (a linear map of the token), keeps the ``k`` best and
renormalises their weights to sum to 1 (``normalize=False`` keeps the raw scores, as Switch does with k = 1,
where renormalising would leave the router without a gradient). Scores are softmax probabilities (Switch,
Mixtral, DeepSeekMoE) or independent sigmoids (DeepSeek-V3). An optional per-expert ``selection_bias``
shifts the scores used to *choose* experts but not the weights they are combined with: the hook for
auxiliary-loss-free balancing. With ``balanced = True`` the router, while training, chooses by
:func:`balanced_assignment` instead of top-k (BASE layers, Lewis et al. 2021); at evaluation it uses top-k.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from subnets.experts import cpu_kernel


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

    def rows(self, start: int, stop: int) -> Routing:
        """The routing of tokens ``start .. stop - 1`` alone (e.g. one micro-batch of a batch)."""
        kept = None if self.kept is None else self.kept[start:stop]
        return Routing(self.experts[start:stop], self.weights[start:stop], self.probs[start:stop],
                       self.logits[start:stop], kept)


def balanced_assignment(scores: torch.Tensor, k: int) -> torch.Tensor:
    """``(T, k)`` distinct experts per token maximising the total score under equal loads.

    In each of ``k`` rounds every token gets one more expert and every expert takes at most ``ceil(T / E)``
    tokens (exactly ``T / E`` when E divides T): a linear assignment of tokens to expert slots, solved
    exactly (scipy's Hungarian solver on the CPU, about a millisecond for 128 tokens and 8 experts; cubic in
    T, so meant for training batches of hundreds of tokens, not thousands).
    """
    num_tokens, num_experts = scores.shape
    values = scores.detach().double().cpu().numpy()
    slot_expert = np.repeat(np.arange(num_experts), -(-num_tokens // num_experts))
    chosen = np.zeros((num_tokens, k), dtype=np.int64)
    taken = np.zeros((num_tokens, num_experts), dtype=bool)
    for r in range(k):
        cost = -values[:, slot_expert]
        cost[taken[:, slot_expert]] = 1e9  # an expert the token already has
        rows, cols = linear_sum_assignment(cost)
        chosen[rows, r] = slot_expert[cols]
        taken[rows, chosen[rows, r]] = True
    return torch.from_numpy(chosen).to(scores.device)


def top_k(scores: torch.Tensor, k: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The ``(T, k)`` indices of the ``k`` largest entries of each row of ``scores + bias``, largest first. For
    float32 on a CPU the compiled kernel (:mod:`subnets.experts.cpu_kernel`) selects them (0.28 ms against
    ``torch.topk``'s 1.3 ms for 4,096 x 64 scores, 2 threads; ties: the lower index first; NaN counts as -inf);
    else ``torch.topk``."""
    compiled = cpu_kernel.kernel() if scores.device.type == "cpu" and scores.dtype == torch.float32 else None
    if compiled is not None and scores.dim() == 2:
        return compiled.top_k(scores, bias, k)
    return torch.topk(scores if bias is None else scores + bias, k, dim=-1).indices


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
        self.balanced = False

    def forward(self, tokens: torch.Tensor) -> Routing:
        """Route ``tokens`` of shape ``(T, dim)``."""
        logits = self.gate(tokens)
        probs = logits.softmax(dim=-1) if self.score == "softmax" else logits.sigmoid()
        if self.balanced and self.training:
            experts = balanced_assignment(probs.detach() + self.selection_bias, self.k)
        else:
            experts = top_k(probs.detach(), self.k, self.selection_bias)
        chosen = probs.gather(-1, experts)
        weights = chosen / chosen.sum(dim=-1, keepdim=True) if self.normalize else chosen
        return Routing(experts=experts, weights=weights, probs=probs, logits=logits)
