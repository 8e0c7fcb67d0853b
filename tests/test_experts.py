"""The mixture-of-experts layer against a naive per-token reference, routing weights, selection bias, errors."""

from __future__ import annotations

import time

import pytest
import torch

from subnets.experts import MoE, Router, cpu_kernel
from subnets.experts.layer import _Plan, _Workers


def _naive(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Token by token: the weighted sum of its chosen experts plus the shared experts. Null experts add
    nothing; with a capacity, an expert serves the first ``capacity`` tokens that choose it."""
    tokens = x.reshape(-1, x.shape[-1])
    routing = moe.router(tokens)
    capacity = moe.capacity(len(tokens))
    served = [0] * moe.num_experts
    rows = []
    for t, token in enumerate(tokens):
        row = torch.zeros_like(token)
        for j, e in enumerate(routing.experts[t].tolist()):
            if e >= moe.num_experts or (capacity is not None and served[e] >= capacity):
                continue
            served[e] += 1
            row = row + routing.weights[t, j] * moe.experts.expert(e, token[None])[0]
        if moe.shared is not None:
            row = row + sum(moe.shared.expert(i, token[None])[0] for i in range(moe.shared.num_experts))
        rows.append(row)
    return torch.stack(rows).reshape(x.shape)


CONFIGS = [
    {"num_experts": 4, "k": 2},
    {"num_experts": 8, "k": 1, "normalize": False},
    {"num_experts": 16, "k": 4, "kind": "swiglu", "shared": 2},
    {"num_experts": 6, "k": 3, "score": "sigmoid", "activation": "relu", "shared": 1},
    {"num_experts": 4, "k": 2, "null": 2},
    {"num_experts": 4, "k": 2, "capacity_factor": 0.5},
    {"num_experts": 8, "k": 2, "capacity_factor": 1.0, "null": 1, "kind": "swiglu"},
]


@pytest.fixture(params=["compiled", "python"])
def experts_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test through the compiled CPU kernel and again through the Python loop."""
    monkeypatch.setenv(cpu_kernel.SWITCH, request.param)
    if request.param == "compiled":
        assert cpu_kernel.kernel() is not None, "the CPU experts kernel did not build (see the warning)"
    return request.param


@pytest.mark.parametrize("options", CONFIGS)
def test_outputs_and_gradients_equal_a_per_token_reference(options: dict, experts_path: str) -> None:
    torch.manual_seed(0)
    moe = MoE(12, 20, **options)
    x = torch.randn(3, 7, 12, requires_grad=True)
    probe = torch.randn(3, 7, 12)
    out = moe(x)
    assert out.shape == x.shape
    grads = torch.autograd.grad((out * probe).sum(), [x, *moe.parameters()])
    expected = _naive(moe, x)
    expected_grads = torch.autograd.grad((expected * probe).sum(), [x, *moe.parameters()])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert grads[1].abs().sum() > 0  # the router (first parameter) learns through the combine weights


def _output_and_gradients(moe: MoE, x: torch.Tensor, probe: torch.Tensor, threads: int) -> list[torch.Tensor]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = x.detach().requires_grad_(True)
        out = moe(x)
        grads = torch.autograd.grad((out * probe).sum(), [x, *moe.parameters()])
        assert torch.get_num_threads() == threads  # the workers' own counts do not leak into the caller
        return [out.detach(), *grads]
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("options", [CONFIGS[0], CONFIGS[2], CONFIGS[6]])
def test_experts_run_concurrently_on_several_threads_with_the_same_result(options: dict, experts_path: str) -> None:
    """With 3 threads, experts run in 3 workers (or OpenMP threads), each taking the next expert when it is
    free; the outputs and gradients equal one thread's up to float rounding, are the same bits call after
    call (whichever worker ran which expert), and the caller keeps its thread count."""
    torch.manual_seed(7)
    moe = MoE(12, 20, **options)
    x, probe = torch.randn(40, 12), torch.randn(40, 12)
    alone = _output_and_gradients(moe, x, probe, threads=1)
    together = _output_and_gradients(moe, x, probe, threads=3)
    again = _output_and_gradients(moe, x, probe, threads=3)
    for one, many, repeat in zip(alone, together, again, strict=True):
        torch.testing.assert_close(many, one, atol=1e-5, rtol=1e-5)
        assert torch.equal(many, repeat)


@pytest.mark.parametrize("kind", ["mlp", "swiglu"])
def test_experts_give_the_same_bits_alone_and_in_workers(kind: str, experts_path: str) -> None:
    """Each token sums its pairs in pair order whether one worker adds as it goes or several workers fill a
    workspace that one ``index_add_`` (or the kernel's per-token combine) sums, so the experts' outputs and
    gradients do not depend on the number of threads at all (the router's own products may)."""
    torch.manual_seed(8)
    experts = MoE(12, 20, num_experts=6, k=2, kind=kind).experts
    index = torch.randint(0, 50, (100,))
    counts, weights, probe = [30, 0, 25, 20, 15, 10], torch.rand(100), torch.randn(50, 12)
    tokens = torch.randn(50, 12)
    before = torch.get_num_threads()
    results = []
    for threads in (1, 3):
        torch.set_num_threads(threads)
        try:
            x, w = tokens.clone().requires_grad_(True), weights.clone().requires_grad_(True)
            out = experts(x, counts, index=index, weights=w)
            results.append([out, *torch.autograd.grad((out * probe).sum(), [x, w, *experts.parameters()])])
        finally:
            torch.set_num_threads(before)
    for alone, together in zip(*results, strict=True):
        assert torch.equal(alone, together)


def test_each_worker_runs_with_its_share_of_the_threads_call_after_call() -> None:
    """torch sets a new thread's count from its default at the thread's first operator; a worker whose first
    call ran no operator must still run the next call's experts on one thread (else its products, summed
    differently, change the result's last bits)."""
    workers, seen = _Workers(), []
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        for record in (False, True, True):
            def work(expert: int, scratch: object, record: bool = record) -> None:
                time.sleep(0.05)  # long enough that each worker takes one expert
                if record:
                    seen.append(torch.get_num_threads())
            workers.run(work, [0, 1, 2], torch.device("cpu"), lambda: None)
            assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    assert seen == [1] * 6


def test_workers_take_the_busiest_experts_first_and_skip_idle_ones() -> None:
    plan = _Plan(torch.zeros(0), [5, 40, 0, 30, 20, 10], "mlp", torch.relu, False)
    assert plan.busiest_first == [1, 3, 4, 5, 0]
    assert [list(plan.chunks(e)) for e in (0, 2, 3)] == [[(0, 5, True)], [], [(45, 75, True)]]


def test_experts_compute_their_formulas() -> None:
    torch.manual_seed(4)
    moe = MoE(6, 10, num_experts=3, k=1)
    swiglu = MoE(6, 10, num_experts=3, k=1, kind="swiglu")
    x = torch.randn(5, 6)
    e = moe.experts
    mlp = torch.nn.functional.gelu(x @ e.w_in[2] + e.b_in[2]) @ e.w_out[2] + e.b_out[2]
    torch.testing.assert_close(e.expert(2, x), mlp)
    s = swiglu.experts
    gate, up = x @ s.w_in[1][:, :10], x @ s.w_in[1][:, 10:]
    torch.testing.assert_close(s.expert(1, x), (torch.nn.functional.silu(gate) * up) @ s.w_out[1])


def test_every_expert_gets_its_tokens_and_weights_sum_to_one(experts_path: str) -> None:
    torch.manual_seed(1)
    moe = MoE(8, 16, num_experts=5, k=2)
    moe(torch.randn(64, 8))
    routing = moe.last_routing
    assert routing is not None
    torch.testing.assert_close(routing.weights.sum(dim=-1), torch.ones(64))
    assert int(routing.load().sum()) == 64 * 2
    assert (routing.experts[:, 0] != routing.experts[:, 1]).all()  # k distinct experts per token
    top = routing.probs.topk(2, dim=-1)
    assert torch.equal(routing.experts, top.indices)  # without a bias, the k best scores are chosen


def test_capacity_drops_exactly_the_late_tokens(experts_path: str) -> None:
    """All 10 tokens pick expert 0; capacity ceil(0.6 * 10 * 1 / 3) = 2 keeps tokens 0 and 1 only."""
    torch.manual_seed(5)
    moe = MoE(4, 8, num_experts=3, k=1, capacity_factor=0.6, normalize=False)
    moe.router.selection_bias[0] = 100.0
    x = torch.randn(10, 4)
    out = moe(x)
    assert moe.capacity(10) == 2
    assert moe.last_routing.kept[:, 0].tolist() == [True, True] + [False] * 8
    assert torch.equal(out[2:], torch.zeros(8, 4))
    weights = moe.last_routing.weights[:2]
    torch.testing.assert_close(out[:2], weights * moe.experts.expert(0, x[:2]))


def test_tokens_routed_to_a_null_expert_cost_nothing_and_add_nothing(experts_path: str) -> None:
    torch.manual_seed(6)
    moe = MoE(4, 8, num_experts=2, k=1, null=1, normalize=False)
    moe.router.selection_bias[2] = 100.0  # the null expert
    calls = []
    moe.experts.register_forward_hook(lambda module, args, output: calls.append(args[1]))
    out = moe(torch.randn(6, 4))
    assert torch.equal(out, torch.zeros(6, 4)) and calls == [[0, 0]]
    assert not moe.last_routing.kept.any() and moe.last_routing.load().tolist() == [0, 0, 6]


def test_selection_bias_changes_the_choice_not_the_weights(experts_path: str) -> None:
    torch.manual_seed(2)
    router = Router(8, num_experts=4, k=2)
    tokens = torch.randn(32, 8)
    router.selection_bias[3] = 10.0
    routing = router(tokens)
    assert (routing.experts == 3).any(dim=-1).all()  # every token picks the biased expert
    chosen = routing.probs.gather(-1, routing.experts)
    torch.testing.assert_close(routing.weights, chosen / chosen.sum(-1, keepdim=True))  # weights from scores


@pytest.mark.parametrize("options, message", [
    ({"num_experts": 4, "k": 5}, "k must be between 1 and num_experts"),
    ({"num_experts": 4, "k": 0}, "k must be between 1 and num_experts"),
    ({"num_experts": 0, "k": 1}, "num_experts must be at least 1"),
    ({"num_experts": 4, "k": 1, "score": "relu"}, "score must be"),
    ({"num_experts": 4, "k": 1, "kind": "conv"}, "expert kind"),
    ({"num_experts": 4, "k": 1, "activation": "tanh"}, "activation"),
    ({"num_experts": 4, "k": 1, "shared": -1}, "shared"),
    ({"num_experts": 4, "k": 1, "null": -2}, "null"),
    ({"num_experts": 4, "k": 1, "capacity_factor": 0.0}, "capacity_factor must be positive"),
])
def test_bad_settings_name_the_value(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MoE(8, 16, **options)


def test_trains_on_a_task_where_experts_must_specialise() -> None:
    """Two clusters with opposite targets: a 2-expert top-1 MoE learns both (a single linear map cannot)."""
    torch.manual_seed(3)
    centres = torch.tensor([[3.0, 0.0], [-3.0, 0.0]])
    label = torch.randint(0, 2, (256,))
    x = centres[label] + 0.3 * torch.randn(256, 2)
    target = torch.where(label[:, None] == 0, x @ torch.tensor([[1.0, 2.0], [-1.0, 0.5]]),
                         x @ torch.tensor([[-2.0, 0.0], [0.5, 1.0]]))
    moe = MoE(2, 16, num_experts=2, k=1, normalize=False)
    optimizer = torch.optim.Adam(moe.parameters(), lr=1e-2)
    for _ in range(400):
        loss = torch.nn.functional.mse_loss(moe(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05 * target.var().item()
