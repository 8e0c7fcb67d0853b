"""LeNet-5 (LeCun et al. 1998) for ``(C, H, W)`` inputs such as MNIST, with ReLU and max pooling.

conv1 (6 maps, 5x5, padding 2) - pool1 - conv2 (16 maps, 5x5) - pool2 - fc1 120 - fc2 84 - fc3 logits. The
original subsampled by trainable averaging; the pools are attributes (``pool1``, ``pool2``) so that any pooling
can be swapped in (``subnets.pooling.swap_pooling``). Small enough to train many times on two CPU cores.
"""

from __future__ import annotations

import torch
from torch import nn

from subnets.models.init import glorot_normal_
from subnets.models.registry import layer_kinds, register_model, require_ndim


class LeNet5(nn.Module):
    """LeNet-5 with 2x2 pools after each convolution."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.conv1 = nn.Conv2d(channels, 6, 5, padding=2)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.pool2 = nn.MaxPool2d(2)
        self.act = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * ((height // 2 - 4) // 2) * ((width // 2 - 4) // 2), 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.act(self.conv1(x)))
        x = self.pool2(self.act(self.conv2(x)))
        x = self.act(self.fc1(self.flatten(x)))
        return self.fc3(self.act(self.fc2(x)))

    def prunable_layers(self) -> dict[str, str]:
        """Conv weights ("conv"), ``fc1``/``fc2`` weights ("fc") and ``fc3`` weight ("output")."""
        return layer_kinds(self, self.fc3)


@register_model("lenet5")
def lenet5(input_shape: tuple[int, ...], num_classes: int) -> LeNet5:
    """LeNet-5 (6 and 16 conv maps, fc 120 and 84), Glorot normal init."""
    require_ndim("lenet5", input_shape, 3, "C, H, W")
    if min(input_shape[1:]) < 14:
        raise ValueError(f"model 'lenet5' needs H, W >= 14 (two convs and two 2x2 pools), got {input_shape}")
    return glorot_normal_(LeNet5(input_shape, num_classes))
