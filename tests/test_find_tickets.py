"""The lottery from Python on a network and data the library has never seen: ``find_tickets`` with a plain
``nn.Sequential`` and arrays, in memory and in a run store (resumable)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from subnets.data import Dataset
from subnets.runs.store import Store
from subnets.tickets import PruneConfig, find_tickets
from subnets.train import TrainConfig


def _blobs() -> Dataset:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 8)) * 3
    labels = rng.integers(0, 3, size=600)
    x = (centers[labels] + rng.normal(size=(600, 8))).astype(np.float32)
    return Dataset.from_arrays(x[:400], labels[:400], x[500:], labels[500:], x_val=x[400:500], y_val=labels[400:500])


def _network() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3))


TRAIN = TrainConfig(optimizer="adam", lr=1e-2, batch_size=50, length="40it", eval_every="20it")
PRUNE = PruneConfig(levels=2, rates={"fc": 0.5, "output": 0.2}, branches=["imp", "random_prune"])


def test_find_tickets_prunes_any_module_by_its_schedule() -> None:
    tickets = find_tickets(_network(), _blobs(), train=TRAIN, prune=PRUNE, seeds=[0, 1])
    assert len(tickets.units) == 2 + 2 * 2 * 2  # level 0 imp, then imp and random_prune per level and seed
    level2 = tickets.masks[2, 0]
    assert set(level2) == {"0.weight", "2.weight", "4.weight"}  # found without a prunable_layers() method
    kept = level2.kept()
    assert kept["0.weight"] == round(8 * 32 * 0.25) and kept["4.weight"] == round(16 * 3 * 0.64)
    assert all(0 <= u["test_acc"] <= 1 for u in tickets.units)
    ticket = next(u for u in tickets.results("imp") if u["level"] == 2 and u["seed"] == 0)
    assert ticket["macs"] == sum(kept.values())  # an MLP's MACs per example: one per kept weight
    assert next(u for u in tickets.units if u["level"] == 0)["macs"] == 8 * 32 + 32 * 16 + 16 * 3
    assert not torch.equal(tickets.masks[2, 0]["0.weight"], tickets.masks[2, 1]["0.weight"])  # seeds differ
    assert [u["level"] for u in tickets.results("imp") if u["seed"] == 0] == [0, 1, 2]


def test_find_tickets_in_a_run_store_resumes_without_training_again(tmp_path) -> None:
    store = Store(tmp_path / "runs")
    store.start_run("mine", "lottery", "mine", {}, "cpu", {})
    first = find_tickets(_network(), _blobs(), train=TRAIN, prune=PRUNE, steps=store.steps("mine"))
    lines = len(store.log_lines("mine"))
    again = find_tickets(_network(), _blobs(), train=TRAIN, prune=PRUNE, steps=store.steps("mine"))
    assert len(store.log_lines("mine")) == lines  # every unit was found, none trained again
    assert [u["test_acc"] for u in again.units] == [u["test_acc"] for u in first.units]


def test_find_tickets_rejects_bad_seeds() -> None:
    with pytest.raises(ValueError, match="seeds"):
        find_tickets(_network(), _blobs(), train=TRAIN, prune=PRUNE, seeds=[0, 0])


RECIPE = """
kind = "lottery"
name = "own"
seeds = [0]

[data]
name = "file"
options = {{ path = "{path}" }}

[model]
name = "ownmodels:net"

[train]
optimizer = "adam"
lr = 1e-2
batch_size = 50
length = "40it"
eval_every = "20it"

[prune]
levels = 1
rates = {{ fc = 0.5, output = 0.2 }}
"""


def test_a_file_dataset_and_an_import_path_model_run_through_the_cli(tmp_path, monkeypatch) -> None:
    """Resumable, reported and shown like the built-ins; the file's checksum is part of the run id."""
    from cli_invoke import invoke

    data = _blobs()
    arrays = {k: getattr(data, k).numpy() for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")}
    np.savez(tmp_path / "blobs.npz", **arrays)
    (tmp_path / "ownmodels.py").write_text(
        "from torch import nn\n\n\ndef net(input_shape, num_classes):\n"
        "    return nn.Sequential(nn.Linear(input_shape[0], 32), nn.ReLU(), nn.Linear(32, num_classes))\n")
    recipe = tmp_path / "own.toml"
    recipe.write_text(RECIPE.format(path=tmp_path / "blobs.npz"))
    monkeypatch.chdir(tmp_path)
    store = str(tmp_path / "runs")
    code, stdout, stderr = invoke("run", str(recipe), "--store", store, "--quiet", "--device", "cpu")
    assert code == 0, stderr
    run_id = stdout.split()[1]
    assert (tmp_path / "runs" / "reports" / run_id / "accuracy_vs_weights.png").is_file()
    view = invoke("show", run_id, "--store", store, "--json")[1]
    assert len(json.loads(view)["units"]) == 4 and json.loads(view)["data_source"]["sha256"]
    code, stdout, _ = invoke("run", str(recipe), "--store", store, "--quiet", "--device", "cpu")
    assert code == 0 and run_id in stdout  # same recipe, same file: the same run, nothing trained again
    assert sum("test acc" in line for line in Store(store).log_lines(run_id)) == 4

    arrays["y_test"] = arrays["y_test"][::-1].copy()
    np.savez(tmp_path / "blobs.npz", **arrays)
    code, stdout, _ = invoke("run", str(recipe), "--store", store, "--quiet", "--device", "cpu")
    assert code == 0 and stdout.split()[1] != run_id  # the same recipe on changed data is a new run
