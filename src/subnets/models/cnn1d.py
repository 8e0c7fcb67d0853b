"""A small 1D convolutional network for MNIST-1D (Greydanus 2020), inputs of shape ``(C, L)``."""

from __future__ import annotations

import torch
from torch import nn

from subnets.models.init import glorot_normal_
from subnets.models.registry import layer_kinds, register_model, require_ndim, require_positive_int


class CNN1d(nn.Module):
    """conv1-pool1-conv2-pool2-conv3 (kernel 5, ReLU), then fc1 (64, ReLU) and fc2 (logits).

    The pooling layers are attributes (``pool1``, ``pool2``) so that other pooling can be swapped in.
    """

    def __init__(self, input_shape: tuple[int, int], num_classes: int, channels: int = 32):
        super().__init__()
        in_channels, length = input_shape
        self.conv1 = nn.Conv1d(in_channels, channels, 5, padding=2)
        self.pool1 = nn.MaxPool1d(2)
        self.conv2 = nn.Conv1d(channels, channels, 5, padding=2)
        self.pool2 = nn.MaxPool1d(2)
        self.conv3 = nn.Conv1d(channels, channels, 5, padding=2)
        self.act = nn.ReLU()
        self.flatten = nn.Flatten()
        # Kernel 5 with padding 2 keeps the length; each pool halves it, rounding down.
        self.fc1 = nn.Linear(channels * (length // 2 // 2), 64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.act(self.conv1(x)))
        x = self.pool2(self.act(self.conv2(x)))
        x = self.flatten(self.act(self.conv3(x)))
        return self.fc2(self.act(self.fc1(x)))

    def prunable_layers(self) -> dict[str, str]:
        """Conv weights ("conv"), the ``fc1`` weight ("fc") and the ``fc2`` weight ("output")."""
        return layer_kinds(self, self.fc2)


@register_model("cnn1d")
def cnn1d(input_shape: tuple[int, ...], num_classes: int, *, channels: int = 32) -> CNN1d:
    """The MNIST-1D CNN with ``channels`` channels per conv layer, Glorot normal init."""
    require_ndim("cnn1d", input_shape, 2, "C, L")
    require_positive_int("cnn1d", "channels", channels)
    if input_shape[1] < 4:
        raise ValueError(f"model 'cnn1d' pools twice and needs L >= 4, got {input_shape}")
    return glorot_normal_(CNN1d(input_shape, num_classes, channels))
