"""The lottery from Python on a network and data the library has never seen: ``find_tickets`` with a plain
``nn.Sequential`` and arrays, in memory and in a run store (resumable)."""

from __future__ import annotations

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
