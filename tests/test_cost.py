"""subnets.cost against hand counts: every registered model, masks, routing (k of E, shared, null experts,
capacity), truncated boosting stages, per-example prefixes; and against FlopCounterMode on the dense models."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from subnets.boosting import BoostedNet
from subnets.cost import measure
from subnets.experts import MoE, cpu_kernel
from subnets.experts.classifier import DenseFeedForward, FeedForwardClassifier, active_parameters
from subnets.experts.moefy import FeedForwardSite, MoefiedFeedForward, split_block
from subnets.masks import Mask
from subnets.models import build_model, model_names, prunable_layers


def _resnet20_macs(h: int) -> int:
    """Stem, three stages of six 3x3 convs (the first of stages 2 and 3 strided, with a 1x1 shortcut), fc."""
    p1, p2, p3 = h * h, (h // 2) ** 2, (h // 4) ** 2
    return (3 * 16 * 9 * p1 + 6 * 16 * 16 * 9 * p1
            + (16 * 32 * 9 + 5 * 32 * 32 * 9 + 16 * 32) * p2
            + (32 * 64 * 9 + 5 * 64 * 64 * 9 + 32 * 64) * p3
            + 64 * 10)


# name -> (input shape, options, MACs per example, parameters), all for 10 classes, written out by hand.
HAND = {
    "lenet300_100": ((1, 28, 28), {}, 784 * 300 + 300 * 100 + 100 * 10, 785 * 300 + 301 * 100 + 101 * 10),
    "mlp": ((3, 8, 8), {"hidden": [64, 32]}, 192 * 64 + 64 * 32 + 32 * 10, 193 * 64 + 65 * 32 + 33 * 10),
    "conv2": ((3, 16, 16), {},
              (3 * 64 + 64 * 64) * 9 * 16 * 16 + 64 * 8 * 8 * 256 + 256 * 256 + 256 * 10,
              (3 * 9 + 1) * 64 + (64 * 9 + 1) * 64 + (64 * 8 * 8 + 1) * 256 + 257 * 256 + 257 * 10),
    "conv4": ((3, 16, 16), {},
              (3 * 64 + 64 * 64) * 9 * 16 * 16 + (64 * 128 + 128 * 128) * 9 * 8 * 8 + 128 * 4 * 4 * 256
              + 256 * 256 + 256 * 10,
              (3 * 9 + 1) * 64 + (64 * 9 + 1) * 64 + (64 * 9 + 1) * 128 + (128 * 9 + 1) * 128
              + (128 * 4 * 4 + 1) * 256 + 257 * 256 + 257 * 10),
    "conv6": ((3, 16, 16), {},
              (3 * 64 + 64 * 64) * 9 * 16 * 16 + (64 * 128 + 128 * 128) * 9 * 8 * 8
              + (128 * 256 + 256 * 256) * 9 * 4 * 4 + 256 * 2 * 2 * 256 + 256 * 256 + 256 * 10,
              (3 * 9 + 1) * 64 + (64 * 9 + 1) * 64 + (64 * 9 + 1) * 128 + (128 * 9 + 1) * 128
              + (128 * 9 + 1) * 256 + (256 * 9 + 1) * 256 + (256 * 2 * 2 + 1) * 256 + 257 * 256 + 257 * 10),
    "resnet20": ((3, 16, 16), {}, _resnet20_macs(16),
                 3 * 16 * 9 + 6 * 16 * 16 * 9 + 16 * 32 * 9 + 5 * 32 * 32 * 9 + 16 * 32
                 + 32 * 64 * 9 + 5 * 64 * 64 * 9 + 32 * 64 + 2 * (7 * 16 + 7 * 32 + 7 * 64) + 64 * 10 + 10),
    "cnn1d": ((1, 40), {}, (1 * 32 * 40 + 32 * 32 * 20 + 32 * 32 * 10) * 5 + 32 * 10 * 64 + 64 * 10,
              (1 * 5 + 1) * 32 + 2 * (32 * 5 + 1) * 32 + (32 * 10 + 1) * 64 + 65 * 10),
    "lenet5": ((1, 28, 28), {}, 1 * 6 * 25 * 28 * 28 + 6 * 16 * 25 * 10 * 10 + 16 * 5 * 5 * 120 + 120 * 84 + 84 * 10,
               (25 + 1) * 6 + (6 * 25 + 1) * 16 + (400 + 1) * 120 + 121 * 84 + 85 * 10),
}


def _flops(model: nn.Module, x: torch.Tensor, **kwargs) -> int:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x, **kwargs)
    return counter.get_total_flops()


def test_every_registered_model_has_a_hand_count() -> None:
    assert sorted(HAND) == model_names()


@pytest.mark.parametrize("name", sorted(HAND))
def test_dense_models_match_the_hand_count_and_the_flop_counter(name: str) -> None:
    shape, options, macs, parameters = HAND[name]
    torch.manual_seed(0)
    model = build_model(name, shape, 10, **options)
    x = torch.randn(3, *shape)
    cost = measure(model, x)
    assert cost.macs == macs and cost.macs_per_example.tolist() == [macs] * 3
    assert cost.parameters == parameters
    assert cost.active_parameters == parameters  # a dense model uses every parameter on every example
    assert 2 * macs * len(x) == _flops(model, x)
    assert sum(layer.macs for layer in cost.layers.values()) == macs


def test_a_masked_mlp_costs_one_mac_per_kept_weight() -> None:
    torch.manual_seed(1)
    model = build_model("mlp", (20,), 5, hidden=[30, 15])
    params = dict(model.named_parameters())
    mask = Mask({n: torch.rand_like(params[n]) < 0.3 for n in prunable_layers(model)})
    cost = measure(model, torch.randn(4, 20), mask)
    kept = sum(mask.kept().values())
    pruned = sum(mask.sizes().values()) - kept
    assert 0 < kept < 20 * 30 + 30 * 15 + 15 * 5
    assert cost.macs == kept
    assert cost.active_parameters == cost.parameters - pruned
    assert cost.layers["fc2"].macs == mask.kept()["fc2.weight"]


def test_masked_convolutions_scale_with_output_positions() -> None:
    torch.manual_seed(2)
    model = build_model("resnet20", (3, 16, 16), 10)
    names = ["conv1.weight", "layer1.0.conv1.weight", "layer2.0.conv1.weight", "layer3.0.shortcut.0.weight"]
    params = dict(model.named_parameters())
    mask = Mask({n: torch.rand_like(params[n]) < 0.5 for n in names})
    kept = mask.kept()
    cost = measure(model, torch.randn(2, 3, 16, 16), mask)
    assert cost.layers["conv1"].macs == kept["conv1.weight"] * 16 * 16
    assert cost.layers["layer1.0.conv1"].macs == kept["layer1.0.conv1.weight"] * 16 * 16
    assert cost.layers["layer2.0.conv1"].macs == kept["layer2.0.conv1.weight"] * 8 * 8  # stride 2
    assert cost.layers["layer3.0.shortcut.0"].macs == kept["layer3.0.shortcut.0.weight"] * 4 * 4
    positions = dict(zip(names, (16 * 16, 16 * 16, 8 * 8, 4 * 4), strict=True))
    pruned_macs = sum((params[n].numel() - kept[n]) * positions[n] for n in names)
    assert cost.macs == _resnet20_macs(16) - pruned_macs


def test_measuring_leaves_the_model_as_it_was() -> None:
    torch.manual_seed(3)
    model = build_model("resnet20", (3, 8, 8), 10)
    model.train()
    model.layer2.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    measure(model, torch.randn(4, 3, 8, 8))
    assert model.training and model.layer1.training and not model.layer2.training and not model.layer2[0].training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BatchNorm statistics unmoved


@pytest.fixture(params=["compiled", "python"])
def experts_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The routing (and its kept pairs) from the compiled CPU kernel, and again from the Python loop."""
    monkeypatch.setenv(cpu_kernel.SWITCH, request.param)
    return request.param


def _served(experts: list[list[int]], num_experts: int, capacity: int) -> list[int]:
    """Routed pairs each token is computed for, by hand: null experts (index >= num_experts) compute nothing and
    each expert serves its first ``capacity`` pairs in token order."""
    load = [0] * num_experts
    served = []
    for choices in experts:
        count = 0
        for e in choices:
            if e < num_experts and load[e] < capacity:
                load[e] += 1
                count += 1
        served.append(count)
    return served


def test_routed_tokens_cost_their_kept_experts_shared_experts_and_the_router(experts_path: str) -> None:
    """Examples of 5 tokens through a Linear and an MoE (4 experts, k = 2, one shared, two null, capacity)."""
    torch.manual_seed(4)
    dim, hidden, experts, null, k = 8, 6, 4, 2, 2
    moe = MoE(dim, hidden, experts, k, shared=1, null=null, capacity_factor=0.75)
    with torch.no_grad():
        moe.router.selection_bias.copy_(torch.tensor([0.3, 0.0, 0.0, 0.0, 0.1, 0.0]))
    model = nn.Sequential(nn.Linear(dim, dim), moe)
    x = torch.randn(6, 5, dim)
    cost = measure(model, x)
    routing = moe.last_routing
    capacity = math.ceil(0.75 * 30 * k / experts)
    served = _served(routing.experts.tolist(), experts, capacity)
    assert (routing.experts >= experts).any() and sum(served) < sum(
        1 for row in routing.experts.tolist() for e in row if e < experts)  # some nulls and some dropped pairs
    expert_macs, expert_params = 2 * dim * hidden, 2 * dim * hidden + hidden + dim
    token_macs = [dim * dim + dim * (experts + null) + expert_macs * (s + 1) for s in served]
    token_params = [dim * dim + dim + dim * (experts + null) + expert_params * (s + 1) for s in served]
    examples = torch.tensor(token_macs).reshape(6, 5)
    assert cost.macs_per_example.tolist() == examples.sum(1).tolist()
    torch.testing.assert_close(cost.active_per_example, torch.tensor(token_params, dtype=torch.float64)
                               .reshape(6, 5).mean(1))
    assert cost.layers["1"].parameters == dim * (experts + null) + (experts + 1) * expert_params
    assert len(set(cost.macs_per_example.tolist())) > 1  # routing makes examples differ


def test_a_masked_expert_costs_its_kept_weights(experts_path: str) -> None:
    torch.manual_seed(5)
    moe = MoE(4, 3, num_experts=2, k=1, normalize=False)
    with torch.no_grad():
        moe.router.selection_bias[1] = 100.0  # every token goes to expert 1
    mask = {"experts.w_in": torch.rand(2, 4, 3) < 0.5, "experts.w_out": torch.rand(2, 3, 4) < 0.5}
    cost = measure(moe, torch.randn(7, 4), mask)
    kept = int(mask["experts.w_in"][1].sum() + mask["experts.w_out"][1].sum())
    assert cost.macs == 4 * 2 + kept
    assert cost.active_parameters == 4 * 2 + kept + 3 + 4


def test_classifier_active_parameters_are_the_static_count_and_follow_the_routing() -> None:
    """Without inputs, the count the experiments report (all parameters less the idle routed experts); with
    inputs, the same without capacity, and less where a capacity drops pairs."""
    torch.manual_seed(6)
    for ffn, idle in [(MoE(16, 8, 6, 2, shared=1), 4), (MoE(16, 8, 5, 3, kind="swiglu"), 2),
                      (MoE(16, 8, 6, 2, capacity_factor=1.0), 4), (DenseFeedForward(16, 16), 0)]:
        model = FeedForwardClassifier((2, 5), 3, 16, ffn)
        if isinstance(ffn, MoE):
            with torch.no_grad():
                ffn.router.selection_bias.normal_()
        total = sum(p.numel() for p in model.parameters())
        per_expert = sum(p[0].numel() for p in ffn.experts.parameters()) if isinstance(ffn, MoE) else 0
        assert active_parameters(model) == total - idle * per_expert
        measured = active_parameters(model, torch.randn(9, 2, 5))
        if getattr(ffn, "capacity_factor", None) is None:
            assert measured == total - idle * per_expert
        else:  # the biased router overflows its favourite experts
            assert measured < total - idle * per_expert
    x = torch.randn(12, 10)
    model = FeedForwardClassifier((10,), 3, 16, DenseFeedForward(16, 32))
    assert 2 * measure(model, x).macs * 12 == _flops(model, x)
    with_null = FeedForwardClassifier((10,), 3, 16, MoE(16, 8, 4, 2, null=2))
    with pytest.raises(ValueError, match="null experts"):
        active_parameters(with_null)
    served = measure(with_null, x)
    kept = with_null.ffn.last_routing.kept.sum(1).double()
    expert = 2 * 16 * 8 + 8 + 16
    torch.testing.assert_close(served.active_per_example, 10 * 16 + 16 + 16 * 6 + expert * kept + 16 * 3 + 3)
    assert active_parameters(with_null, x) == round(float((10 * 16 + 16 + 16 * 6 + expert * kept + 51).mean()))


def _boosted(d: int = 6, outputs: int = 3, units: int = 4, stages: int = 3, extractor: nn.Module | None = None):
    torch.manual_seed(7)
    net = BoostedNet(torch.zeros(d), torch.ones(d), torch.zeros(outputs), units, "relu", extractor)
    for _ in range(stages):
        net.add_stage(torch.randn(units, d), torch.randn(units), torch.randn(outputs, units), torch.randn(outputs))
    return net


def test_truncated_boosting_costs_only_its_first_stages() -> None:
    d, outputs, units = 6, 3, 4
    net = _boosted(d, outputs, units)
    x = torch.randn(5, d)
    for t in range(4):
        cost = measure(net, x, stages=t)
        assert cost.macs == t * units * (d + outputs)
        assert cost.active_parameters == t * units * (d + 1 + outputs) + outputs + t * outputs
        assert 2 * cost.macs * len(x) == _flops(net, x, stages=t)
    assert measure(net, x).macs == measure(net, x, stages=3).macs
    mask = {"hidden_weight": torch.arange(12 * d).reshape(12, d) % 2 == 0}
    assert measure(net, x, mask, stages=2).macs == 2 * units * (d // 2 + outputs)

    class Wrapper(nn.Module):  # a boosted net called with stages as a positional argument, inside another model
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x, 1)

    assert measure(Wrapper(), x).layers["net"].macs == units * (d + outputs)


def test_a_boosted_net_counts_its_feature_extractor() -> None:
    d, outputs, units = 4, 2, 3
    net = _boosted(d, outputs, units, 2, nn.Sequential(nn.Linear(7, d), nn.ReLU()))
    x = torch.randn(5, 7)
    cost = measure(net, x, stages=1)
    assert cost.macs == 7 * d + units * (d + outputs)
    assert cost.active_parameters == 7 * d + d + units * (d + 1 + outputs) + outputs + outputs
    assert 2 * cost.macs * len(x) == _flops(net, x, stages=1)


def test_prefix_macs_accumulate_block_by_block_to_the_total() -> None:
    torch.manual_seed(8)
    model = build_model("resnet20", (3, 16, 16), 10)
    cost = measure(model, torch.randn(2, 3, 16, 16))
    prefix = cost.prefix_macs(["conv1", "bn1", "layer1", "layer2", "layer3", "fc"])
    assert prefix.shape == (6, 2)
    assert (prefix[1:] >= prefix[:-1]).all()
    assert torch.equal(prefix[-1], cost.macs_per_example)
    assert prefix[0].tolist() == prefix[1].tolist() == [3 * 16 * 9 * 256] * 2
    assert (prefix[2] - prefix[1]).tolist() == [6 * 16 * 16 * 9 * 256] * 2
    assert (prefix[4] - prefix[3]).tolist() == [(32 * 64 * 9 + 5 * 64 * 64 * 9 + 32 * 64) * 16] * 2
    with pytest.raises(ValueError, match="no counted layer ran inside 'layer4'"):
        cost.prefix_macs(["layer4"])


def test_prefix_macs_follow_each_examples_routing(experts_path: str) -> None:
    torch.manual_seed(9)
    moe = MoE(8, 4, 4, 2, null=2)
    model = nn.Sequential(nn.Linear(8, 8), moe, nn.Linear(8, 2))
    x = torch.randn(10, 3, 8)
    cost = measure(model, x)
    prefix = cost.prefix_macs(["0", "1", "2"])
    kept = moe.last_routing.kept.reshape(10, 3 * 2).sum(1)
    assert prefix[0].tolist() == [3 * 64] * 10
    assert (prefix[1] - prefix[0]).tolist() == (3 * 8 * 6 + 2 * 8 * 4 * kept).tolist()
    assert torch.equal(prefix[2], cost.macs_per_example)


def test_uncountable_modules_and_bad_masks_are_errors() -> None:
    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(4, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.weight

    with pytest.raises(ValueError, match=r"cannot count module '1' \(Scale\)"):
        measure(nn.Sequential(nn.Linear(4, 4), Scale()), torch.randn(2, 4))
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="'1.weight', which is not a parameter"):
        measure(model, torch.randn(2, 4), {"1.weight": torch.ones(4, 4, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"has shape \(4,\)"):
        measure(model, torch.randn(2, 4), {"0.weight": torch.ones(4, dtype=torch.bool)})


def test_pooling_ops_count_their_window_weights_and_a_conv_pool_its_convolution() -> None:
    from subnets.pooling.factory import create_pool

    x = torch.randn(2, 3, 8)  # 1-D pools of window 2: 3 channels x 4 output positions per example
    assert measure(create_pool("max", 1), x).macs == 0
    gem = measure(create_pool("gem", 1), x)
    assert gem.macs == 0 and gem.active_parameters == 1  # p is element-wise
    assert measure(create_pool("gated", 1), x).macs == 12 * 2  # one gate dot product per output value
    assert measure(create_pool("tree", 1), x).macs == 12 * 2 * 3  # a gate and two leaves per output value
    conv = measure(create_pool("conv", 1, channels=3), x)
    assert conv.macs == 4 * 3 * 3 * 2 and conv.active_parameters == 3 * 3 * 2 + 3  # the convolution, as a layer


GROUPS = [[0, 3, 5], [1], [2, 4]]  # uneven: experts padded to width 3, 9 slots for 6 real neurons


def _moefied(k: int, router: nn.Module | None = None) -> tuple[MoefiedFeedForward, nn.Module]:
    """A dense FFN 4 -> 6 (ReLU) -> 3 and the same block split into the experts ``GROUPS``, ``k`` per token."""
    torch.manual_seed(10)
    linear_in, linear_out = nn.Linear(4, 6), nn.Linear(6, 3)
    groups = [torch.tensor(g) for g in GROUPS]
    site = FeedForwardSite("ffn", linear_in, "relu", linear_out, lambda block: None)
    block = MoefiedFeedForward(split_block(site, groups), linear_out.bias.detach(),
                               nn.Linear(4, 3) if router is None else router, k, groups)
    return block, nn.Sequential(linear_in, nn.ReLU(), linear_out)


def _by_hand(choice: list[list[int]], router_macs: int, router_params: int) -> tuple[list[int], list[int]]:
    """Each token's MACs and active parameters: its experts' real neurons (w_in, w_out; b_in), the router,
    bias_out."""
    neurons = [sum(len(GROUPS[e]) for e in row) for row in choice]
    return ([router_macs + n * (4 + 3) for n in neurons], [router_params + n * (4 + 1 + 3) + 3 for n in neurons])


@pytest.mark.parametrize("router", ["linear", "mlp"])
@pytest.mark.parametrize("k", [1, 2])
def test_a_moefied_block_costs_its_chosen_experts_real_neurons_and_its_router(k: int, router: str) -> None:
    module, router_macs, router_params = nn.Linear(4, 3), 4 * 3, 4 * 3 + 3
    if router == "mlp":
        module, router_macs, router_params = (nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)),
                                              4 * 5 + 5 * 3, 4 * 5 + 5 + 5 * 3 + 3)
    block, _ = _moefied(k, module)
    x = torch.randn(6, 4, 4)  # 6 examples of 4 tokens
    cost = measure(block, x)
    choice = block.last_choice.tolist()
    assert len(choice) == 24 and all(len(set(row)) == k for row in choice)
    macs, params = _by_hand(choice, router_macs, router_params)
    assert cost.macs_per_example.tolist() == torch.tensor(macs).reshape(6, 4).sum(1).tolist()
    torch.testing.assert_close(cost.active_per_example, torch.tensor(params, dtype=torch.float64).reshape(6, 4).mean(1))
    assert len(set(macs)) > 1  # tokens chose experts of different sizes


def test_a_masked_moefied_block_costs_the_kept_weights_of_real_neurons_only() -> None:
    block, _ = _moefied(2)
    torch.manual_seed(11)
    mask = {name: torch.rand(p.shape) < 0.5 for name, p in block.named_parameters()
            if name in ("experts.w_in", "experts.w_out", "experts.b_in", "router.weight")}
    x = torch.randn(5, 4)
    cost = measure(block, x, mask)
    sizes = [len(g) for g in GROUPS]
    expert_macs = [int(mask["experts.w_in"][e, :, :n].sum() + mask["experts.w_out"][e, :n].sum())
                   for e, n in enumerate(sizes)]
    expert_params = [expert_macs[e] + int(mask["experts.b_in"][e, :n].sum()) for e, n in enumerate(sizes)]
    router = int(mask["router.weight"].sum())
    choice = block.last_choice.tolist()
    assert cost.macs_per_example.tolist() == [router + sum(expert_macs[e] for e in row) for row in choice]
    assert cost.active_per_example.tolist() == [router + 3 + sum(expert_params[e] for e in row) + 3
                                                for row in choice]


def test_a_moefied_block_with_every_expert_costs_what_the_dense_block_did() -> None:
    block, dense = _moefied(3)
    x = torch.randn(5, 4, 4)
    cost, dense_cost = measure(block, x), measure(dense, x)
    torch.testing.assert_close(block(x), dense(x))
    assert dense_cost.macs == 4 * (4 * 6 + 6 * 3)
    assert cost.macs_per_example.tolist() == dense_cost.macs_per_example.tolist()  # no padding, no router
    assert cost.active_parameters == dense_cost.active_parameters == 4 * 6 + 6 + 6 * 3 + 3


def test_an_oracle_costs_every_expert_and_random_choice_no_router() -> None:
    block, _ = _moefied(1)
    x = torch.randn(5, 4, 4)
    block.selection = "oracle"
    cost = measure(block, x)
    assert cost.macs_per_example.tolist() == [4 * 6 * (4 + 3)] * 5
    assert cost.active_parameters == 6 * (4 + 1 + 3) + 3
    block.selection = "random"
    torch.manual_seed(12)
    cost = measure(block, x)
    macs, params = _by_hand(block.last_choice.tolist(), 0, 0)
    assert cost.macs_per_example.tolist() == torch.tensor(macs).reshape(5, 4).sum(1).tolist()
    torch.testing.assert_close(cost.active_per_example, torch.tensor(params, dtype=torch.float64).reshape(5, 4).mean(1))


def test_a_router_with_other_parameterised_modules_is_an_error() -> None:
    block, _ = _moefied(1, nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3)))
    with pytest.raises(ValueError, match=r"module 'router.1' \(LayerNorm\)"):
        measure(block, torch.randn(2, 4))
    block.k = 3  # every expert runs: the router is not used, so not counted
    assert measure(block, torch.randn(2, 4)).macs == 6 * (4 + 3)
