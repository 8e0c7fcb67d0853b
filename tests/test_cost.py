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
