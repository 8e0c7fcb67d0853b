"""Datasets as in-memory tensors, built by name.

``load_dataset("mnist")`` returns a :class:`Dataset` with train/val/test tensors and a record of where the
data came from (package, file, SHA-256). Batches come from :class:`Batches`: seeded index permutations over
tensors that already live on the training device, never a DataLoader.
"""

from subnets.data.batches import Batches
from subnets.data.registry import (
    Dataset,
    DatasetUnavailable,
    dataset_info,
    dataset_names,
    load_dataset,
    register_dataset,
)

__all__ = [
    "Batches",
    "Dataset",
    "DatasetUnavailable",
    "dataset_info",
    "dataset_names",
    "load_dataset",
    "register_dataset",
]
