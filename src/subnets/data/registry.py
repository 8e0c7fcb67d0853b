"""The dataset registry: every dataset subnets knows (images, sequences, sentences, tables, your own arrays), one
listing (:func:`dataset_info`), one way to load a tensor dataset by name or import path (:func:`load_dataset`).

A dataset is registered with :func:`register_dataset` on a function that builds it; the function's parameters are
the dataset's options (those without a default are required). Its ``kind`` says what it builds: a
:class:`Dataset` of tensors (``images``, ``sequences``, ``arrays``), a table (``tables``, see
:mod:`subnets.data.tables`) or sentences (``sentences``, see :mod:`subnets.data.sentences`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from subnets import catalogue
from subnets.catalogue import TENSOR_KINDS, check_dataset_name, import_callable, is_import_path

KINDS = (*TENSOR_KINDS, "sentences", "tables")
DEFAULT_VAL_FRACTION = 0.1
SPLITS = ("train", "val", "test")


class DatasetUnavailable(RuntimeError):
    """The data's source is not installed or does not verify; the message says how to fix it."""


def _tensor(value: Any, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what}: cannot convert to a tensor: {error}") from None


def _check_split(x: torch.Tensor, y: torch.Tensor, split: str, num_classes: int | None) -> None:
    """Raise ValueError naming the first problem of one split's features ``x`` and labels ``y``."""
    if x.dim() < 2:
        raise ValueError(f"x_{split} must have shape (N, ...), the rows first, got {tuple(x.shape)}")
    if len(x) == 0:
        raise ValueError(f"x_{split} is empty")
    if y.dtype == torch.bool or y.dtype.is_floating_point or y.dtype.is_complex:
        raise ValueError(f"y_{split} must hold integer labels, got {y.dtype}")
    if y.dim() != 1:
        raise ValueError(f"y_{split} must be 1-D (one label per row), got shape {tuple(y.shape)}")
    if len(x) != len(y):
        raise ValueError(f"x_{split} has {len(x)} rows but y_{split} has {len(y)}")
    if int(y.min()) < 0:
        raise ValueError(f"y_{split} has label {int(y.min())}; labels must be in [0, num_classes)")
    if num_classes is not None and int(y.max()) >= num_classes:
        raise ValueError(f"y_{split} has label {int(y.max())}, but num_classes is {num_classes}")
    bad = ~torch.isfinite(x.reshape(len(x), -1)).all(1)
    if bad.any():
        raise ValueError(f"x_{split} has NaN or infinite values (first in row {int(bad.nonzero()[0])})")


def tensors_sha256(*tensors: torch.Tensor) -> str:
    """The SHA-256 of the tensors' shapes and bytes, in order (hex)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(repr(tuple(tensor.shape)).encode())
        digest.update(np.ascontiguousarray(tensor.cpu().numpy()).data)
    return digest.hexdigest()


@dataclass
class Dataset:
    """Train/validation/test splits as tensors plus where they came from."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    source: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_arrays(cls, x_train: Any, y_train: Any, x_test: Any, y_test: Any, x_val: Any = None, y_val: Any = None,
                    *, val_fraction: float | None = None, seed: int = 0, name: str = "arrays",
                    num_classes: int | None = None) -> Dataset:
        """A dataset from your own arrays (numpy arrays or torch tensors), checked and recorded.

        Features become float32 ``(N, ...)`` tensors, labels int64 ``(N,)``, all on the CPU (``.to(device)`` moves
        them). Without ``x_val``/``y_val``, a ``val_fraction`` of the training rows (0.1 when None), drawn with
        ``seed``, is held out for validation; the other training rows keep their order. ``num_classes`` defaults to
        the largest label + 1. Raises a one-line ValueError naming the bad array: rows of x and y that do not match,
        example shapes that differ between splits, labels that are not integers or not in ``[0, num_classes)``,
        NaN or infinite features, an empty split. ``source["sha256"]`` is :func:`tensors_sha256` of the six
        tensors (train, val, test; x then y), so the same arrays give the same record.
        """
        given = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
        if (x_val is None) != (y_val is None):
            raise ValueError("x_val and y_val must be given together")
        if x_val is not None:
            if val_fraction is not None:
                raise ValueError("give either x_val and y_val or val_fraction, not both")
            given |= {"x_val": x_val, "y_val": y_val}
        if num_classes is not None and not (isinstance(num_classes, int) and num_classes > 0):
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        t = {key: _tensor(value, key) for key, value in given.items()}
        splits = [s for s in SPLITS if f"x_{s}" in t]
        for s in splits:
            _check_split(t[f"x_{s}"], t[f"y_{s}"], s, num_classes)
            if t[f"x_{s}"].shape[1:] != t["x_train"].shape[1:]:
                raise ValueError(f"x_{s} has examples of shape {tuple(t[f'x_{s}'].shape[1:])}, x_train "
                                 f"{tuple(t['x_train'].shape[1:])}")
        x = {s: t[f"x_{s}"].to(torch.float32).contiguous() for s in splits}
        y = {s: t[f"y_{s}"].to(torch.int64).contiguous() for s in splits}
        if "val" not in x:
            fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
            n = len(y["train"])
            n_val = max(1, round(n * fraction))
            if not 0 < fraction < 1 or n_val >= n:
                raise ValueError(f"val_fraction {fraction} of {n} training rows leaves no validation or no training "
                                 "rows")
            order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
            val, train = order[:n_val].sort().values, order[n_val:].sort().values
            x["val"], y["val"] = x["train"][val], y["train"][val]
            x["train"], y["train"] = x["train"][train], y["train"][train]
        classes = num_classes or 1 + max(int(y[s].max()) for s in SPLITS)
        digest = tensors_sha256(*(t for s in SPLITS for t in (x[s], y[s])))
        return cls(name, x["train"], y["train"], x["val"], y["val"], x["test"], y["test"], num_classes=classes,
                   source={"name": name, "source": "arrays", "sha256": digest})

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, without the batch dimension."""
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device | str) -> Dataset:
        """A copy whose tensors live on ``device`` (moved once, before training)."""
        moved = {k: getattr(self, k).to(device) for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")}
        return Dataset(name=self.name, num_classes=self.num_classes, source=self.source, **moved)

    def sizes(self) -> dict[str, int]:
        """Number of examples per split."""
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}


@dataclass(frozen=True)
class _Entry:
    build: Callable[..., Any]
    kind: str
    description: str
    source: str
    options: dict[str, Any]
    required: tuple[str, ...]
    requires: tuple[str, str] | None
    sha256: Callable[[], str] | None


_REGISTRY: dict[str, _Entry] = {}


def register_dataset(name: str, description: str = "", *, kind: str = "arrays", source: str = "",
                     requires: tuple[str, str] | None = None,
                     sha256: Callable[[], str] | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated ``build(**options)`` as dataset ``name`` (also ``subnets.register_dataset``).

    The function's parameters are the dataset's options: those with a default are optional, the others required.
    ``kind``: what ``build`` returns: a :class:`Dataset` for ``"images"``, ``"sequences"`` and ``"arrays"`` (the
    default, for your own data), a :class:`~subnets.data.tables.Table` for ``"tables"``, sentences for
    ``"sentences"``. ``source``: one line saying where the data comes from; ``requires``: ``(module, install
    command)`` of a package the data needs, so that :func:`dataset_info` can say how to install it;
    ``sha256``: the SHA-256 of the data with its default options, for the listing (default: built with its
    defaults, its ``source["sha256"]``). Example::

        @register_dataset("blobs", "two Gaussian blobs")
        def blobs(n: int = 1000, seed: int = 0) -> Dataset:
            ...
            return Dataset.from_arrays(x_train, y_train, x_test, y_test, seed=seed, name="blobs")
    """
    if kind not in KINDS:
        raise ValueError(f"dataset '{name}': kind must be one of {', '.join(KINDS)}, got {kind!r}")

    def wrap(build: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"dataset '{name}' is already registered")
        params = [p for p in inspect.signature(build).parameters.values()
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        _REGISTRY[name] = _Entry(build, kind, description, source,
                                 {p.name: p.default for p in params if p.default is not p.empty},
                                 tuple(p.name for p in params if p.default is p.empty), requires, sha256)
        catalogue.add_dataset(name, kind, any(p.default is p.empty for p in params),
                              f"{build.__module__}.{build.__qualname__}" if kind == "sentences" else "")
        return build

    return wrap


def dataset_names(*kinds: str) -> list[str]:
    """Names of the registered datasets of ``kinds`` (all when none is given), sorted."""
    return sorted(n for n, e in _REGISTRY.items() if not kinds or e.kind in kinds)


def registered_in_order(kind: str) -> list[str]:
    """Names of the registered datasets of ``kind`` in the order they were registered."""
    return [n for n, e in _REGISTRY.items() if e.kind == kind]


def _missing(entry: _Entry) -> str | None:
    """The install command of the entry's missing package, or None when nothing is missing."""
    if entry.requires is None or importlib.util.find_spec(entry.requires[0]) is not None:
        return None
    return entry.requires[1]


def _digest(name: str, entry: _Entry) -> str | None:
    if entry.sha256 is not None:
        return entry.sha256()
    if entry.required:
        return None
    return build_registered(name, {}).source.get("sha256")


def dataset_info(checksums: bool = True) -> list[dict[str, Any]]:
    """Every registered dataset, sorted by name (for ``subnets data list``).

    Each row: ``name``, ``kind``, ``description``, ``source``, ``options`` (defaults), ``required`` (options
    without a default), ``available``, ``install`` (the command that installs a missing package, else None),
    ``sha256`` (of the data with its default options; with ``checksums`` and when installed, else None) and
    ``problem`` (why it is unavailable, else None). Nothing raises for a missing or altered dataset.
    """
    rows = []
    for name in dataset_names():
        entry = _REGISTRY[name]
        install = _missing(entry)
        row = {"name": name, "kind": entry.kind, "description": entry.description, "source": entry.source,
               "options": dict(entry.options), "required": list(entry.required), "available": install is None,
               "install": install, "sha256": None,
               "problem": f"needs a package: run `{install}`" if install else None}
        if checksums and install is None:
            try:
                row["sha256"] = _digest(name, entry)
            except DatasetUnavailable as error:
                row["available"], row["problem"] = False, str(error)
        rows.append(row)
    return rows


def check_call(what: str, function: Callable[..., Any], args: tuple[Any, ...], options: dict[str, Any]) -> None:
    """Raise ValueError naming an option ``function(*args, **options)`` would not accept (``what`` names it)."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # a builtin without a signature: its call will tell
        return
    try:
        signature.bind(*args, **options)
    except TypeError as error:
        params = list(signature.parameters.values())
        named = [p.name for p in params[len(args):] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        unknown = sorted(set(options) - set(named))
        if unknown and not any(p.kind is p.VAR_KEYWORD for p in params):
            raise ValueError(f"{what} has no option '{unknown[0]}'; allowed: {', '.join(named) or 'none'}") from None
        raise ValueError(f"{what}: {error}") from None


def _dataset_factory(path: str) -> Callable[..., Any]:
    return import_callable(path, "dataset")


def validate_options(name: str, options: dict[str, Any]) -> None:
    """Raise ValueError naming an unknown dataset, an option it does not take or a required option left out.

    ``name`` is a registered name or an import path ``"package.module:factory"`` (its parameters are its options).
    """
    check_dataset_name(name)
    if is_import_path(name):
        check_call(f"dataset '{name}'", _dataset_factory(name), (), options)
        return
    entry = _REGISTRY[name]
    unknown = sorted(set(options) - set(entry.options) - set(entry.required))
    if unknown:
        allowed = ", ".join(sorted([*entry.options, *entry.required])) or "none"
        raise ValueError(f"dataset '{name}' has no option '{unknown[0]}'; allowed: {allowed}")
    missing = [o for o in entry.required if o not in options]
    if missing:
        raise ValueError(f"dataset '{name}' needs the option '{missing[0]}'")


def build_registered(name: str, options: dict[str, Any]) -> Any:
    """Build the registered dataset ``name`` of any kind with ``options`` over its defaults, its package checked."""
    entry = _REGISTRY[name]
    install = _missing(entry)
    if install:
        raise DatasetUnavailable(f"dataset '{name}' needs the package {entry.requires[0]!r}: run `{install}`")
    return entry.build(**{**entry.options, **options})


def load_dataset(name: str, **options: Any) -> Dataset:
    """The :class:`Dataset` ``name`` built with ``options`` over its defaults.

    ``name`` is a registered dataset of a tensor kind (``subnets data list``), or an import path
    ``"package.module:factory"`` to your own ``factory(**options) -> Dataset``. Raises ValueError for an unknown
    name, a bad option or a factory that returns something else; DatasetUnavailable when the data's package is
    missing or its files do not verify.
    """
    validate_options(name, options)
    data = _dataset_factory(name)(**options) if is_import_path(name) else build_registered(name, options)
    if not isinstance(data, Dataset):
        raise ValueError(f"dataset '{name}' returned {type(data).__name__}, not a subnets.data.Dataset")
    return data


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks (hex)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
