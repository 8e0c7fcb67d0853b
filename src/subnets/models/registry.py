"""The model registry: builders registered by name, or your own factories by import path, built from
``(input_shape, num_classes, **options)``; and which weights of a model may be pruned."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from subnets import catalogue
from subnets.catalogue import check_model_name, import_callable, is_import_path
from subnets.data.registry import check_call

Builder = Callable[..., nn.Module]

_REGISTRY: dict[str, Builder] = {}


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Register ``build(input_shape, num_classes, *, **options) -> nn.Module`` under ``name`` (also
    ``subnets.register_model``), so recipes and :func:`build_model` know it by name.

    A builder's options are its keyword-only parameters; :func:`build_model` rejects any other. Define
    ``prunable_layers()`` on the model to choose its prunable weights (default: see :func:`prunable_layers`).
    Example::

        @register_model("tiny")
        def tiny(input_shape, num_classes, *, hidden=32):
            return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_classes))
    """

    def wrap(build: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is already registered")
        _REGISTRY[name] = build
        catalogue.add_model(name)
        return build

    return wrap


def model_names() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_REGISTRY)


def _option_names(build: Builder) -> list[str]:
    params = inspect.signature(build).parameters.values()
    return sorted(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def _factory(path: str) -> Builder:
    return import_callable(path, "model")


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, **options: Any) -> nn.Module:
    """A freshly initialised model ``name`` for inputs of shape ``(N, *input_shape)`` and ``num_classes``.

    ``name`` is a registered model, or an import path ``"package.module:factory"`` to your own
    ``factory(input_shape, num_classes, **options)`` that returns an ``nn.Module`` (its parameters after the first
    two are its options). Initialisation draws from the global torch RNG: seed it first for a reproducible model.
    Raises ValueError naming an unknown model, an unknown or bad option, an unusable shape, or a factory that
    does not return an ``nn.Module``.
    """
    check_model_name(name)
    shape = tuple(input_shape)
    if not shape or not all(map(is_positive_int, shape)):
        raise ValueError(f"model '{name}': input_shape must be a tuple of positive ints, got {shape}")
    if not is_positive_int(num_classes):
        raise ValueError(f"model '{name}': num_classes must be a positive int, got {num_classes!r}")
    if is_import_path(name):
        factory = _factory(name)
        check_call(f"model '{name}'", factory, (shape, num_classes), options)
        model = factory(shape, num_classes, **options)
        if not isinstance(model, nn.Module):
            raise ValueError(f"model '{name}' returned {type(model).__name__}, not a torch.nn.Module")
        return model
    build = _REGISTRY[name]
    allowed = _option_names(build)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        listed = ", ".join(allowed) or "none"
        raise ValueError(f"model '{name}' has no option '{unknown[0]}'; allowed: {listed}")
    return build(shape, num_classes, **options)


def prunable_layers(model: nn.Module) -> dict[str, str]:
    """Prunable parameter names of ``model`` -> kind ("conv", "fc" or "output"), in forward order.

    A model with a ``prunable_layers()`` method says so itself; for any other (your own ``nn.Module``) these are
    the weights of its ``Linear`` and ``Conv1d``/``Conv2d`` layers in registration order, the last ``Linear`` the
    output (:func:`layer_kinds`). Raises ValueError when there is none.
    """
    method = getattr(model, "prunable_layers", None)
    if callable(method):
        return method()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    kinds = layer_kinds(model, linears[-1] if linears else None)
    if not kinds:
        raise ValueError(f"model {type(model).__name__} has no Linear or Conv1d/Conv2d weights to prune")
    return kinds


def layer_kinds(model: nn.Module, output: nn.Linear | None) -> dict[str, str]:
    """Kinds of the conv and linear weights of ``model`` in registration order; ``output`` is the last layer.

    Models register their layers in forward order, so this is the forward order. Biases and BatchNorm
    parameters are left out: they are never pruned.
    """
    kinds: dict[str, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv1d | nn.Conv2d):
            kinds[_weight(name)] = "conv"
        elif isinstance(module, nn.Linear):
            kinds[_weight(name)] = "output" if module is output else "fc"
    return kinds


def _weight(module_name: str) -> str:
    """The parameter name of a module's weight (``"weight"`` for the model itself)."""
    return f"{module_name}.weight" if module_name else "weight"


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
