"""Shared fixtures: real MNIST loaded once, and tiny lottery recipes that train in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from subnets.data import Dataset, load_dataset

TINY_RECIPE = """
kind = "lottery"
name = "{name}"
seeds = {seeds}

[data]
name = "mnist"

[model]
name = "lenet300_100"

[train]
optimizer = "adam"
lr = 1.2e-3
batch_size = 60
length = "{length}"
eval_every = "{eval_every}"

[prune]
levels = {levels}
rates = {{ fc = 0.2, output = 0.1 }}
rewind = "{rewind}"
"""


@pytest.fixture(scope="session")
def mnist() -> Dataset:
    return load_dataset("mnist")


@pytest.fixture
def tiny_recipe(tmp_path: Path):
    """Write a small lottery recipe and return its path; keyword arguments change its fields."""

    def write(name: str = "tiny", seeds: str = "[0]", length: str = "60it", eval_every: str = "30it",
              levels: int = 2, rewind: str = "0it", filename: str = "tiny.toml") -> Path:
        path = tmp_path / filename
        path.write_text(TINY_RECIPE.format(name=name, seeds=seeds, length=length, eval_every=eval_every,
                                           levels=levels, rewind=rewind))
        return path

    return write
