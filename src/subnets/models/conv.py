"""Conv-2, Conv-4 and Conv-6 of Frankle & Carbin (2019), adapted to any ``(C, H, W)`` input such as MNIST.

Blocks of two 3x3 convolutions (padding 1, ReLU) each followed by 2x2 max pooling, with 64, 128 and 256
channels; then fc 256, ReLU, fc 256, ReLU, fc num_classes. Glorot normal init, as in the paper.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from subnets.models.init import glorot_normal_
from subnets.models.registry import layer_kinds, register_model, require_ndim

BLOCK_CHANNELS = (64, 128, 256)


class ConvNet(nn.Module):
    """``blocks`` conv blocks (``conv1 .. conv{2*blocks}``, ``pool1 .. pool{blocks}``) then ``fc1 .. fc3``."""

    def __init__(self, input_shape: tuple[int, int, int], blocks: int, num_classes: int):
        super().__init__()
        channels, height, width = input_shape
        self.blocks = blocks
        for b, out in enumerate(BLOCK_CHANNELS[:blocks]):
            setattr(self, f"conv{2 * b + 1}", nn.Conv2d(channels, out, 3, padding=1))
            setattr(self, f"conv{2 * b + 2}", nn.Conv2d(out, out, 3, padding=1))
            setattr(self, f"pool{b + 1}", nn.MaxPool2d(2))
            channels = out
        self.act = nn.ReLU()
        self.flatten = nn.Flatten()
        # 3x3 convs with padding 1 keep the size; each 2x2 pool halves it, rounding down.
        flat = channels * math.prod(size // 2**blocks for size in (height, width))
        self.fc1 = nn.Linear(flat, 256)
        self.fc2 = nn.Linear(256, 256)
        self.fc3 = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in range(1, self.blocks + 1):
            x = self.act(getattr(self, f"conv{2 * b - 1}")(x))
            x = self.act(getattr(self, f"conv{2 * b}")(x))
            x = getattr(self, f"pool{b}")(x)
        x = self.flatten(x)
        x = self.act(self.fc1(x))
        x = self.act(self.fc2(x))
        return self.fc3(x)

    def prunable_layers(self) -> dict[str, str]:
        """Conv weights ("conv"), ``fc1``/``fc2`` weights ("fc") and ``fc3`` weight ("output")."""
        return layer_kinds(self, self.fc3)


def _build(name: str, blocks: int, input_shape: tuple[int, ...], num_classes: int) -> ConvNet:
    require_ndim(name, input_shape, 3, "C, H, W")
    smallest = 2**blocks
    if min(input_shape[1:]) < smallest:
        raise ValueError(
            f"model '{name}' pools {blocks} times and needs H, W >= {smallest}, got input_shape {input_shape}"
        )
    return glorot_normal_(ConvNet(input_shape, blocks, num_classes))


@register_model("conv2")
def conv2(input_shape: tuple[int, ...], num_classes: int) -> ConvNet:
    """Conv-2: 64, 64, pool; fc 256, 256, num_classes."""
    return _build("conv2", 1, input_shape, num_classes)


@register_model("conv4")
def conv4(input_shape: tuple[int, ...], num_classes: int) -> ConvNet:
    """Conv-4: 64, 64, pool, 128, 128, pool; fc 256, 256, num_classes."""
    return _build("conv4", 2, input_shape, num_classes)


@register_model("conv6")
def conv6(input_shape: tuple[int, ...], num_classes: int) -> ConvNet:
    """Conv-6: 64, 64, pool, 128, 128, pool, 256, 256, pool; fc 256, 256, num_classes."""
    return _build("conv6", 3, input_shape, num_classes)
