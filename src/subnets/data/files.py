"""Your own data from a file: the dataset ``file`` (option ``path``), a ``.npz`` archive or a CSV table.

- ``.npz``: arrays ``x_train``, ``y_train``, ``x_test``, ``y_test`` and optionally ``x_val``, ``y_val`` (no other
  names); features of any shape ``(N, ...)``, integer labels.
- CSV: a header row, a label column (option ``label``, default ``"label"``) of integers, every other column a
  number (a feature), except an optional ``split`` column whose values are ``train``, ``val`` or ``test``: with it
  the file gives the split; without it a seeded ``test_fraction`` (default 0.2) of the rows is the test split.

Without validation rows a seeded ``val_fraction`` (default 0.1) of the training rows is held out
(:meth:`Dataset.from_arrays`, which also checks the arrays). ``source["sha256"]`` is the file's SHA-256, so a run
on the same recipe with another file is another run. Every problem is a one-line ValueError naming the file.
"""

from __future__ import annotations

import csv
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from subnets.data.registry import Dataset, file_sha256, register_dataset

NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
NPZ_OPTIONAL = ("x_val", "y_val")
CSV_SPLITS = ("train", "val", "test")


def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path.name}: cannot read it as a .npz archive: {error}") from None
    missing = [n for n in NPZ_ARRAYS if n not in arrays]
    if missing:
        raise ValueError(f"{path.name} is missing the array{'s' * (len(missing) > 1)} {', '.join(missing)} (needs "
                         f"{', '.join(NPZ_ARRAYS)}; {' and '.join(NPZ_OPTIONAL)} optional)")
    unexpected = sorted(set(arrays) - set(NPZ_ARRAYS) - set(NPZ_OPTIONAL))
    if unexpected:
        raise ValueError(f"{path.name} has unexpected arrays {', '.join(unexpected)} (expected "
                         f"{', '.join(NPZ_ARRAYS + NPZ_OPTIONAL)})")
    return arrays


def _number(value: str, row: int, column: str, path: Path) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{path.name}: row {row}, column {column!r}: {value!r} is not a number") from None


def _label(value: str, row: int, column: str, path: Path) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{path.name}: row {row}, label column {column!r}: {value!r} is not an integer") from None


def _csv_arrays(path: Path, label: str, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise ValueError(f"{path.name} is empty: a CSV dataset needs a header row")
    header, body = rows[0], rows[1:]
    if label not in header:
        raise ValueError(f"{path.name} has no column {label!r} (columns: {', '.join(header)}); set the option "
                         "'label' to the label column")
    if not body:
        raise ValueError(f"{path.name} has a header but no rows")
    features = [c for c in header if c not in (label, "split")]
    at = {c: i for i, c in enumerate(header)}
    x = np.empty((len(body), len(features)))
    y = np.empty(len(body), dtype=np.int64)
    for r, values in enumerate(body):
        line = r + 2
        if len(values) != len(header):
            raise ValueError(f"{path.name}: row {line} has {len(values)} fields, the header {len(header)}")
        x[r] = [_number(values[at[c]], line, c, path) for c in features]
        y[r] = _label(values[at[label]], line, label, path)
    if "split" in at:
        split = [values[at["split"]] for values in body]
        for r, value in enumerate(split):
            if value not in CSV_SPLITS:
                raise ValueError(f"{path.name}: row {r + 2}, column 'split': {value!r} is not train, val or test")
        split = np.array(split)
        rows_of = {s: np.flatnonzero(split == s) for s in CSV_SPLITS}
    else:
        if not 0 < test_fraction < 1:
            raise ValueError(f"dataset 'file': test_fraction must be in (0, 1), got {test_fraction}")
        order = np.random.default_rng(seed).permutation(len(y))
        n_test = max(1, round(len(y) * test_fraction))
        rows_of = {"train": np.sort(order[n_test:]), "test": np.sort(order[:n_test])}
    arrays = {f"{a}_{s}": (x if a == "x" else y)[rows] for s, rows in rows_of.items() for a in "xy"}
    return {k: v for k, v in arrays.items() if not (k.endswith("_val") and len(v) == 0)}


@register_dataset("file", "your own data: a .npz archive or a CSV table (option path; see subnets.data.files)",
                  source="a file; its SHA-256 in the source")
def load_file(path: str, label: str | None = None, test_fraction: float | None = None,
              val_fraction: float | None = None, seed: int = 0) -> Dataset:
    """The dataset in the ``.npz`` or CSV file at ``path`` (see the module docstring for the layouts).

    ``label`` (CSV, default ``"label"``): the label column; ``test_fraction`` (CSV without a ``split`` column,
    default 0.2): the share of rows drawn with ``seed`` for testing; ``val_fraction`` (default 0.1): the share of
    training rows drawn with ``seed`` for validation when the file has none.
    """
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"dataset 'file': no such file {str(file)!r}")
    suffix = file.suffix.lower()
    if suffix == ".npz":
        if label is not None or test_fraction is not None:
            raise ValueError("dataset 'file': the options 'label' and 'test_fraction' are for CSV files")
        arrays = _npz_arrays(file)
    elif suffix == ".csv":
        arrays = _csv_arrays(file, "label" if label is None else label, 0.2 if test_fraction is None else test_fraction,
                             seed)
    else:
        raise ValueError(f"dataset 'file': {file.name} is not a .npz or .csv file")
    try:
        data = Dataset.from_arrays(**arrays, val_fraction=val_fraction, seed=seed, name=file.name)
    except ValueError as error:
        raise ValueError(f"{file.name}: {error}") from None
    source: dict[str, Any] = {"name": file.name, "source": f"file ({suffix[1:]})", "path": str(file.resolve()),
                              "sha256": file_sha256(file), "arrays_sha256": data.source["sha256"]}
    return replace(data, source=source)
