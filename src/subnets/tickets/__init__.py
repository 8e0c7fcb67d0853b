"""Tickets: static sub-networks found by pruning.

The lottery experiment (Frankle & Carbin, ICLR 2019; rewinding from Frankle et al., ICML 2020) trains a
network, prunes a fraction of its smallest weights, rewinds the survivors to their values at iteration k
and trains again, level after level. Beside the ``imp`` line it trains the paper's two controls at each
level: ``reinit`` (the same mask with a fresh random initialisation) and ``random_prune`` (a random mask with
the same per-layer sparsity, trained from the original initialisation).
"""

from subnets.recipes.lottery import BRANCHES, LotteryConfig, PruneConfig
from subnets.tickets.lottery import Reinitialised, Tickets, find_tickets, run_lottery

__all__ = ["BRANCHES", "LotteryConfig", "PruneConfig", "Reinitialised", "Tickets", "find_tickets", "run_lottery"]
