"""Experts: per-input sub-networks chosen by a learned router.

``MoE(dim, hidden, num_experts, k)`` is a mixture-of-experts feed-forward layer: a :class:`Router` picks
``k`` experts per token, tokens are dispatched sorted by expert, each expert runs once on its slice, and
the outputs are combined with the routing weights. ``subnets.experts.balancing`` has the balancing
strategies (Switch loss, z-loss, loss-free selection bias) and the load diagnostics (MaxVio, CV, entropy,
dropped fraction).
"""

from subnets.experts.layer import Experts, MoE
from subnets.experts.routing import Router, Routing

__all__ = ["Experts", "MoE", "Router", "Routing"]
