"""The ``subnets`` command: parses arguments, calls ``subnets.runs``, prints.

Each verb imports what it needs when it runs (torch, a family, matplotlib), so ``--help``, usage errors,
``list`` and ``show`` answer at once.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
from rich import box
from rich.console import Console
from rich.table import Table

from subnets.runs.kinds import KindUnavailable
from subnets.runs.recipe import RecipeError
from subnets.runs.runner import default_store, report, run_recipe, show, table
from subnets.runs.store import RunBusy, Store, StoreError, UnknownRun, check_folder

USAGE_ERROR = 2
CORES = os.cpu_count() or 1
out = Console(highlight=False, soft_wrap=True)


def _fail(message: str, code: int = USAGE_ERROR) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _store(path: str | None, write: bool = False) -> Store:
    """The store at ``--store`` (default :func:`default_store`), checked for reading or, with ``write``, for
    writing: a bad path (empty, a file, no permission, a system folder, not a run store) is one error line and exit
    code 2 before anything is read or written."""
    store = Store(default_store() if path is None else path)
    try:
        store.validate(write)
    except StoreError as error:
        _fail(str(error))
    return store


def _warn_if_damaged(store: Store, run_id: str) -> None:
    """One ``warning:`` line on stderr when artefacts of the run are missing or corrupt (stdout stays clean)."""
    damaged = len(store.check(run_id))
    if damaged:
        one = damaged == 1
        click.echo(f"warning: {damaged} artefact{'' if one else 's'} of run {run_id} {'is' if one else 'are'} missing "
                   f"or corrupt; run the recipe again to recompute {'it' if one else 'them'}", err=True)


class _OneLineErrors(click.Group):
    """A group whose usage errors (bad option, missing argument) are one ``error:`` line and exit code 2."""

    def main(self, *args: Any, **kwargs: Any) -> NoReturn:
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as error:
            click.echo(error.ctx.get_help(), err=True)
            sys.exit(USAGE_ERROR)
        except click.UsageError as error:
            _fail(error.format_message().replace("\n", " "))
        except click.Abort:
            _fail("aborted", code=130)
        sys.exit(code if isinstance(code, int) else 0)


store_option = click.option("--store", "store_path", type=click.Path(path_type=str), default=None,
                            help="Run store folder (default: $SUBNETS_HOME, else ./subnets-runs).")


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="subnets")
def cli() -> None:
    """subnets: find, train, route and pool the sub-networks inside neural networks."""


@cli.command("run")
@click.argument("recipe", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe field.")
@store_option
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]), show_default=True)
@click.option("--threads", type=click.IntRange(min=1, max=CORES), default=None,
              help="CPU threads for torch (default: torch's choice). Give each of several concurrent runs "
                   "its share of the cores: oversubscribed threads slow every run down many times over.")
@click.option("--population", "population_size", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train up to N networks of a level (branches x seeds) together in one batched pass.")
@click.option("--sparse-below", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Train masked linear layers below this density in sparse (CSR) form; not in populations.")
@click.option("--workers", type=click.IntRange(min=1, max=CORES), default=1, show_default=True,
              help="Train this many networks at once in worker processes, splitting the threads among them "
                   "(at most one per core, and per unit left to train).")
@click.option("--quiet", is_flag=True, help="No progress bars or log lines.")
def run_command(recipe: Path, overrides: tuple[str, ...], store_path: str | None, device: str,
                threads: int | None, population_size: int, sparse_below: float, workers: int,
                quiet: bool) -> None:
    """Run (or resume) RECIPE, then write its report."""
    if workers > 1 and population_size > 1:
        _fail("--workers and --population: choose one (each worker trains one network at a time)")
    store = _store(store_path, write=True)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    execution = {"population_size": population_size, "sparse_below": sparse_below, "workers": workers}
    try:
        if quiet:
            identifier = run_recipe(recipe, list(overrides), store, device, execution=execution)
        else:
            from subnets.runs.progress import BarProgress

            with BarProgress() as progress:
                identifier = run_recipe(recipe, list(overrides), store, device, progress, execution)
        index = report(store, identifier)
    except (RecipeError, KindUnavailable, StoreError) as error:
        _fail(str(error))
    except RunBusy as error:
        _fail(str(error), code=1)
    except RuntimeError as error:
        from subnets.data import DatasetUnavailable
        from subnets.train import Diverged, WorkerFailed

        if isinstance(error, DatasetUnavailable | WorkerFailed | Diverged):
            _fail(str(error), code=1)
        raise
    except KeyboardInterrupt:
        _fail("interrupted; run the same command again to resume", code=130)
    out.print(f"run {identifier} done; report: {index}")


@cli.command("list")
@store_option
@click.option("--json", "as_json", is_flag=True, help="One JSON array on stdout.")
def list_command(store_path: str | None, as_json: bool) -> None:
    """List the runs in the store."""
    store = _store(store_path)
    try:
        found = store.runs()
    except StoreError as error:
        _fail(str(error))
    runs = [{k: r[k] for k in ("id", "kind", "name", "status", "steps", "created", "updated")} for r in found]
    if as_json:
        click.echo(json.dumps(runs, indent=2))
        return
    table = Table("id", "kind", "name", "status", "steps", "updated")
    for r in runs:
        table.add_row(r["id"], r["kind"], r["name"], r["status"], str(r["steps"]), r["updated"])
    out.print(table if runs else "no runs yet")


@cli.command("show")
@click.argument("run")
@store_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout (stable format).")
@click.option("--markdown", is_flag=True, help="The summary as Markdown (lottery: branches side by side, findings).")
def show_command(run: str, store_path: str | None, as_json: bool, markdown: bool) -> None:
    """Show a run (RUN is an id or a unique prefix of one)."""
    store = _store(store_path)
    try:
        view = show(store, run)
        _warn_if_damaged(store, view["id"])
    except (UnknownRun, StoreError) as error:
        _fail(str(error))
    if as_json:
        click.echo(json.dumps(view))
        return
    if markdown:
        click.echo(table(view, markdown=True), nl=False)
        return
    out.print(f"[bold]{view['name']}[/bold] {view['id']} ({view['kind']}) status: {view['status']}")
    if view["error"]:
        out.print(f"error: {view['error']}")
    rows = table(view)
    shown = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for header in rows[0] if rows else ():
        shown.add_column(header, justify="right")
    for row in rows:
        shown.add_row(*row.values())
    out.print(shown if rows else "no finished units yet")


@cli.command("report")
@click.argument("run")
@store_option
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Folder for index.html and the plots (default: <store>/reports/<id>).")
def report_command(run: str, store_path: str | None, out_dir: Path | None) -> None:
    """Write the HTML report (with PNG plots) of a run."""
    store = _store(store_path)
    try:
        run_id = store.run(run)["id"]
        check_folder(out_dir or store.root / "reports" / run_id, "report folder")
        _warn_if_damaged(store, run_id)
        index = report(store, run_id, out_dir)
    except (UnknownRun, StoreError) as error:
        _fail(str(error))
    out.print(f"report: {index}")


@cli.group("data")
def data_group() -> None:
    """Datasets."""


@data_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array on stdout (every field, full checksums).")
@click.option("--no-checksums", is_flag=True, help="Skip computing the SHA-256 of each dataset (a few seconds).")
def data_list(as_json: bool, no_checksums: bool) -> None:
    """List every dataset (images, sequences, sentences, tables, your own files) with its source and checksum."""
    from subnets.data import dataset_info

    info = dataset_info(checksums=not no_checksums)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    table = Table("name", "kind", "source", "sha256", "available", "options", box=box.SIMPLE_HEAD)
    for d in info:
        options = ", ".join([f"{name} (required)" for name in d["required"]]
                            + [f"{name}={value!r}" for name, value in d["options"].items()])
        available = "yes" if d["available"] else (d["install"] or d["problem"] or "no")
        table.add_row(d["name"], d["kind"], d["source"], (d["sha256"] or "–")[:12], available, options or "–")
    out.print(table)


def main() -> None:
    """Entry point of the ``subnets`` console script."""
    cli()
