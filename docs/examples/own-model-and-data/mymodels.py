"""A model the library has never seen: a small CNN for 8x8 images."""
from torch import nn


class TinyCNN(nn.Module):
    def __init__(self, channels: int, num_classes: int, width: int) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(width * 16, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


def tiny_cnn(input_shape, num_classes, *, width=16):
    return TinyCNN(input_shape[0], num_classes, width)
