"""ResNet-20 for small images (He et al. 2016, section 4.2), projection shortcuts, width multiplier."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from subnets.models.init import kaiming_normal_
from subnets.models.registry import layer_kinds, register_model, require_ndim, require_positive_int


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers and a shortcut (identity, or 1x1 conv + BN where the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem conv, three stages of ``blocks_per_stage`` basic blocks (stride 2 into stages 2, 3), pool, fc."""

    def __init__(self, in_channels: int, num_classes: int, blocks_per_stage: int = 3, width: int = 1):
        super().__init__()
        base = 16 * width
        self.conv1 = nn.Conv2d(in_channels, base, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        channels = base
        for stage, out in enumerate((base, 2 * base, 4 * base), start=1):
            strides = [1 if stage == 1 else 2] + [1] * (blocks_per_stage - 1)
            blocks = []
            for stride in strides:
                blocks.append(BasicBlock(channels, out, stride))
                channels = out
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))

    def prunable_layers(self) -> dict[str, str]:
        """Every conv weight, shortcuts included ("conv"), and the ``fc`` weight ("output")."""
        return layer_kinds(self, self.fc)


@register_model("resnet20")
def resnet20(input_shape: tuple[int, ...], num_classes: int, *, width: int = 1) -> ResNet:
    """ResNet-20 with ``16 * width`` base channels; Kaiming normal convs, identity BatchNorm."""
    require_ndim("resnet20", input_shape, 3, "C, H, W")
    require_positive_int("resnet20", "width", width)
    return kaiming_normal_(ResNet(input_shape[0], num_classes, width=width))
