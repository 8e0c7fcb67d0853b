"""The mixture-of-experts layer: router -> dispatch (tokens sorted by expert) -> experts -> combine.

Each token goes to its router's ``k`` experts. Dispatch sorts the ``T * k`` (token, expert) pairs by expert,
so each expert runs once on one contiguous slice of tokens (a loop over experts, never over tokens), and
combine adds every expert output back into its token's row, scaled by the routing weight. Shared experts,
if any, see every token and are added unweighted (DeepSeekMoE). Null experts (MoE++) are router choices
whose output is zero: a token routed to one spends less compute. With a ``capacity_factor`` each expert
takes at most ``ceil(capacity_factor * T * k / E)`` tokens per batch, first come first served in token
order (Switch Transformer); the pairs beyond it are dropped and contribute nothing. Expert weights are
stacked, ``(E, ...)``, so fine-grained configurations (many small experts) are one parameter per matrix.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from subnets.experts.routing import Router, Routing

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}


class Experts(nn.Module):
    """``num_experts`` feed-forward experts of one shape: ``mlp`` (``act(x W1 + b1) W2 + b2``) or ``swiglu``
    (``(silu(x Wg) * x Wu) W2``, no biases)."""

    def __init__(self, num_experts: int, dim: int, hidden: int, kind: Literal["mlp", "swiglu"] = "mlp",
                 activation: Literal["gelu", "relu"] = "gelu") -> None:
        super().__init__()
        if kind not in ("mlp", "swiglu"):
            raise ValueError(f"expert kind must be 'mlp' or 'swiglu', got {kind!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        self.num_experts, self.dim, self.hidden, self.kind = num_experts, dim, hidden, kind
        self.activation = ACTIVATIONS[activation]
        width = 2 * hidden if kind == "swiglu" else hidden
        self.w_in = nn.Parameter(torch.empty(num_experts, dim, width))
        self.w_out = nn.Parameter(torch.empty(num_experts, hidden, dim))
        self.b_in = nn.Parameter(torch.zeros(num_experts, width)) if kind == "mlp" else None
        self.b_out = nn.Parameter(torch.zeros(num_experts, dim)) if kind == "mlp" else None
        for weight, fan_in in ((self.w_in, dim), (self.w_out, hidden)):
            nn.init.uniform_(weight, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    def expert(self, index: int, tokens: torch.Tensor) -> torch.Tensor:
        """Expert ``index`` applied to ``tokens`` of shape ``(n, dim)``."""
        hidden = tokens @ self.w_in[index]
        if self.kind == "swiglu":
            gate, up = hidden.chunk(2, dim=-1)
            return (F.silu(gate) * up) @ self.w_out[index]
        return self.activation(hidden + self.b_in[index]) @ self.w_out[index] + self.b_out[index]

    def forward(self, tokens: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """Run expert i on the i-th slice of ``tokens`` (sorted by expert; ``counts[i]`` rows each)."""
        outputs = [self.expert(i, chunk) for i, chunk in enumerate(tokens.split(counts)) if len(chunk)]
        return torch.cat(outputs) if outputs else tokens.new_zeros(0, self.dim)


class MoE(nn.Module):
    """A mixture-of-experts feed-forward layer for inputs ``(..., dim)``.

    ``num_experts`` routed experts of width ``hidden``, ``k`` per token, plus ``shared`` always-on experts
    and ``null`` zero-output experts the router may choose (indices ``num_experts`` and up). After a forward
    pass, ``last_routing`` holds the routing decision, with ``kept`` marking the (token, choice) pairs that
    were computed (for balancing losses and diagnostics).
    """

    def __init__(self, dim: int, hidden: int, num_experts: int, k: int, *, shared: int = 0, null: int = 0,
                 capacity_factor: float | None = None, kind: Literal["mlp", "swiglu"] = "mlp",
                 activation: Literal["gelu", "relu"] = "gelu", score: Literal["softmax", "sigmoid"] = "softmax",
                 normalize: bool = True) -> None:
        super().__init__()
        if shared < 0:
            raise ValueError(f"shared must be non-negative, got {shared}")
        if null < 0:
            raise ValueError(f"null must be non-negative, got {null}")
        if capacity_factor is not None and not capacity_factor > 0:
            raise ValueError(f"capacity_factor must be positive (or None for no dropping), got {capacity_factor}")
        self.num_experts, self.capacity_factor = num_experts, capacity_factor
        self.router = Router(dim, num_experts + null, k, score, normalize)
        self.experts = Experts(num_experts, dim, hidden, kind, activation)
        self.shared = Experts(shared, dim, hidden, kind, activation) if shared else None
        self.last_routing: Routing | None = None

    def capacity(self, num_tokens: int) -> int | None:
        """Most tokens one expert takes from a batch of ``num_tokens`` (None: no limit)."""
        if self.capacity_factor is None:
            return None
        return math.ceil(self.capacity_factor * num_tokens * self.router.k / self.num_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(-1, x.shape[-1])
        routing = self.router(tokens)
        num_tokens, k = routing.experts.shape
        flat_experts = routing.experts.reshape(-1)
        order = torch.argsort(flat_experts, stable=True)  # stable: token order within each expert
        by_expert = flat_experts[order]
        keep = by_expert < self.num_experts
        capacity = self.capacity(num_tokens)
        if capacity is not None:
            chosen = torch.bincount(flat_experts, minlength=self.router.num_experts)
            starts = torch.cumsum(chosen, 0) - chosen
            keep &= torch.arange(len(order), device=order.device) - starts[by_expert] < capacity
        order = order[keep]
        kept = torch.zeros_like(flat_experts, dtype=torch.bool)
        kept[order] = True
        routing.kept = kept.view(num_tokens, k)
        self.last_routing = routing
        counts = torch.bincount(by_expert[keep], minlength=self.num_experts).tolist()
        token_of = order // k
        outputs = self.experts(tokens[token_of], counts)
        weighted = outputs * routing.weights.reshape(-1)[order, None]
        combined = torch.zeros_like(tokens).index_add_(0, token_of, weighted)
        if self.shared is not None:
            for i in range(self.shared.num_experts):
                combined = combined + self.shared.expert(i, tokens)
        return combined.reshape(x.shape)
