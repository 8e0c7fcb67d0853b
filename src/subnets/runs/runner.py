"""Running a recipe against a store: validate everything first, then run resumably, then report."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from subnets.data import DatasetUnavailable
from subnets.progress import SILENT, Progress
from subnets.runs.kinds import KINDS
from subnets.runs.recipe import RecipeError, load_recipe, run_id
from subnets.runs.report import write_report
from subnets.runs.store import Store
from subnets.train import ONE_AT_A_TIME, Execution


def default_store() -> Path:
    """``$SUBNETS_HOME`` if set, else ``./subnets-runs``."""
    return Path(os.environ.get("SUBNETS_HOME") or "subnets-runs")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is a usage error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RecipeError("--device cuda: no CUDA device is available here (use --device auto or cpu)")
    if name not in ("cpu", "cuda"):
        raise RecipeError(f"--device: must be auto, cpu or cuda (got {name!r})")
    return torch.device(name)


def run_recipe(path: Path | str, overrides: list[str], store: Store, device: str = "auto",
               progress: Progress = SILENT, execution: Execution = ONE_AT_A_TIME) -> str:
    """Run or resume the recipe at ``path``; returns the run id.

    Everything that can be checked is checked before the store is touched: the recipe, the data, the
    model and the kind's own consistency rules. A problem there raises :class:`RecipeError` and leaves
    the store as it was.
    """
    recipe = load_recipe(path, overrides)
    kind = KINDS[recipe.kind]
    torch_device = resolve_device(device)
    try:
        prepared = kind.prepare(recipe, torch_device, progress, execution)
    except DatasetUnavailable:
        raise
    except ValueError as error:
        raise RecipeError(f"{path}: {error}") from None
    identifier = run_id(recipe)
    resumed = store.start_run(identifier, recipe.kind, recipe.name, recipe.model_dump(mode="json"),
                              str(torch_device), prepared.data_source)
    steps = store.steps(identifier)
    steps.log(("resuming" if resumed else "starting") + f" {recipe.kind} run {identifier} on {torch_device}")
    try:
        prepared.run(steps)
    except KeyboardInterrupt:
        store.finish_run(identifier, "partial", "interrupted")
        raise
    except Exception as error:
        store.finish_run(identifier, "failed", f"{type(error).__name__}: {error}")
        raise
    store.finish_run(identifier, "done")
    return identifier


def show(store: Store, run: str) -> dict[str, Any]:
    """The stable JSON view of a run: its record plus one row per finished step (``levels``)."""
    record = store.run(run)
    results = store.results(record["id"])
    return {**record, "levels": sorted(results, key=_unit_order)}


def _unit_order(result: dict[str, Any]) -> tuple:
    branch_order = {"imp": 0, "reinit": 1, "random_prune": 2}
    return (result.get("level", 0), branch_order.get(result.get("branch"), 9), result.get("seed", 0))


def report(store: Store, run: str, out: Path | None = None) -> Path:
    """Write the run's HTML report (default ``<store>/reports/<id>``) and return the index path."""
    view = show(store, run)
    units = view.pop("levels")
    return write_report(view, units, out or store.root / "reports" / view["id"])
