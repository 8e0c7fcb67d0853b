"""Datasets, one registry for all: images, sequences, sentences, tables and your own arrays or files.

``load_dataset("mnist")`` returns a :class:`Dataset` with train/val/test tensors and a record of where the data came
from (package, file, SHA-256); ``load_dataset("package.module:factory", **options)`` calls your own factory, and
``load_dataset("file", path="data.npz")`` reads a ``.npz`` or CSV file (:mod:`subnets.data.files`).
``Dataset.from_arrays(...)`` checks and wraps arrays you already have. ``load_table(name)`` gives a table for
the boosting experiments (:mod:`subnets.data.tables`); the sentence sets are in :mod:`subnets.data.sentences`.
``dataset_info()`` lists every dataset with its kind, source, availability and SHA-256. Batches come from
:class:`Batches`: seeded index permutations over tensors that already live on the training device, never a
DataLoader.

Importing this package registers the built-in datasets; scikit-learn, mnist1d and transformers are imported only
when data that needs them is loaded.
"""

from subnets.data import files, images, sentences, sequences  # noqa: F401  (importing registers the datasets)
from subnets.data.batches import Batches
from subnets.data.registry import (
    Dataset,
    DatasetUnavailable,
    dataset_info,
    dataset_names,
    load_dataset,
    register_dataset,
)
from subnets.data.tables import Fold, Table, load_table, make_folds, table_names

__all__ = [
    "Batches",
    "Dataset",
    "DatasetUnavailable",
    "Fold",
    "Table",
    "dataset_info",
    "dataset_names",
    "load_dataset",
    "load_table",
    "make_folds",
    "register_dataset",
    "table_names",
]
