"""Running a recipe against a store: validate everything first, then run resumably, then report.

Every kind takes the same path through here; what differs between kinds is in its :class:`~subnets.runs.kinds.Kind`
record. Torch and the kind's family are imported only once the recipe has passed the cheap checks (its TOML, its
kind, the execution settings the kind honours, the packages it needs, every field of the recipe).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from subnets.progress import SILENT, Progress
from subnets.recipes.execution import Execution
from subnets.runs.kinds import EXECUTION_SETTINGS, Kind, find_kind
from subnets.runs.recipe import RecipeError, read_recipe, recipe_kind, run_id, validate_recipe
from subnets.runs.report import write_report
from subnets.runs.store import Store

if TYPE_CHECKING:
    import torch


def default_store() -> Path:
    """``$SUBNETS_HOME`` if set, else ``./subnets-runs``."""
    return Path(os.environ.get("SUBNETS_HOME") or "subnets-runs")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is a usage error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RecipeError("--device cuda: no CUDA device is available here (use --device auto or cpu)")
    if name not in ("cpu", "cuda"):
        raise RecipeError(f"--device: must be auto, cpu or cuda (got {name!r})")
    return torch.device(name)


def importable_from(*folders: Path) -> None:
    """Put ``folders`` on ``sys.path`` (if not there) so that a recipe's ``"module:factory"`` import paths find
    modules in the working folder and beside the recipe, as ``python -m`` would for the working folder."""
    for folder in reversed(folders):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))


def check_execution(kind: Kind, execution: dict[str, Any]) -> Execution:
    """The run's :class:`~subnets.recipes.execution.Execution` from ``execution`` (settings of
    :data:`~subnets.runs.kinds.EXECUTION_SETTINGS` -> values); :class:`RecipeError` naming the flag when it sets a
    setting the kind does not honour (a setting at its default is not set) or a value out of range."""
    defaults = Execution()
    for setting, value in execution.items():
        if setting not in EXECUTION_SETTINGS:
            raise ValueError(f"unknown execution setting {setting!r}; known: {', '.join(EXECUTION_SETTINGS)}")
        if value != getattr(defaults, setting) and setting not in kind.honours:
            honoured = ", ".join(EXECUTION_SETTINGS[s] for s in EXECUTION_SETTINGS if s in kind.honours) or "none"
            raise RecipeError(f"{EXECUTION_SETTINGS[setting]}: kind {kind.name!r} does not honour it "
                              f"(its execution flags: {honoured})")
    try:
        return Execution(**execution)
    except ValueError as error:
        raise RecipeError(str(error)) from None


def run_recipe(path: Path | str, overrides: list[str], store: Store, device: str = "auto",
               progress: Progress = SILENT, execution: dict[str, Any] | None = None) -> str:
    """Run or resume the recipe at ``path``; returns the run id.

    ``execution`` holds the run's execution settings (``workers``, ``population_size``, ``sparse_below``), which
    are not part of the recipe. Everything that can be checked is checked before the store is touched: the
    recipe, the settings against its kind, the kind's packages, the data, the model and the kind's own rules. A
    problem there raises :class:`RecipeError` (:class:`~subnets.runs.kinds.KindUnavailable` for a missing package)
    and leaves the store as it was.
    """
    raw = read_recipe(path, overrides)
    kind = recipe_kind(raw, str(path))
    settings = check_execution(kind, execution or {})
    kind.check_installed()
    importable_from(Path.cwd(), Path(path).resolve().parent)
    recipe = validate_recipe(raw, str(path))

    torch_device = resolve_device(device)
    try:
        prepared = kind.prepare(recipe, torch_device, progress, settings)
    except ValueError as error:
        raise RecipeError(f"{path}: {error}") from None
    identifier = run_id(recipe, prepared.identity)
    resumed = store.start_run(identifier, recipe.kind, recipe.name, recipe.model_dump(mode="json"),
                              str(torch_device), prepared.data_source)
    steps = store.steps(identifier, echo=progress.log)  # resuming and recomputing are said on the console too
    count = store.stored_steps(identifier) if resumed else 0
    stored = f"; {count} step{'' if count == 1 else 's'} already stored" if resumed else ""
    steps.say(("resuming" if resumed else "starting") + f" {recipe.kind} run {identifier} on {torch_device}{stored}")
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
    """The stable JSON view of a run: its record plus one row per finished step (``units``; a lottery run also has
    them as ``levels``, the name they had before every kind shared this view), in the kind's unit order."""
    record = store.run(run)
    units = store.results(record["id"])
    kind = find_kind(record["kind"])
    if kind is not None and kind.unit_order is not None:
        units = sorted(units, key=kind.unit_order)
    view = {**record, "units": units}
    if kind is not None and kind.legacy_levels:
        view["levels"] = units
    return view


def table(view: dict[str, Any], markdown: bool = False) -> list[dict[str, str]] | str:
    """The summary table of a :func:`show` view: rows of column -> text, or Markdown when ``markdown``. A kind not
    registered in this process gets one row per unit."""
    from subnets.runs.pages import markdown_table, unit_rows

    kind = find_kind(view["kind"])
    if markdown:
        return kind.table_markdown(view, view["units"]) if kind else markdown_table(unit_rows(view, view["units"]))
    return kind.rows(view, view["units"]) if kind else unit_rows(view, view["units"])


def report(store: Store, run: str, out: Path | None = None) -> Path:
    """Write the run's HTML report (default ``<store>/reports/<id>``) and return the index path."""
    view = show(store, run)
    units = view.pop("units")
    view.pop("levels", None)
    return write_report(view, units, out or store.root / "reports" / view["id"])
