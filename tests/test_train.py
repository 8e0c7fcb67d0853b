"""The training loop, its schedules and its configuration."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from subnets.models import build_model
from subnets.train import Diverged, TrainConfig, parse_duration, train


def test_durations() -> None:
    assert parse_duration("50000it", 833) == 50000
    assert parse_duration("10ep", 833) == 8330
    assert parse_duration(" 3 ep", 10) == 30
    for bad in ("10", "ep", "-5it", "1.5ep", "10 epochs"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad, 10)


@pytest.mark.parametrize("field, value, message", [
    ("optimizer", "rmsprop", "optimizer"),
    ("lr", -1.0, "lr"),
    ("batch_size", 0, "batch_size"),
    ("length", "10 epochs", "duration"),
    ("momentum", 1.5, "momentum"),
    ("typo", 1, "typo"),
])
def test_config_rejects_bad_fields(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TrainConfig(**{field: value})


def test_config_rejects_inconsistent_combinations() -> None:
    with pytest.raises(ValidationError, match="nesterov"):
        TrainConfig(optimizer="sgd", nesterov=True)
    with pytest.raises(ValidationError, match="momentum"):
        TrainConfig(optimizer="adam", momentum=0.9)
    with pytest.raises(ValidationError, match="milestones"):
        TrainConfig(milestones=["10it"])


def test_lr_schedules() -> None:
    warm_cosine = TrainConfig(length="100it", warmup="10it", schedule="cosine").lr_factor(1)
    assert warm_cosine(0) == pytest.approx(0.1)
    assert warm_cosine(9) == pytest.approx(1.0)
    assert warm_cosine(10) == pytest.approx(1.0)
    assert warm_cosine(55) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    step = TrainConfig(length="3ep", schedule="step", milestones=["1ep", "2ep"], gamma=0.5).lr_factor(10)
    assert [step(i) for i in (0, 9, 10, 19, 20, 29)] == [1, 1, 0.5, 0.5, 0.25, 0.25]


def _lenet(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("lenet300_100", (1, 28, 28), 10)


def test_training_learns_and_reports_early_stop(mnist) -> None:
    config = TrainConfig(length="300it", eval_every="100it")
    result = train(_lenet(), mnist, config, seed=0, checkpoint_at=(0, 200))
    assert result.curve["iteration"] == [0, 100, 200, 300]
    assert result.curve["test_acc"][0] < 0.3 < 0.85 < result.test_acc_end
    best = min(range(4), key=lambda i: result.curve["val_loss"][i])
    assert result.early_stop_iter == result.curve["iteration"][best]
    assert result.test_acc == result.curve["test_acc"][best]
    assert set(result.checkpoints) == {0, 200}
    initial = _lenet()
    assert torch.equal(result.checkpoints[0]["fc1.weight"], initial.fc1.weight.detach())


def test_a_diverging_training_raises_rather_than_reporting_an_early_stop(mnist) -> None:
    config = TrainConfig(length="40it", eval_every="20it", optimizer="sgd", lr=1e12)
    with pytest.raises(Diverged, match=r"training diverged: training loss (nan|inf) at iteration 20; lower train.lr"):
        train(_lenet(), mnist, config, seed=0)


def test_same_seed_same_numbers_and_resume_from_checkpoint(mnist) -> None:
    config = TrainConfig(length="200it", eval_every="100it", optimizer="sgd", lr=0.05, momentum=0.0)
    first_model, second_model = _lenet(), _lenet()
    first = train(first_model, mnist, config, seed=7, checkpoint_at=(100,))
    second = train(second_model, mnist, config, seed=7)
    assert first.curve == second.curve
    assert torch.equal(first_model.fc1.weight, second_model.fc1.weight)
    # Plain SGD has no state, so restarting at iteration 100 from the checkpoint must land on the same weights.
    resumed = _lenet()
    resumed.load_state_dict(first.checkpoints[100])
    train(resumed, mnist, config, seed=7, start_iteration=100)
    assert torch.allclose(resumed.fc1.weight, first_model.fc1.weight, atol=1e-6)


def test_start_iteration_out_of_range(mnist) -> None:
    with pytest.raises(ValueError, match="start_iteration"):
        train(_lenet(), mnist, TrainConfig(length="10it"), seed=0, start_iteration=11)


@pytest.mark.parametrize("options", [
    {"optimizer": "adam", "lr": 1e-2},
    {"optimizer": "adamw", "lr": 1e-2, "weight_decay": 0.1},
    {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
])
def test_pruned_weights_stay_exactly_zero_through_training(mnist, options) -> None:
    from subnets.masks import Mask, layerwise_magnitude
    from subnets.models import prunable_layers

    model = _lenet()
    mask = layerwise_magnitude(model, Mask.ones_like(model, prunable_layers(model)),
                               {"fc1.weight": 0.9, "fc2.weight": 0.5, "fc3.weight": 0.3})
    train(model, mnist, TrainConfig(length="100it", eval_every="100it", **options), seed=0, mask=mask)
    params = dict(model.named_parameters())
    for name, keep in mask.items():
        assert torch.count_nonzero(params[name][~keep]) == 0, name
        assert torch.count_nonzero(params[name][keep]) == int(keep.sum()), name
