"""The registry of experiment kinds: the only place where ``subnets.runs`` meets the method families.

One :class:`Kind` record per kind holds everything the run machinery needs: the recipe model, how a validated
recipe becomes a runnable experiment, which execution settings (``--workers``, ``--population``,
``--sparse-below``) it honours, which optional packages it needs, its summary table, its report page and the
order of its units. Runner, ``show``, ``report`` and the CLI take one code path for every kind.

The built-in kinds live in the modules of this package, one per family, and are imported only when a recipe or
a run of theirs is in hand, so the CLI answers ``--help``, ``list`` and usage errors without loading torch.
Other kinds join with :func:`register_kind`.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from pydantic import BaseModel

    from subnets.data import Dataset
    from subnets.progress import Progress
    from subnets.recipes.execution import Execution
    from subnets.steps import StepStore

Units = list[dict[str, Any]]
EXECUTION_SETTINGS = {"workers": "--workers", "population_size": "--population", "sparse_below": "--sparse-below"}
"""The run's execution settings (fields of :class:`subnets.recipes.execution.Execution`) and the flags that set them."""


class KindUnavailable(RuntimeError):
    """A kind needs an optional package that is not installed; the message names the extra to install."""


@dataclass
class Prepared:
    """An experiment checked against its data and model, ready to run against a step store.

    ``identity``: what joins the recipe in the run id beyond the recipe's text (the SHA-256 of a file dataset,
    whose path alone does not say what it holds); None when the recipe says it all.
    """

    data_source: dict[str, Any]
    run: Callable[[StepStore], list[dict[str, Any]]]
    identity: dict[str, Any] | None = None


def data_identity(config: Any, source: dict[str, Any]) -> dict[str, Any] | None:
    """The run-id part of a recipe's data: the SHA-256 of the data for a file dataset (``[data] name = "file"``) or
    one from an import path, whose names alone do not say what they hold."""
    from subnets.catalogue import is_import_path

    name = config.data.name
    return {"data_sha256": source.get("sha256")} if name == "file" or is_import_path(name) else None


@dataclass(frozen=True)
class Kind:
    """One experiment kind.

    ``recipe``: the pydantic model of its recipes, or its import path ``"package.module:Name"`` (imported when a
    recipe is validated). ``prepare(recipe, device, progress, execution)`` loads data and builds models (every
    problem a ValueError, before the store is touched) and returns a :class:`Prepared`. ``honours``: the fields
    of :class:`~subnets.recipes.execution.Execution` it takes; setting another one is a usage error. ``needs``: (module,
    extra) pairs of optional packages it imports. ``rows(run, units)``: its summary table, one dict of column ->
    text per row; ``page(run, units, out_dir)``: the HTML body of its report (plots written into ``out_dir``);
    ``markdown(run, units)``: the table for the results documents (default: ``rows`` as Markdown);
    ``unit_order``: a sort key for its units (default: the store's key order); ``legacy_levels``: ``show
    --json`` also names the units ``levels`` (the lottery's field from before ``units``).
    """

    name: str
    recipe: type[BaseModel] | str
    prepare: Callable[[Any, torch.device, Progress, Execution], Prepared]
    rows: Callable[[dict[str, Any], Units], list[dict[str, str]]]
    page: Callable[[dict[str, Any], Units, Path], str]
    honours: frozenset[str] = frozenset()
    needs: tuple[tuple[str, str], ...] = ()
    markdown: Callable[[dict[str, Any], Units], str] | None = None
    unit_order: Callable[[dict[str, Any]], Any] | None = None
    legacy_levels: bool = False
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        unknown = set(self.honours) - set(EXECUTION_SETTINGS)
        if unknown:
            raise ValueError(f"kind {self.name!r}: unknown execution setting {sorted(unknown)[0]!r}; "
                             f"known: {', '.join(EXECUTION_SETTINGS)}")

    @property
    def config(self) -> type[BaseModel]:
        """The recipe model (imported on first use when given as an import path)."""
        if not isinstance(self.recipe, str):
            return self.recipe
        self.check_installed()
        return load(self.recipe)

    def check_installed(self) -> None:
        """Raise :class:`KindUnavailable` naming the extra to install when a package the kind needs is missing."""
        for module, extra in self.needs:
            if importlib.util.find_spec(module) is None:
                raise KindUnavailable(f"kind {self.name!r} needs the {module!r} package: "
                                      f"pip install 'subnets[{extra}]'")

    def table_markdown(self, run: dict[str, Any], units: Units) -> str:
        """The kind's summary as Markdown."""
        if self.markdown is not None:
            return self.markdown(run, units)
        from subnets.runs.pages import markdown_table

        return markdown_table(self.rows(run, units))


def load(path: str) -> Any:
    """The object at the import path ``"package.module:name"``."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def recipe_data(config: Any, device: torch.device) -> Dataset:
    """The recipe's ``[data]``, its options checked, loaded and moved to ``device``; a ValueError when a batch of
    ``train.batch_size`` rows would not fit in its training split (the run would have no whole batch)."""
    from subnets.data import load_dataset

    config.data.check()
    data = load_dataset(config.data.name, **config.data.options)
    batch = getattr(getattr(config, "train", None), "batch_size", None)
    if batch is not None and batch > len(data.y_train):
        raise ValueError(f"train.batch_size ({batch}) is larger than the training split of '{config.data.name}' "
                         f"({len(data.y_train)} rows)")
    return data.to(device)


def on_data(experiment: str, workers: bool = False) -> Callable[..., Prepared]:
    """The ``prepare`` of a kind whose experiment (an import path) is built as ``(config, data, device, progress)``
    (and ``workers=`` the run's worker count if ``workers``) and has ``run``: the recipe's dataset is checked, loaded
    and moved to the device first."""

    def prepare(config: Any, device: torch.device, progress: Progress, execution: Execution) -> Prepared:
        data = recipe_data(config, device)
        options = {"workers": execution.workers} if workers else {}
        return Prepared(data.source, load(experiment)(config, data, device, progress, **options).run,
                        data_identity(config, data.source))

    return prepare


def self_sourced(experiment: str, workers: bool = False) -> Callable[..., Prepared]:
    """The ``prepare`` of a kind whose experiment (an import path) loads its own data and models, is built as
    ``(config, device, progress)`` (and ``workers=`` the run's worker count if ``workers``) and has ``source`` and
    ``run``."""

    def prepare(config: Any, device: torch.device, progress: Progress, execution: Execution) -> Prepared:
        options = {"workers": execution.workers} if workers else {}
        built = load(experiment)(config, device, progress, **options)
        return Prepared(built.source, built.run)

    return prepare


# The built-in kinds: name -> module whose ``KINDS`` tuple holds the record (imported on first use).
_BUILT_IN = {
    "lottery": "subnets.runs.kinds.lottery",
    "moe": "subnets.runs.kinds.experts",
    "moefy": "subnets.runs.kinds.experts",
    "moefy-minilm": "subnets.runs.kinds.experts",
    "pooling": "subnets.runs.kinds.pooling",
    "pooling-embeddings": "subnets.runs.kinds.pooling_embeddings",
    "boosting-tabular": "subnets.runs.kinds.boosting",
}
_REGISTERED: dict[str, Kind] = {}


def register_kind(kind: Kind) -> Kind:
    """Add ``kind`` to the registry (its name must be new) and return it."""
    if kind.name in _BUILT_IN or kind.name in _REGISTERED:
        raise ValueError(f"experiment kind {kind.name!r} is already registered")
    _REGISTERED[kind.name] = kind
    return kind


def unregister_kind(name: str) -> None:
    """Remove a kind added with :func:`register_kind` (built-in kinds stay)."""
    _REGISTERED.pop(name, None)


def kind_names() -> list[str]:
    """Every kind's name, sorted."""
    return sorted({*_BUILT_IN, *_REGISTERED})


def find_kind(name: str) -> Kind | None:
    """The record of kind ``name``, or None when no kind of that name is registered in this process (a stored run
    of a kind registered elsewhere)."""
    try:
        return get_kind(name)
    except KeyError:
        return None


def get_kind(name: str) -> Kind:
    """The record of kind ``name``; an unknown name is a KeyError listing the known ones."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in _BUILT_IN:
        raise KeyError(f"unknown experiment kind {name!r}; known: {', '.join(kind_names())}")
    module = importlib.import_module(_BUILT_IN[name])
    return next(kind for kind in module.KINDS if kind.name == name)
