"""subnets: find, train, route and pool the sub-networks that live inside neural networks.

A sub-network is a selection of a network's units (a mask, a route or a prefix) and a result is a
pooling of the selected units' outputs. See the README and ``docs/`` for the families of methods.

Your own data and models join by name: ``subnets.register_dataset`` (see :mod:`subnets.data`) and
``subnets.register_model`` (see :mod:`subnets.models`) are the registries' decorators.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["register_dataset", "register_model"]

# Imported on first use, so that ``import subnets`` stays cheap (no torch).
_LAZY = {"register_dataset": "subnets.data", "register_model": "subnets.models"}


def __getattr__(name: str) -> Any:
    """``subnets.register_dataset`` and ``subnets.register_model``, imported on first use."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'subnets' has no attribute {name!r}")
