"""Your own data and models: ``Dataset.from_arrays``, the ``file`` dataset (.npz and CSV), import paths
``package.module:factory`` for datasets and models (Python and recipe specs), the public registration decorators
and prunable layers found in a plain ``nn.Module``. Every bad input is a one-line ValueError naming it."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

import subnets
from subnets.data import Dataset, dataset_info, load_dataset
from subnets.data import registry as data_registry
from subnets.masks import Mask
from subnets.models import build_model, prunable_layers
from subnets.models import registry as model_registry
from subnets.recipes.common import DataSpec, ModelSpec
from subnets.train import TrainConfig, train

OWN_MODULE = '''
import torch
from torch import nn

from subnets.data import Dataset


def blobs(n: int = 90, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = (x[:, 0] > 0).long()
    return Dataset.from_arrays(x[:60], y[:60], x[60:], y[60:], seed=seed, name="blobs")


def not_a_dataset():
    return [1, 2]


def tiny(input_shape, num_classes, hidden=8):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def not_a_module(input_shape, num_classes):
    return 3


NOT_CALLABLE = 3
'''


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


@pytest.fixture
def own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The name of a module in ``tmp_path`` (on sys.path) with dataset and model factories."""
    (tmp_path / "own_things.py").write_text(OWN_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "own_things", raising=False)
    yield "own_things"
    sys.modules.pop("own_things", None)


def _arrays(n_train: int = 40, n_test: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x_train": rng.normal(size=(n_train, 4)), "y_train": rng.integers(0, 3, n_train),
            "x_test": rng.normal(size=(n_test, 4)), "y_test": rng.integers(0, 3, n_test)}


# --- Dataset.from_arrays -------------------------------------------------------------------------------------

def test_from_arrays_takes_numpy_or_torch_and_records_a_checksum() -> None:
    arrays = _arrays()
    data = Dataset.from_arrays(**arrays, seed=1)
    same = Dataset.from_arrays(**{k: torch.from_numpy(v) for k, v in arrays.items()}, seed=1)
    assert data.sizes() == {"train": 36, "val": 4, "test": 10} and data.input_shape == (4,)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert data.num_classes == int(max(arrays["y_train"].max(), arrays["y_test"].max())) + 1
    assert data.source["sha256"] == same.source["sha256"] and torch.equal(data.x_val, same.x_val)
    # the held-out rows come from the seed; the kept training rows keep their order
    assert Dataset.from_arrays(**arrays, seed=2).source["sha256"] != data.source["sha256"]
    rows = [int(np.flatnonzero((arrays["x_train"].astype(np.float32) == r.numpy()).all(1))[0])
            for r in data.x_train]
    assert rows == sorted(rows)
    given = Dataset.from_arrays(**arrays, x_val=arrays["x_test"], y_val=arrays["y_test"], num_classes=5)
    assert given.sizes() == {"train": 40, "val": 10, "test": 10} and given.num_classes == 5


@pytest.mark.parametrize("change, message", [
    ({"y_train": np.zeros(39, dtype=np.int64)}, "x_train has 40 rows but y_train has 39"),
    ({"x_test": np.zeros((10, 5))}, r"x_test has examples of shape \(5,\), x_train \(4,\)"),
    ({"y_test": np.full(10, 0.5)}, "y_test must hold integer labels, got torch.float64"),
    ({"y_train": np.full(40, -1)}, r"y_train has label -1; labels must be in \[0, num_classes\)"),
    ({"num_classes": 2}, "has label 2, but num_classes is 2"),
    ({"x_train": np.where(np.arange(160).reshape(40, 4) == 13, np.nan, 1.0)},
     r"x_train has NaN or infinite values \(first in row 3\)"),
    ({"x_test": np.full((10, 4), np.inf)}, "x_test has NaN or infinite values"),
    ({"x_test": np.zeros((0, 4)), "y_test": np.zeros(0, dtype=np.int64)}, "x_test is empty"),
    ({"x_train": np.zeros(40)}, r"x_train must have shape \(N, ...\)"),
    ({"x_val": np.zeros((3, 4))}, "x_val and y_val must be given together"),
    ({"x_val": np.zeros((3, 4)), "y_val": np.zeros(3, dtype=np.int64), "val_fraction": 0.2}, "not both"),
    ({"val_fraction": 1.5}, "val_fraction 1.5 of 40 training rows"),
])
def test_from_arrays_names_the_bad_array(change: dict, message: str) -> None:
    arrays = _arrays()
    arrays["y_train"][:] = np.arange(40) % 3  # labels 0..2 in every split
    arrays["y_test"][:] = np.arange(10) % 3
    with pytest.raises(ValueError, match=message) as error:
        Dataset.from_arrays(**{**arrays, **change})
    _one_line(error)


# --- the file dataset ----------------------------------------------------------------------------------------

def _digits_npz(path: Path, **extra: np.ndarray) -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    arrays = {"x_train": x[:1200].reshape(-1, 1, 8, 8), "y_train": y[:1200], "x_val": x[1200:1500].reshape(-1, 1, 8, 8),
              "y_val": y[1200:1500], "x_test": x[1500:].reshape(-1, 1, 8, 8), "y_test": y[1500:], **extra}
    np.savez(path, **arrays)
    return arrays


def test_npz_round_trip_gives_the_same_tensors_and_the_file_checksum(tmp_path: Path) -> None:
    path = tmp_path / "digits.npz"
    arrays = _digits_npz(path)
    data = load_dataset("file", path=str(path))
    for key, array in arrays.items():
        want = torch.from_numpy(array).to(torch.float32 if key.startswith("x") else torch.int64)
        assert torch.equal(getattr(data, key), want), key
    assert data.input_shape == (1, 8, 8) and data.num_classes == 10 and data.name == "digits.npz"
    assert data.source["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert data.source["arrays_sha256"] == Dataset.from_arrays(**arrays).source["sha256"]
    assert DataSpec(name="file", options={"path": str(path)}).name == "file"


def test_npz_without_validation_arrays_holds_out_a_seeded_fraction(tmp_path: Path) -> None:
    path = tmp_path / "blobs.npz"
    np.savez(path, **_arrays())
    first = load_dataset("file", path=str(path), val_fraction=0.25, seed=3)
    again = load_dataset("file", path=str(path), val_fraction=0.25, seed=3)
    assert first.sizes() == {"train": 30, "val": 10, "test": 10} and torch.equal(first.x_val, again.x_val)


@pytest.mark.parametrize("arrays, message", [
    (lambda a: {k: v for k, v in a.items() if k not in ("x_test", "y_test")},
     r"t\.npz is missing the arrays x_test, y_test \(needs x_train, y_train, x_test, y_test; x_val and y_val "),
    (lambda a: {**a, "x_valid": a["x_test"]}, "unexpected arrays x_valid"),
    (lambda a: {**a, "x_test": a["x_test"][:, :3]}, r"t\.npz: x_test has examples of shape \(3,\)"),
    (lambda a: {**a, "y_test": a["y_test"] - 5}, r"t\.npz: y_test has label -\d; labels must be in"),
    (lambda a: {**a, "y_train": a["y_train"].astype(float)}, "y_train must hold integer labels"),
    (lambda a: {**a, "x_train": np.where(a["x_train"] > 2, np.nan, a["x_train"])}, "x_train has NaN"),
])
def test_bad_npz_files_are_one_line_errors(tmp_path: Path, arrays, message: str) -> None:
    path = tmp_path / "t.npz"
    np.savez(path, **arrays(_arrays()))
    with pytest.raises(ValueError, match=message) as error:
        load_dataset("file", path=str(path))
    _one_line(error)


def test_file_option_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such file"):
        load_dataset("file", path=str(tmp_path / "nope.npz"))
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(ValueError, match=r"d\.txt is not a \.npz or \.csv file"):
        load_dataset("file", path=str(tmp_path / "d.txt"))
    np.savez(tmp_path / "d.npz", **_arrays())
    with pytest.raises(ValueError, match="'label' and 'test_fraction' are for CSV files"):
        load_dataset("file", path=str(tmp_path / "d.npz"), label="y")
    with pytest.raises(ValueError, match="dataset 'file' has no option 'sep'; allowed: label, path, seed"):
        load_dataset("file", path=str(tmp_path / "d.npz"), sep=",")


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.write_text("\n".join(",".join(map(str, r)) for r in [header, *rows]) + "\n")


def test_csv_with_a_seeded_test_fraction(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    rows = [[i * 0.5, -i, i % 3] for i in range(50)]
    _write_csv(path, ["a", "b", "target"], rows)
    data = load_dataset("file", path=str(path), label="target", test_fraction=0.2, val_fraction=0.1, seed=4)
    assert data.sizes() == {"train": 36, "val": 4, "test": 10} and data.input_shape == (2,)
    assert data.num_classes == 3 and data.source["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    got = torch.cat([data.x_train, data.x_val, data.x_test])
    assert sorted(got[:, 0].tolist()) == [i * 0.5 for i in range(50)]
    assert torch.equal(torch.cat([data.y_train, data.y_val, data.y_test]), (-got[:, 1]).long() % 3)
    again = load_dataset("file", path=str(path), label="target", test_fraction=0.2, val_fraction=0.1, seed=4)
    assert torch.equal(again.x_test, data.x_test)


def test_csv_with_a_split_column(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    splits = ["train"] * 6 + ["val"] * 2 + ["test"] * 3
    _write_csv(path, ["split", "x", "label"], [[s, i, i % 2] for i, s in enumerate(splits)])
    data = load_dataset("file", path=str(path))
    assert data.x_train[:, 0].tolist() == list(range(6)) and data.x_val[:, 0].tolist() == [6, 7]
    assert data.x_test[:, 0].tolist() == [8, 9, 10] and data.y_test.tolist() == [0, 1, 0]


@pytest.mark.parametrize("header, rows, options, message", [
    (["a", "b"], [[1, 0]], {}, r"c\.csv has no column 'label' \(columns: a, b\); set the option 'label'"),
    (["a", "label"], [[1, 0], ["x", 1]], {}, r"c\.csv: row 3, column 'a': 'x' is not a number"),
    (["a", "label"], [[1, 0.5]], {}, "label column 'label': '0.5' is not an integer"),
    (["a", "label", "split"], [[1, 0, "train"], [2, 1, "holdout"]], {},
     "row 3, column 'split': 'holdout' is not train, val or test"),
    (["a", "label"], [], {}, "has a header but no rows"),
    (["a", "label"], [[1, 0]] * 9, {"test_fraction": 0.0}, r"test_fraction must be in \(0, 1\)"),
])
def test_bad_csv_files_are_one_line_errors(tmp_path: Path, header, rows, options, message) -> None:
    path = tmp_path / "c.csv"
    _write_csv(path, header, rows)
    with pytest.raises(ValueError, match=message) as error:
        load_dataset("file", path=str(path), **options)
    _one_line(error)


# --- import paths ----------------------------------------------------------------------------------------------

def test_an_import_path_dataset_and_model_train(own: str) -> None:
    data = load_dataset(f"{own}:blobs", n=120, seed=1)
    assert data.name == "blobs" and data.sizes() == {"train": 54, "val": 6, "test": 60}
    torch.manual_seed(0)
    model = build_model(f"{own}:tiny", data.input_shape, data.num_classes, hidden=4)
    assert prunable_layers(model) == {"1.weight": "fc", "3.weight": "output"}
    mask = Mask.ones_like(model, prunable_layers(model))
    result = train(model, data, TrainConfig(length="20it", batch_size=16, eval_every="10it"), seed=0, mask=mask)
    assert result is not None
    assert DataSpec(name=f"{own}:blobs", options={"n": 30}).name == f"{own}:blobs"
    assert ModelSpec(name=f"{own}:tiny").name == f"{own}:tiny"


@pytest.mark.parametrize("name, message", [
    ("no_such_pkg.mod:blobs", "cannot import 'no_such_pkg.mod:blobs': No module named 'no_such_pkg'"),
    ("own_things:nope", "cannot import 'own_things:nope': module 'own_things' has no attribute 'nope'"),
    ("own_things:", "an import path is 'package.module:attribute', got 'own_things:'"),
    ("own_things:NOT_CALLABLE", "'own_things:NOT_CALLABLE' is not callable: int"),
])
def test_bad_import_paths_are_one_line_errors(own: str, name: str, message: str) -> None:
    for spec in (DataSpec, ModelSpec):
        with pytest.raises(ValidationError, match=message):
            spec(name=name)
    with pytest.raises(ValueError, match=message) as error:
        load_dataset(name)
    _one_line(error)
    with pytest.raises(ValueError, match=message) as error:
        build_model(name, (3,), 2)
    _one_line(error)


def test_import_path_factories_are_checked(own: str) -> None:
    with pytest.raises(ValueError, match=f"dataset '{own}:blobs' has no option 'size'; allowed: n, seed"):
        load_dataset(f"{own}:blobs", size=3)
    with pytest.raises(ValueError, match="has no option 'size'"):
        DataSpec(name=f"{own}:blobs", options={"size": 3}).check()
    with pytest.raises(ValueError, match=f"dataset '{own}:not_a_dataset' returned list, not a subnets.data.Dataset"):
        load_dataset(f"{own}:not_a_dataset")
    with pytest.raises(ValueError, match=f"model '{own}:not_a_module' returned int, not a torch.nn.Module"):
        build_model(f"{own}:not_a_module", (3,), 2)
    with pytest.raises(ValueError, match=f"model '{own}:tiny' has no option 'depth'; allowed: hidden"):
        build_model(f"{own}:tiny", (3,), 2, depth=2)
    known = "unknown dataset 'nope'; known: file, mnist, mnist1d, modular_addition; or an import path"
    with pytest.raises(ValidationError, match=known):
        DataSpec(name="nope")
    with pytest.raises(ValidationError, match="'wine' holds tables, not tensors"):
        DataSpec(name="wine")


# --- registration through the top-level package ----------------------------------------------------------------

def test_register_dataset_and_model_from_the_top_level(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_registry, "_REGISTRY", dict(data_registry._REGISTRY))
    monkeypatch.setattr(model_registry, "_REGISTRY", dict(model_registry._REGISTRY))

    @subnets.register_dataset("test_arrays", "two blobs", source="generated in a test")
    def build(n: int = 40) -> Dataset:
        return Dataset.from_arrays(**_arrays(n, 10), name="test_arrays")

    @subnets.register_model("test_linear")
    def linear(input_shape: tuple[int, ...], num_classes: int, *, bias: bool = True) -> nn.Module:
        return nn.Linear(input_shape[0], num_classes, bias=bias)

    info = {d["name"]: d for d in dataset_info()}["test_arrays"]
    assert info["kind"] == "arrays" and info["options"] == {"n": 40}
    assert info["sha256"] == load_dataset("test_arrays").source["sha256"]
    assert load_dataset("test_arrays", n=20).sizes()["train"] == 18
    model = build_model("test_linear", (4,), 3, bias=False)
    assert prunable_layers(model) == {"weight": "output"}
    with pytest.raises(ValueError, match="dataset 'test_arrays' is already registered"):
        subnets.register_dataset("test_arrays")(build)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        subnets.nope  # noqa: B018


# --- prunable layers found in a plain module -------------------------------------------------------------------

def test_prunable_layers_of_a_plain_module() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10),
                          nn.ReLU(), nn.Linear(10, 3))
    assert prunable_layers(model) == {"0.weight": "conv", "4.weight": "fc", "6.weight": "output"}
    assert set(prunable_layers(nn.Sequential(nn.Conv1d(1, 2, 3)))) == {"0.weight"}
    with pytest.raises(ValueError, match="model ReLU has no Linear or Conv1d/Conv2d weights to prune"):
        prunable_layers(nn.ReLU())


def test_prunable_layers_of_nested_modules_are_named_as_parameters() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(3, 5), nn.ReLU())
            self.head = nn.Linear(5, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x))

    kinds = prunable_layers(Net())
    assert list(kinds.items()) == [("body.0.weight", "fc"), ("head.weight", "output")]
    assert set(kinds) <= dict(Net().named_parameters()).keys()
