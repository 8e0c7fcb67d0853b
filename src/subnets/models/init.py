"""Weight initialisation, always drawn from the global torch RNG (the caller seeds; nothing here does)."""

from __future__ import annotations

from torch import nn

_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def glorot_normal_(module: nn.Module) -> nn.Module:
    """Glorot (Xavier) normal weights and zero biases for every Linear/Conv in ``module``; returns it.

    This is the initialisation of Frankle & Carbin (2019) for LeNet and the Conv-2/4/6 networks.
    """
    for m in module.modules():
        if isinstance(m, _WEIGHTED):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def kaiming_normal_(module: nn.Module) -> nn.Module:
    """He et al. (2015) initialisation for residual networks; returns ``module``.

    Convolutions get Kaiming normal weights (fan_out, ReLU gain) as in He et al. (2016), BatchNorm starts as
    the identity (weight 1, bias 0), and Linear layers get Glorot normal weights. All biases start at zero.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
        elif isinstance(m, _NORMS):
            nn.init.ones_(m.weight)
        if isinstance(m, _WEIGHTED + _NORMS) and m.bias is not None:
            nn.init.zeros_(m.bias)
    return module
