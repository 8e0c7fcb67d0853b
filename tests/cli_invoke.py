"""Calling the command line in-process from tests."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from subnets.cli import cli


def invoke(*args: str) -> tuple[int, str, str]:
    """Run ``subnets ARGS`` in-process: exit code, stdout and stderr; an unexpected exception is raised."""
    result = CliRunner().invoke(cli, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def run_recipe(recipe: Path, store: Path, overrides: list[str], *options: str) -> tuple[int, str, str]:
    """``subnets run RECIPE --store STORE --quiet --device cpu [OPTIONS] --set ...`` in-process."""
    args = ["run", str(recipe), "--store", str(store), "--quiet", "--device", "cpu", *options]
    for override in overrides:
        args += ["--set", override]
    return invoke(*args)
