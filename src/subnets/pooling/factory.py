"""Pools by name: ``create_pool("gem", dim=2)``, and ``swap_pooling(model, "softpool")`` to change a model's
pooling layers in one line."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from subnets.pooling import layers, spatial, tokens

Domain = int | str

_SPATIAL: dict[str, type[spatial.SpatialPool]] = {
    "avg": spatial.AvgPool,
    "max": spatial.MaxPool,
    "lp": spatial.LpPool,
    "gem": spatial.GeM,
    "group-gem": spatial.GroupGeM,
    "softpool": spatial.SoftPool,
    "mixed": spatial.MixedPool,
    "gated": spatial.GatedPool,
    "tree": spatial.TreePool,
    "stochastic": spatial.StochasticPool,
    "conv": spatial.ConvPool,
    "spp": spatial.SpatialPyramidPool,
}
_TOKENS: dict[str, Callable[..., nn.Module]] = {
    "mean": tokens.MeanTokens,
    "max": tokens.MaxTokens,
    "first": tokens.FirstToken,
    "last": tokens.LastToken,
    "attention": tokens.AttentionPool,
    "multihead": tokens.MultiHeadAttentionPool,
}
_LAYERS: dict[str, Callable[..., nn.Module]] = {
    "mean": layers.MeanLayers,
    "max": layers.MaxLayers,
    "weighted": layers.WeightedLayers,
    "attention": layers.AttentionLayers,
}
# Spatial ops that need the number of channels (``channels=``).
NEEDS_CHANNELS = frozenset({"group-gem", "conv"})


def _table(dim: Domain) -> dict[str, Callable[..., nn.Module]]:
    if dim in (1, 2) and not isinstance(dim, bool):
        return dict(_SPATIAL)
    if dim == "tokens":
        return _TOKENS
    if dim == "layers":
        return _LAYERS
    raise ValueError(f"dim must be 1, 2, 'tokens' or 'layers', got {dim!r}")


def pool_names(dim: Domain = 2) -> list[str]:
    """The names ``create_pool`` knows for ``dim`` (1 or 2: spatial; "tokens"; "layers")."""
    return list(_table(dim))


def create_pool(name: str, dim: Domain = 2, **options: Any) -> nn.Module:
    """A new pooling module ``name`` for ``dim`` (1 or 2 spatial dims, "tokens" or "layers").

    ``options`` go to the op's constructor (``kernel_size``, ``stride``, ``global_pool``, ``p``, ``channels``,
    ...). Raises ValueError naming an unknown name with the known ones, or a bad option.
    """
    table = _table(dim)
    if name not in table:
        raise ValueError(f"unknown pool {name!r} for dim={dim!r}; known: {', '.join(table)}")
    if dim in (1, 2):
        options["dim"] = dim
    try:
        return table[name](**options)
    except TypeError as error:  # an option the op does not take: say which op and which options it has
        raise ValueError(f"pool {name!r}: {error}") from None


_REPLACEABLE = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, spatial.SpatialPool)


def _window_of(module: nn.Module) -> tuple[int, Any, Any]:
    """(dim, kernel_size, stride) of a pooling module; ValueError if it cannot be reproduced by a swap."""
    if isinstance(module, spatial.SpatialPool):
        if module.global_pool:
            raise ValueError(f"swap_pooling: cannot swap the global pool {module}")
        return module.dim, module.kernel_size, module.stride
    dim = 1 if isinstance(module, nn.MaxPool1d | nn.AvgPool1d) else 2
    padding = module.padding
    if padding not in (0, (0,) * dim) or getattr(module, "ceil_mode", False) or getattr(module, "dilation", 1) not in (
            1, (1,) * dim):
        raise ValueError(f"swap_pooling: {module} uses padding, ceil_mode or dilation, which the swap would drop")
    return dim, module.kernel_size, module.stride


def swap_pooling(model: nn.Module, name: str, **options: Any) -> list[str]:
    """Replace every spatial pooling layer of ``model`` (torch's max/avg pools and subnets' spatial pools) by
    ``create_pool(name, ...)`` with the same window; returns the replaced modules' names, in order.

    Ops that need the channel count get the ``out_channels`` of the last convolution before the pool.
    """
    if name == "spp":
        raise ValueError("swap_pooling: 'spp' changes the output's shape and cannot replace a pool in place")
    if name not in _SPATIAL:
        raise ValueError(f"unknown pool {name!r}; known: {', '.join(_SPATIAL)}")
    channels, swapped = None, []
    for path, module in list(model.named_modules()):
        if isinstance(module, nn.Conv1d | nn.Conv2d):
            channels = module.out_channels
        if not isinstance(module, _REPLACEABLE) or not path:
            continue
        dim, kernel_size, stride = _window_of(module)
        extra = dict(options)
        if name in NEEDS_CHANNELS:
            if channels is None:
                raise ValueError(f"swap_pooling: {name!r} needs the channel count, and no convolution comes before "
                                 f"{path!r}")
            extra["channels"] = channels
        new = create_pool(name, dim, kernel_size=kernel_size, stride=stride, **extra)
        parent_path, _, attribute = path.rpartition(".")
        setattr(model.get_submodule(parent_path) if parent_path else model, attribute, new)
        swapped.append(path)
    return swapped
