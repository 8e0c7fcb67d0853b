"""Calling the command line in-process from tests."""

from __future__ import annotations

from click.testing import CliRunner

from subnets.cli import cli


def invoke(*args: str) -> tuple[int, str, str]:
    """Run ``subnets ARGS`` in-process: exit code, stdout and stderr; an unexpected exception is raised."""
    result = CliRunner().invoke(cli, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr
