"""Load balancing for routers, as pluggable strategies, and the load diagnostics they are judged by.

A strategy has ``attach(router)`` (called once before training), ``loss(routing)`` (a term to add to the
training loss; zero for strategies without one) and ``update(router, routing)`` (called after the
optimizer step; a no-op for loss-based strategies):

- :class:`NoBalancing`.
- :class:`SwitchLoss`: ``coef * N * sum_i f_i * P_i`` (Switch Transformer), with ``f_i`` the fraction of the
  routed choices that went to expert i and ``P_i`` the micro-batch's mean router score for it; 1 when both
  are uniform. ``scope="micro"`` counts ``f_i`` in the micro-batch alone; ``scope="global"`` in every
  micro-batch since :meth:`SwitchLoss.new_batch` (the buffer of "Demons in the Detail", Qiu et al. 2025,
  under gradient accumulation), which lets a single sequence or domain favour some experts as long as the
  global batch stays balanced.
- :class:`ZLoss`: ``coef * mean(logsumexp(logits)^2)`` (ST-MoE), keeping router logits small.
- :class:`LossFreeBias`: no loss; after each step every expert's selection bias moves by ``rate`` towards
  balance, ``+rate`` if it got fewer than the mean load, ``-rate`` if more (DeepSeek's auxiliary-loss-free
  balancing). The bias changes which experts are chosen, not the combine weights.
- :class:`BalancedAssignment`: no loss; while training, the router assigns tokens to experts by a linear
  assignment with equal loads (BASE layers), and by top-k at evaluation.

Several strategies combine with :class:`Balancing` (losses add, updates all run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from subnets.experts.routing import Router, Routing


def expert_load(routing: Routing, num_experts: int) -> torch.Tensor:
    """Choices per routed expert, ``(num_experts,)`` float (null experts, if any, left out)."""
    return routing.load()[:num_experts].float()


DIAGNOSTICS = ("max_violation", "load_cv", "router_entropy", "dropped")


def diagnostics_tensor(routing: Routing, num_experts: int) -> torch.Tensor:
    """The :data:`DIAGNOSTICS` of one routing as a ``(4,)`` tensor on the routing's device (no host sync,
    so it can be recorded every training step)."""
    load = expert_load(routing, num_experts)
    mean = load.mean().clamp_min(1e-12)
    probs = routing.probs.detach()
    probs = probs / probs.sum(dim=-1, keepdim=True)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=-1).mean()
    to_experts = routing.experts < num_experts
    if routing.kept is None:
        dropped = load.new_zeros(())
    else:
        dropped = 1.0 - (routing.kept & to_experts).sum() / to_experts.sum().clamp_min(1)
    spread = torch.stack([load.max() / mean - 1, load.std(unbiased=False) / mean])
    spread = torch.where(load.sum() > 0, spread, torch.zeros_like(spread))  # nothing routed: no imbalance
    return torch.cat([spread, entropy[None], dropped.float()[None]])


def load_diagnostics(routing: Routing, num_experts: int) -> dict[str, float]:
    """``max_violation`` (MaxVio: max load / mean load - 1), ``load_cv`` (std / mean of the load),
    ``router_entropy`` (mean entropy of the tokens' normalised scores, nats) and ``dropped`` (fraction of
    choices of a routed expert that were not computed, e.g. over capacity)."""
    return dict(zip(DIAGNOSTICS, diagnostics_tensor(routing, num_experts).tolist(), strict=True))


class NoBalancing:
    """No balancing term and no update."""

    def attach(self, router: Router) -> None:
        """Nothing to set up."""

    def loss(self, routing: Routing) -> torch.Tensor:
        return routing.logits.new_zeros(())

    def update(self, router: Router, routing: Routing) -> None:
        """Nothing to update."""


class SwitchLoss(NoBalancing):
    """The Switch Transformer auxiliary loss scaled by ``coef``, with the load counted per micro-batch or
    over the global batch (call :meth:`new_batch` before each optimizer step's first micro-batch)."""

    def __init__(self, coef: float = 0.01, scope: Literal["micro", "global"] = "micro") -> None:
        if scope not in ("micro", "global"):
            raise ValueError(f"scope must be 'micro' or 'global', got {scope!r}")
        self.coef, self.scope = coef, scope
        self.counts: torch.Tensor | None = None

    def new_batch(self) -> None:
        """Start a new global batch: forget the loads counted so far."""
        self.counts = None

    def loss(self, routing: Routing) -> torch.Tensor:
        load = routing.load().float()
        if self.scope == "global":
            self.counts = load if self.counts is None else self.counts + load
            load = self.counts
        fraction = load / load.sum()
        mean_score = routing.probs.mean(dim=0)
        return self.coef * routing.num_experts * (fraction * mean_score).sum()


@dataclass
class ZLoss(NoBalancing):
    """The router z-loss, scaled by ``coef``."""

    coef: float = 1e-3

    def loss(self, routing: Routing) -> torch.Tensor:
        return self.coef * torch.logsumexp(routing.logits, dim=-1).square().mean()


@dataclass
class LossFreeBias(NoBalancing):
    """Auxiliary-loss-free balancing: selection biases nudged by ``rate`` from the sign of the load error."""

    rate: float = 1e-3

    @torch.no_grad()
    def update(self, router: Router, routing: Routing) -> None:
        load = routing.load().float()
        router.selection_bias += self.rate * torch.sign(load.mean() - load)


class BalancedAssignment(NoBalancing):
    """Balanced assignment while training (see :func:`~subnets.experts.routing.balanced_assignment`)."""

    def attach(self, router: Router) -> None:
        router.balanced = True


class Balancing(NoBalancing):
    """Several strategies at once: their losses add and each one's update runs."""

    def __init__(self, *strategies: NoBalancing) -> None:
        self.strategies = strategies

    def attach(self, router: Router) -> None:
        for strategy in self.strategies:
            strategy.attach(router)

    def loss(self, routing: Routing) -> torch.Tensor:
        return sum((s.loss(routing) for s in self.strategies), routing.logits.new_zeros(()))

    def update(self, router: Router, routing: Routing) -> None:
        for strategy in self.strategies:
            strategy.update(router, routing)
