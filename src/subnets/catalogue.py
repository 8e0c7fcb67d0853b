"""The names subnets knows, without importing what builds them: the built-in datasets (with their kind), models
and pooling ops, and every dataset or model registered in this process.

Recipes are validated against these names (:mod:`subnets.recipes`), so that a wrong recipe is one line at once,
before torch is imported. :func:`subnets.register_dataset` and :func:`subnets.register_model` add their names
here; the built-in lists below are what :mod:`subnets.data`, :mod:`subnets.models` and
:mod:`subnets.pooling.factory` build (``tests/test_catalogue.py`` checks that they agree).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, NamedTuple

TENSOR_KINDS = ("images", "sequences", "arrays")
"""Dataset kinds that are tensors (a ``subnets.data.Dataset``); the others are ``sentences`` and ``tables``."""


class DatasetName(NamedTuple):
    """A dataset's ``kind``, whether it has options without a default (``required``), and the function that loads
    it when it is not tensors (``loader``, ``"module.function"``)."""

    kind: str
    required: bool
    loader: str = ""


_DATASETS: dict[str, DatasetName] = {
    "file": DatasetName("arrays", True),
    "mnist": DatasetName("images", False),
    "sentences": DatasetName("sentences", True, "subnets.data.sentences.load_sentences"),
    "paraphrase_pairs": DatasetName("sentences", False, "subnets.data.sentences.load_paraphrase_pairs"),
    "stsb": DatasetName("sentences", True, "subnets.data.sentences.load_stsb"),
    "mnist1d": DatasetName("sequences", False),
    "modular_addition": DatasetName("sequences", False),
    "breast_cancer": DatasetName("tables", False),
    "wine": DatasetName("tables", False),
    "digits": DatasetName("tables", False),
    "diabetes": DatasetName("tables", False),
    "classification_20k": DatasetName("tables", False),
    "regression_20k": DatasetName("tables", False),
    "friedman1_20k": DatasetName("tables", False),
}
BUILTIN_DATASETS = tuple(_DATASETS)

_MODELS: list[str] = ["lenet5", "lenet300_100", "mlp", "conv2", "conv4", "conv6", "cnn1d", "resnet20"]
BUILTIN_MODELS = tuple(_MODELS)

SPATIAL_POOLS = ("avg", "max", "lp", "gem", "group-gem", "softpool", "mixed", "gated", "tree", "stochastic", "conv",
                 "spp")
"""Pooling ops over 1 or 2 spatial dimensions (``subnets.pooling.create_pool(name, dim=1 or 2)``)."""
TOKEN_POOLS = ("mean", "max", "first", "last", "attention", "multihead")
"""Pooling ops over the tokens of a sequence (``dim="tokens"``)."""
LAYER_POOLS = ("mean", "max", "weighted", "attention")
"""Pooling ops over the layers of a network (``dim="layers"``)."""


def add_dataset(name: str, kind: str, required: bool, loader: str = "") -> None:
    """Record a dataset registered in this process."""
    _DATASETS[name] = DatasetName(kind, required, loader)


def add_model(name: str) -> None:
    """Record a model registered in this process."""
    if name not in _MODELS:
        _MODELS.append(name)


def dataset_names(*kinds: str) -> list[str]:
    """Known datasets of ``kinds`` (all when none is given), sorted."""
    return sorted(n for n, d in _DATASETS.items() if not kinds or d.kind in kinds)


def dataset_kind(name: str) -> str | None:
    """The kind of dataset ``name``, or None when it is not known."""
    entry = _DATASETS.get(name)
    return entry.kind if entry else None


def table_names() -> list[str]:
    """The tables the boosting experiments load: the table datasets in registration order, then the tensor datasets
    that need no option (flattened into tables)."""
    tables = [n for n, d in _DATASETS.items() if d.kind == "tables"]
    return [*tables, *sorted(n for n, d in _DATASETS.items() if d.kind in TENSOR_KINDS and not d.required)]


def model_names() -> list[str]:
    """Known models, sorted."""
    return sorted(_MODELS)


def is_import_path(name: str) -> bool:
    """Whether ``name`` is an import path ``"package.module:attribute"`` rather than a registered name."""
    return ":" in name


def import_object(path: str) -> Any:
    """The object at ``"package.module:attribute"`` (the attribute may be dotted), imported.

    Raises a one-line ValueError when the path is malformed, the module cannot be imported or has no such
    attribute: ``cannot import 'foo.bar:baz': No module named 'foo'``.
    """
    module, _, attribute = path.partition(":")
    if not module or not attribute or ":" in attribute:
        raise ValueError(f"an import path is 'package.module:attribute', got {path!r}")
    try:
        found: Any = importlib.import_module(module)
        for part in attribute.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError, SyntaxError) as error:
        raise ValueError(f"cannot import {path!r}: {error}") from None
    return found


def import_callable(path: str, what: str) -> Callable[..., Any]:
    """The callable at import path ``path``; a one-line ValueError naming ``what`` (e.g. "model") if it is not."""
    factory = import_object(path)
    if not callable(factory):
        raise ValueError(f"{what} {path!r} is not callable: {type(factory).__name__}")
    return factory


def check_dataset_name(name: str) -> str:
    """``name`` if it is a known tensor dataset or an importable factory; else a one-line ValueError."""
    if is_import_path(name):
        import_callable(name, "dataset")
        return name
    entry = _DATASETS.get(name)
    if entry is None:
        raise ValueError(f"unknown dataset '{name}'; known: {', '.join(dataset_names(*TENSOR_KINDS))}; or an "
                         "import path 'package.module:factory'")
    if entry.kind not in TENSOR_KINDS:
        loader = "subnets.data.load_table" if entry.kind == "tables" else entry.loader
        raise ValueError(f"dataset '{name}' holds {entry.kind}, not tensors: load it with {loader}")
    return name


def check_model_name(name: str) -> str:
    """``name`` if it is a known model or an importable factory; else a one-line ValueError."""
    if is_import_path(name):
        import_callable(name, "model")
    elif name not in _MODELS:
        raise ValueError(f"unknown model '{name}'; known: {', '.join(model_names())}; or an import path "
                         "'package.module:factory'")
    return name
