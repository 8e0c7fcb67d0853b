"""Populations: each member trains as it would alone (within float tolerance), masks hold, bad input."""

from __future__ import annotations

import pytest
import torch

from subnets.data import load_dataset
from subnets.masks import Mask, layerwise_magnitude, random_like_counts
from subnets.models import build_model, prunable_layers
from subnets.train import Population, TrainConfig, population_support, train, train_population

# Batched kernels sum in another order than the single-model ones: after a few hundred steps members
# differ from lone training by float rounding only. These bounds hold on CPU with room to spare.
WEIGHT_ATOL = 2e-4
CURVE_ATOL = 2e-3


def _members(name: str, shape: tuple[int, ...]) -> tuple[list[torch.nn.Module], list[Mask | None]]:
    """Three members: dense, magnitude-pruned, randomly pruned; different initialisations."""
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(build_model(name, shape, 10))
    layers = prunable_layers(models[0])
    pruned = layerwise_magnitude(models[1], Mask.ones_like(models[1], layers), {n: 0.6 for n in layers})
    return models, [None, pruned, random_like_counts(pruned, torch.Generator().manual_seed(0))]


def _clone(models: list[torch.nn.Module]) -> list[torch.nn.Module]:
    import copy

    return [copy.deepcopy(m) for m in models]


@pytest.mark.parametrize("options", [
    {"optimizer": "adam", "lr": 1.2e-3},
    {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "schedule": "cosine", "warmup": "20it"},
], ids=["adam", "sgd-momentum-cosine"])
def test_members_train_as_they_would_alone_lenet(mnist, options) -> None:
    _check_members_match(mnist, "lenet300_100", TrainConfig(length="150it", eval_every="50it", **options))


def test_members_train_as_they_would_alone_conv() -> None:
    data = load_dataset("mnist1d", num_samples=1200)
    _check_members_match(data, "cnn1d", TrainConfig(length="120it", eval_every="40it", batch_size=32, lr=3e-3))


def _check_members_match(data, name: str, config: TrainConfig) -> None:
    models, masks = _members(name, data.input_shape)
    seeds, alone = [11, 12, 13], _clone(models)
    results = train_population(models, data, config, seeds=seeds, masks=masks, checkpoint_at=(0, 50))
    for member, (model, mask, seed) in enumerate(zip(alone, masks, seeds, strict=True)):
        expected = train(model, data, config, seed=seed, mask=mask, checkpoint_at=(0, 50))
        got = results[member]
        for key, value in model.state_dict().items():
            torch.testing.assert_close(models[member].state_dict()[key], value, atol=WEIGHT_ATOL, rtol=0)
        assert got.curve["iteration"] == expected.curve["iteration"]
        for key in ("val_loss", "val_acc", "test_acc"):
            assert got.curve[key] == pytest.approx(expected.curve[key], abs=CURVE_ATOL), key
        assert got.early_stop_iter == expected.early_stop_iter
        assert set(got.checkpoints) == {0, 50}
        assert torch.equal(got.checkpoints[0][next(iter(got.checkpoints[0]))],
                           expected.checkpoints[0][next(iter(expected.checkpoints[0]))])
        if mask is not None:
            weights = dict(models[member].named_parameters())
            for layer, keep in mask.items():
                assert torch.count_nonzero(weights[layer][~keep]) == 0
                assert torch.count_nonzero(weights[layer][keep]) == int(keep.sum())


def test_members_are_independent(mnist) -> None:
    """Changing one member's mask and seed changes nothing in another member."""
    models, masks = _members("lenet300_100", mnist.input_shape)
    config = TrainConfig(length="40it", eval_every="40it")
    first = train_population(_clone(models), mnist, config, seeds=[1, 2, 3], masks=masks)
    second = train_population(_clone(models[:1]) + _clone(models[1:]), mnist, config, seeds=[1, 7, 3],
                              masks=[masks[0], masks[2], masks[2]])
    assert first[0].curve == second[0].curve and first[2].curve == second[2].curve
    assert first[1].curve != second[1].curve


def test_unsupported_and_mismatched_members_are_named() -> None:
    torch.manual_seed(0)
    resnet = build_model("resnet20", (1, 28, 28), 10)
    assert "buffers" in population_support(resnet)
    with pytest.raises(ValueError, match="buffers"):
        Population([resnet])
    lenet = build_model("lenet300_100", (1, 28, 28), 10)
    wide = build_model("mlp", (1, 28, 28), 10, hidden=[400, 100])
    with pytest.raises(ValueError, match="member 1 is not the same architecture"):
        Population([lenet, wide])
    with pytest.raises(ValueError, match="2 masks"):
        Population([lenet], [None, None])
    with pytest.raises(ValueError, match="3 seeds"):
        train_population([lenet], None, TrainConfig(), seeds=[1, 2, 3])
