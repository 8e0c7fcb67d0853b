"""Masks, pruning criteria, and masks that hold through training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from subnets.masks import Mask, MaskedParameters, global_magnitude, layerwise_magnitude, random_like_counts
from subnets.models import build_model, prunable_layers


def _lenet() -> nn.Module:
    torch.manual_seed(0)
    return build_model("lenet300_100", (1, 28, 28), 10)


def test_layerwise_magnitude_removes_smallest_of_each_layer() -> None:
    model = _lenet()
    mask = Mask.ones_like(model, prunable_layers(model))
    pruned = layerwise_magnitude(model, mask, {"fc1.weight": 0.2, "fc2.weight": 0.2, "fc3.weight": 0.1})
    weights = dict(model.named_parameters())
    for name, rate in (("fc1.weight", 0.2), ("fc2.weight", 0.2), ("fc3.weight", 0.1)):
        keep = pruned[name]
        assert int((~keep).sum()) == round(keep.numel() * rate)
        magnitude = weights[name].detach().abs()
        assert magnitude[~keep].max() <= magnitude[keep].min()


def test_pruning_never_revives_and_counts_remaining() -> None:
    model = _lenet()
    mask = Mask.ones_like(model, ["fc1.weight"])
    once = layerwise_magnitude(model, mask, {"fc1.weight": 0.5})
    with torch.no_grad():  # make pruned weights the largest: they must still stay pruned
        model.fc1.weight[~once["fc1.weight"]] = 100.0
    twice = layerwise_magnitude(model, once, {"fc1.weight": 0.5})
    assert not (twice["fc1.weight"] & ~once["fc1.weight"]).any()
    assert twice.kept()["fc1.weight"] == 235200 - round(235200 * 0.5) - round(117600 * 0.5)


def test_global_magnitude_uses_one_threshold() -> None:
    model = _lenet()
    with torch.no_grad():
        model.fc2.weight.mul_(10)  # fc2 is now much larger: global pruning must take mostly fc1
    mask = Mask.ones_like(model, ["fc1.weight", "fc2.weight"])
    pruned = global_magnitude(model, mask, 0.5)
    total = 235200 + 30000
    assert total - sum(pruned.kept().values()) == round(total * 0.5)
    threshold = model.fc1.weight.detach().abs()[~pruned["fc1.weight"]].max()
    assert (model.fc2.weight.detach().abs()[pruned["fc2.weight"]] >= threshold).all()
    assert pruned.per_layer()["fc2.weight"] > pruned.per_layer()["fc1.weight"]


def test_random_prune_keeps_per_layer_counts() -> None:
    model = _lenet()
    mask = Mask.ones_like(model, prunable_layers(model))
    for _ in range(3):
        mask = layerwise_magnitude(model, mask, {n: 0.3 for n in mask})
    random = random_like_counts(mask, torch.Generator().manual_seed(0))
    assert random.kept() == mask.kept()
    assert random != mask
    assert random_like_counts(mask, torch.Generator().manual_seed(0)) == random


@pytest.mark.parametrize("make_optimizer", [
    lambda params: torch.optim.Adam(params, lr=1e-2, foreach=True),
    lambda params: torch.optim.Adam(params, lr=1e-2, fused=True),
    lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.1, foreach=True),
    lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.1, fused=True),
], ids=["adam-foreach", "adam-fused", "sgd-momentum-decay-foreach", "sgd-momentum-decay-fused"])
def test_pruned_weights_stay_exactly_zero_after_100_steps(make_optimizer) -> None:
    model = _lenet()
    mask = layerwise_magnitude(model, Mask.ones_like(model, prunable_layers(model)),
                               {"fc1.weight": 0.8, "fc2.weight": 0.8, "fc3.weight": 0.5})
    mask.apply(model)
    enforce = MaskedParameters(model, mask)
    optimizer = make_optimizer(model.parameters())
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    for _ in range(100):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        enforce.mask_gradients()
        optimizer.step()
        enforce.mask_weights()
    params = dict(model.named_parameters())
    for name, keep in mask.items():
        assert torch.count_nonzero(params[name][~keep]) == 0
        assert torch.count_nonzero(params[name][keep]) == int(keep.sum())
        state = optimizer.state[params[name]]
        for moment in ("exp_avg", "momentum_buffer"):  # no optimizer memory that could resurrect them
            if moment in state:
                assert torch.count_nonzero(state[moment][~keep]) == 0


def test_mask_state_dict_round_trip(tmp_path) -> None:
    model = _lenet()
    mask = layerwise_magnitude(model, Mask.ones_like(model, ["fc2.weight"]), {"fc2.weight": 0.25})
    torch.save(mask.state_dict(), tmp_path / "mask.pt")
    loaded = Mask(torch.load(tmp_path / "mask.pt", weights_only=True))
    assert loaded == mask
    assert abs(loaded.density() - 0.75) < 1e-9


def test_masked_parameters_of_an_empty_mask_do_nothing() -> None:
    model = _lenet()
    before = model.fc1.weight.detach().clone()
    enforce = MaskedParameters(model, Mask({}))
    nn.functional.cross_entropy(model(torch.randn(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3])).backward()
    enforce.mask_gradients()
    enforce.mask_weights()
    assert torch.equal(model.fc1.weight, before) and model.fc1.weight.grad.abs().sum() > 0
