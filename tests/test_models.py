"""The model registry: shapes, parameter counts, prunable layers, initialisation and option checks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from subnets.models import build_model, model_names, prunable_layers

# Each registered model with its natural input shape and options that keep it small.
CASES = {
    "lenet300_100": ((1, 28, 28), {}),
    "mlp": ((20,), {"hidden": [16, 8], "activation": "gelu"}),
    "conv2": ((1, 28, 28), {}),
    "conv4": ((1, 28, 28), {}),
    "conv6": ((1, 28, 28), {}),
    "resnet20": ((1, 28, 28), {}),
    "cnn1d": ((1, 40), {}),
    "lenet5": ((1, 28, 28), {}),
}


def _build(name: str, seed: int = 0, num_classes: int = 10) -> nn.Module:
    shape, options = CASES[name]
    torch.manual_seed(seed)
    return build_model(name, shape, num_classes, **options)


def test_every_model_is_covered() -> None:
    assert sorted(CASES) == model_names()


@pytest.mark.parametrize("name", sorted(CASES))
def test_output_shape_and_gradients(name: str) -> None:
    model = _build(name, num_classes=7)
    x = torch.randn(3, *CASES[name][0])
    logits = model(x)
    assert logits.shape == (3, 7)
    nn.functional.cross_entropy(logits, torch.tensor([0, 3, 6])).backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", sorted(CASES))
def test_prunable_layers_name_real_weights(name: str) -> None:
    model = _build(name)
    params = dict(model.named_parameters())
    kinds = prunable_layers(model)
    assert kinds == model.prunable_layers()
    assert set(kinds) <= set(params)
    assert list(kinds.values()).count("output") == 1
    assert list(kinds.values())[-1] == "output"  # forward order: the output layer comes last
    # conv weights are 3D (1D conv) or 4D (2D conv), linear weights 2D; biases and BatchNorm (1D) never appear
    dims = {"conv": (3, 4), "fc": (2,), "output": (2,)}
    for pname, kind in kinds.items():
        assert pname.endswith(".weight") and params[pname].dim() in dims[kind], pname


def test_prunable_layer_names_and_kinds() -> None:
    lenet = {"fc1.weight": "fc", "fc2.weight": "fc", "fc3.weight": "output"}
    assert prunable_layers(_build("lenet300_100")) == lenet
    assert prunable_layers(_build("conv2")) == {
        "conv1.weight": "conv",
        "conv2.weight": "conv",
        "fc1.weight": "fc",
        "fc2.weight": "fc",
        "fc3.weight": "output",
    }
    assert list(prunable_layers(_build("conv6"))) == [f"conv{i}.weight" for i in range(1, 7)] + [
        "fc1.weight",
        "fc2.weight",
        "fc3.weight",
    ]
    resnet = prunable_layers(_build("resnet20"))
    # stem + 9 blocks x 2 convs + 2 projection shortcuts, then the fc
    assert list(resnet.values()).count("conv") == 1 + 18 + 2
    assert resnet["layer2.0.shortcut.0.weight"] == "conv" and resnet["fc.weight"] == "output"
    mlp = build_model("mlp", (5,), 2, hidden=[4, 4, 4])
    assert list(prunable_layers(mlp).items()) == [
        ("fc1.weight", "fc"),
        ("fc2.weight", "fc"),
        ("fc3.weight", "fc"),
        ("fc4.weight", "output"),
    ]


@pytest.mark.parametrize("name", sorted(CASES))
def test_prunable_layers_without_the_method_agree_with_the_built_in_models(name: str) -> None:
    model = _build(name)
    plain = nn.Module()  # the same layers in the same order, without prunable_layers()
    for child, module in model.named_children():
        plain.add_module(child, module)
    assert list(prunable_layers(plain).items()) == list(model.prunable_layers().items())


def test_prunable_layers_of_a_model_without_weights_is_an_error() -> None:
    assert prunable_layers(nn.Linear(2, 2)) == {"weight": "output"}
    with pytest.raises(ValueError, match="has no Linear or Conv1d/Conv2d weights"):
        prunable_layers(nn.Sequential(nn.ReLU()))


def test_parameter_counts() -> None:
    # LeNet-300-100: 784*300+300 + 300*100+100 + 100*10+10 = 235,500 + 30,100 + 1,010 = 266,610
    assert sum(p.numel() for p in _build("lenet300_100").parameters()) == 266_610
    # Conv-2 on 1x28x28: conv1 1*64*9+64 = 640, conv2 64*64*9+64 = 36,928, pool -> 64*14*14 = 12,544 features,
    # fc1 12,544*256+256 = 3,211,520, fc2 256*256+256 = 65,792, fc3 256*10+10 = 2,570; total 3,317,450
    assert sum(p.numel() for p in _build("conv2").parameters()) == 3_317_450


def test_flatten_size_follows_the_input_shape() -> None:
    for name, shape in [("conv4", (3, 32, 20)), ("conv6", (2, 9, 8)), ("resnet20", (3, 8, 8))]:
        assert build_model(name, shape, 4)(torch.randn(2, *shape)).shape == (2, 4)
    assert build_model("cnn1d", (2, 43), 5, channels=8)(torch.randn(2, 2, 43)).shape == (2, 5)
    assert build_model("lenet300_100", (50,), 3)(torch.randn(2, 50)).shape == (2, 3)


def test_options_change_the_model() -> None:
    wide = build_model("resnet20", (1, 8, 8), 10, width=2)
    assert wide.conv1.out_channels == 32 and wide.fc.in_features == 128
    assert build_model("cnn1d", (1, 40), 10, channels=16).conv2.weight.shape == (16, 16, 5)
    assert isinstance(build_model("mlp", (4,), 2, activation="tanh").act, nn.Tanh)
    linear = build_model("mlp", (4,), 2, hidden=[])
    assert prunable_layers(linear) == {"fc1.weight": "output"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_seed_makes_initialisation_reproducible(name: str) -> None:
    first, again, other = (dict(_build(name, seed).named_parameters()) for seed in (1, 1, 2))
    assert all(torch.equal(first[k], again[k]) for k in first)
    # every prunable weight is drawn afresh from the seeded RNG
    assert not any(torch.equal(first[k], other[k]) for k in prunable_layers(_build(name)))


def test_glorot_normal_init_of_lenet() -> None:
    model = _build("lenet300_100")
    weight = model.fc1.weight
    expected = math.sqrt(2 / (784 + 300))
    assert abs(weight.std().item() - expected) < 0.05 * expected
    assert abs(weight.mean().item()) < 0.05 * expected
    for pname, param in model.named_parameters():
        if pname.endswith(".bias"):
            assert torch.count_nonzero(param) == 0, pname


def test_resnet_init() -> None:
    model = _build("resnet20")
    conv = model.layer3[0].conv2.weight
    # Kaiming normal, fan_out mode: std = sqrt(2 / (out_channels * 3 * 3))
    expected = math.sqrt(2 / (64 * 9))
    assert abs(conv.std().item() - expected) < 0.05 * expected
    assert torch.all(model.bn1.weight == 1) and torch.all(model.bn1.bias == 0)


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown model 'foo'; known: cnn1d, conv2, ") as info:
        build_model("foo", (1, 28, 28), 10)
    assert "\n" not in str(info.value) and "resnet20" in str(info.value)


@pytest.mark.parametrize(
    ("name", "shape", "options", "message"),
    [
        ("mlp", (4,), {"depth": 3}, "no option 'depth'; allowed: activation, hidden"),
        ("conv2", (1, 28, 28), {"width": 2}, "no option 'width'; allowed: none"),
        ("mlp", (4,), {"hidden": [16, 0]}, r"'hidden' must be a list of positive ints, got \[16, 0\]"),
        ("mlp", (4,), {"hidden": 16}, "'hidden' must be a list of positive ints, got 16"),
        ("mlp", (4,), {"hidden": [2.5]}, r"got \[2.5\]"),
        ("mlp", (4,), {"activation": "swish"}, "'activation' must be one of gelu, relu, tanh, got 'swish'"),
        ("resnet20", (1, 28, 28), {"width": 0}, "'width' must be a positive int, got 0"),
        ("cnn1d", (1, 40), {"channels": True}, "'channels' must be a positive int, got True"),
        ("conv2", (784,), {}, r"'conv2' needs input_shape \(C, H, W\), got \(784,\)"),
        ("conv6", (1, 4, 4), {}, "H, W >= 8"),
        ("resnet20", (1, 40), {}, r"'resnet20' needs input_shape \(C, H, W\)"),
        ("cnn1d", (1, 28, 28), {}, r"'cnn1d' needs input_shape \(C, L\), got \(1, 28, 28\)"),
        ("lenet5", (1, 12, 28), {}, r"'lenet5' needs H, W >= 14"),
        ("lenet5", (28, 28), {}, r"'lenet5' needs input_shape \(C, H, W\)"),
        ("lenet300_100", (0, 28), {}, r"input_shape must be a tuple of positive ints, got \(0, 28\)"),
    ],
)
def test_bad_options_and_shapes_raise(name: str, shape: tuple[int, ...], options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_model(name, shape, 10, **options)


def test_bad_num_classes_raises() -> None:
    with pytest.raises(ValueError, match="num_classes must be a positive int, got 0"):
        build_model("lenet300_100", (784,), 0)
