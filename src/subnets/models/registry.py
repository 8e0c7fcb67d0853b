"""The model registry: builders registered by name, built from ``(input_shape, num_classes, **options)``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

Builder = Callable[..., nn.Module]

_REGISTRY: dict[str, Builder] = {}


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Register ``build(input_shape, num_classes, *, **options) -> nn.Module`` under ``name``.

    A builder's options are its keyword-only parameters; :func:`build_model` rejects any other.
    """

    def wrap(build: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is already registered")
        _REGISTRY[name] = build
        return build

    return wrap


def model_names() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_REGISTRY)


def _option_names(build: Builder) -> list[str]:
    params = inspect.signature(build).parameters.values()
    return sorted(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, **options: Any) -> nn.Module:
    """A freshly initialised model ``name`` for inputs of shape ``(N, *input_shape)`` and ``num_classes``.

    Initialisation draws from the global torch RNG: seed it first for a reproducible model.
    Raises ValueError naming an unknown model, an unknown or bad option, or an unusable shape.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model '{name}'; known: {', '.join(model_names())}")
    build = _REGISTRY[name]
    allowed = _option_names(build)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        listed = ", ".join(allowed) or "none"
        raise ValueError(f"model '{name}' has no option '{unknown[0]}'; allowed: {listed}")
    shape = tuple(input_shape)
    if not shape or not all(map(is_positive_int, shape)):
        raise ValueError(f"model '{name}': input_shape must be a tuple of positive ints, got {shape}")
    if not is_positive_int(num_classes):
        raise ValueError(f"model '{name}': num_classes must be a positive int, got {num_classes!r}")
    return build(shape, num_classes, **options)


def prunable_layers(model: nn.Module) -> dict[str, str]:
    """Prunable parameter names of ``model`` -> kind ("conv", "fc" or "output"), in forward order."""
    method = getattr(model, "prunable_layers", None)
    if not callable(method):
        raise ValueError(f"model {type(model).__name__} does not define prunable_layers()")
    return method()


def layer_kinds(model: nn.Module, output: nn.Linear) -> dict[str, str]:
    """Kinds of the conv and linear weights of ``model`` in registration order; ``output`` is the last layer.

    Models register their layers in forward order, so this is the forward order. Biases and BatchNorm
    parameters are left out: they are never pruned.
    """
    kinds: dict[str, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv1d | nn.Conv2d):
            kinds[f"{name}.weight"] = "conv"
        elif isinstance(module, nn.Linear):
            kinds[f"{name}.weight"] = "output" if module is output else "fc"
    return kinds


def require_ndim(name: str, input_shape: tuple[int, ...], ndim: int, layout: str) -> None:
    """Raise ValueError unless ``input_shape`` has ``ndim`` dims, laid out as ``layout`` (e.g. "C, H, W")."""
    if len(input_shape) != ndim:
        raise ValueError(f"model '{name}' needs input_shape ({layout}), got {tuple(input_shape)}")


def require_positive_int(name: str, option: str, value: Any) -> None:
    """Raise ValueError naming model ``name``'s ``option`` unless ``value`` is a positive int."""
    if not is_positive_int(value):
        raise ValueError(f"model '{name}': option '{option}' must be a positive int, got {value!r}")


def is_positive_int(value: Any) -> bool:
    """Whether ``value`` is an int (not a bool) above zero."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
