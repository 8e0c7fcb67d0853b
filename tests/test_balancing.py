"""Balancing strategies against hand-computed values, and loss-free biases that really balance a skewed router."""

from __future__ import annotations

import math

import pytest
import torch

from subnets.experts import Router, Routing
from subnets.experts.balancing import Balancing, LossFreeBias, NoBalancing, SwitchLoss, ZLoss, load_diagnostics


def _routing(experts: list[list[int]], probs: list[list[float]], kept: list[list[bool]] | None = None) -> Routing:
    probs_t = torch.tensor(probs)
    return Routing(experts=torch.tensor(experts), weights=torch.ones(len(experts), len(experts[0])),
                   probs=probs_t, logits=probs_t.log(), kept=None if kept is None else torch.tensor(kept))


PROBS = [[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8]]
SKEWED = _routing([[0], [0], [1], [2]], PROBS)


def test_switch_loss_by_hand() -> None:
    # f = (2/4, 1/4, 1/4); P = column means (0.375, 0.3, 0.325); N = 3.
    expected = 0.1 * 3 * (0.5 * 0.375 + 0.25 * 0.3 + 0.25 * 0.325)
    assert SwitchLoss(coef=0.1).loss(SKEWED).item() == pytest.approx(expected)
    uniform = _routing([[0], [1], [2]], [[1 / 3] * 3] * 3)
    assert SwitchLoss(coef=0.1).loss(uniform).item() == pytest.approx(0.1)  # 1 x coef when balanced


def test_switch_loss_counts_every_top_k_choice() -> None:
    routing = _routing([[0, 1], [0, 2]], [[0.5, 0.3, 0.2], [0.4, 0.2, 0.4]])
    # f = (2/4, 1/4, 1/4); P = (0.45, 0.25, 0.3)
    expected = 3 * (0.5 * 0.45 + 0.25 * 0.25 + 0.25 * 0.3)
    assert SwitchLoss(coef=1.0).loss(routing).item() == pytest.approx(expected)


def test_global_scope_counts_the_load_over_micro_batches() -> None:
    """Micro-batch A sends both tokens to expert 0, B both to expert 1: per micro-batch each looks skewed,
    over the global batch the load is balanced."""
    a = _routing([[0], [0]], [[0.9, 0.1], [0.8, 0.2]])
    b = _routing([[1], [1]], [[0.3, 0.7], [0.1, 0.9]])
    micro, global_ = SwitchLoss(coef=1.0), SwitchLoss(coef=1.0, scope="global")
    assert micro.loss(b).item() == pytest.approx(2 * 0.8)  # f = (0, 1), P = (0.2, 0.8)
    global_.new_batch()
    assert global_.loss(a).item() == pytest.approx(2 * 0.85)  # f = (1, 0) so far, P = (0.85, 0.15)
    assert global_.loss(b).item() == pytest.approx(2 * (0.5 * 0.2 + 0.5 * 0.8))  # f = (1/2, 1/2)
    global_.new_batch()
    assert global_.loss(b).item() == pytest.approx(2 * 0.8)  # a new batch starts from zero
    with pytest.raises(ValueError, match="scope"):
        SwitchLoss(scope="sequence")


def test_z_loss_by_hand() -> None:
    logits = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    routing = Routing(experts=torch.zeros(2, 1, dtype=torch.long), weights=torch.ones(2, 1),
                      probs=logits.softmax(-1), logits=logits)
    expected = 0.5 * ((math.log(1 + math.e)) ** 2 + (math.log(math.e ** 2 + math.e ** -1)) ** 2) / 2
    assert ZLoss(coef=0.5).loss(routing).item() == pytest.approx(expected)


def test_diagnostics_by_hand() -> None:
    kept = [[True], [False], [True], [True]]
    found = load_diagnostics(_routing([[0], [0], [1], [2]], [[1 / 3] * 3] * 4, kept), num_experts=3)
    assert found["max_violation"] == pytest.approx(2 / (4 / 3) - 1)
    assert found["load_cv"] == pytest.approx(math.sqrt(2 / 9) / (4 / 3))
    assert found["router_entropy"] == pytest.approx(math.log(3))
    assert found["dropped"] == pytest.approx(0.25)


def test_combined_strategies_add_their_losses() -> None:
    both = Balancing(SwitchLoss(0.1), ZLoss(0.01), NoBalancing())
    assert both.loss(SKEWED).item() == pytest.approx(SwitchLoss(0.1).loss(SKEWED).item()
                                                     + ZLoss(0.01).loss(SKEWED).item())


def test_loss_free_bias_balances_a_skewed_router() -> None:
    """A router whose gate favours expert 0 for every token: the bias updates alone bring MaxVio down."""
    torch.manual_seed(0)
    router = Router(8, num_experts=4, k=1)
    with torch.no_grad():
        router.gate.weight[0, 0] = 3.0  # tokens have mean 1 in feature 0, so expert 0 wins most of them
    strategy = LossFreeBias(rate=0.001)

    def tokens() -> torch.Tensor:
        batch = torch.randn(2048, 8)
        batch[:, 0] += 1.0
        return batch

    before = load_diagnostics(router(tokens()), 4)["max_violation"]
    for _ in range(1500):
        strategy.update(router, router(tokens()))
    after = [load_diagnostics(router(tokens()), 4)["max_violation"] for _ in range(5)]
    assert before > 1.5 and max(after) < 0.2, (before, after)
    assert router.gate.weight.grad is None and router.selection_bias[0] < 0  # only the bias moved


def test_balanced_assignment_gives_equal_loads_and_distinct_experts() -> None:
    from subnets.experts.routing import balanced_assignment

    torch.manual_seed(0)
    scores = torch.randn(64, 8)
    scores[:, 0] += 5  # every token prefers expert 0
    chosen = balanced_assignment(scores, 2)
    assert torch.equal(torch.bincount(chosen.reshape(-1), minlength=8), torch.full((8,), 16))
    assert torch.all(chosen[:, 0] != chosen[:, 1])
    one = balanced_assignment(scores, 1)[:, 0]
    # optimal: no swap of two tokens' experts raises the total score
    total = scores[torch.arange(64), one].sum()
    for a, b in [(0, 1), (3, 40), (10, 63)]:
        swapped = one.clone()
        swapped[a], swapped[b] = one[b], one[a]
        assert scores[torch.arange(64), swapped].sum() <= total + 1e-6


def test_balanced_assignment_strategy_routes_evenly_in_training_and_by_top_k_in_evaluation() -> None:
    from subnets.experts import MoE
    from subnets.experts.balancing import BalancedAssignment, load_diagnostics

    torch.manual_seed(1)
    moe = MoE(8, 16, num_experts=4, k=2)
    with torch.no_grad():
        moe.router.gate.weight[0] += 3.0  # skewed router
    BalancedAssignment().attach(moe.router)
    x = torch.randn(40, 8)
    moe.train()
    moe(x)
    assert load_diagnostics(moe.last_routing, 4)["max_violation"] == 0.0
    moe.eval()
    moe(x)
    assert torch.equal(moe.last_routing.experts, torch.topk(moe.last_routing.probs, 2).indices)
