"""The registry of experiment kinds: a kind registered in a test runs through the CLI like a built-in one, every
kind's record is complete, and an execution flag a kind does not honour is a one-line usage error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import pytest
from cli_invoke import invoke
from pydantic import BaseModel, ConfigDict

from subnets.progress import Progress
from subnets.runs.kinds import EXECUTION_SETTINGS, Kind, Prepared, get_kind, kind_names, register_kind, unregister_kind
from subnets.runs.pages import html_table
from subnets.steps import StepStore, run_units

ROOT = Path(__file__).parents[1]


class SquaresConfig(BaseModel):
    """A recipe of the test kind: square each of ``numbers`` (one unit each)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["squares"] = "squares"
    name: str
    numbers: list[int]


CALLS: list[int] = []


def _prepare(config: SquaresConfig, device: Any, progress: Progress, execution: Any) -> Prepared:
    if any(n < 0 for n in config.numbers):
        raise ValueError("numbers: must not be negative")

    def square(variant: str, n: int) -> tuple[dict[str, Any], dict]:
        CALLS.append(n)
        return {"n": n, "square": n * n}, {}

    def run(steps: StepStore) -> list[dict[str, Any]]:
        return run_units(steps, progress, "squares", [("square", n) for n in config.numbers], square,
                         lambda result: f"{result['n']}^2 = {result['square']}")

    return Prepared({"name": "numbers", "source": "the recipe"}, run)


def _rows(run: dict[str, Any], units: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"n": str(u["n"]), "n²": str(u["square"])} for u in units]


SQUARES = Kind("squares", SquaresConfig, _prepare, _rows,
               lambda run, units, out: "<p class='summary'>squares</p>" + html_table(_rows(run, units)),
               unit_order=lambda unit: -unit["n"])


@pytest.fixture
def squares_kind():
    register_kind(SQUARES)
    CALLS.clear()
    yield SQUARES
    unregister_kind("squares")


def _recipe(tmp_path: Path, numbers: str = "[2, 3, 10]") -> Path:
    path = tmp_path / "squares.toml"
    path.write_text(f'kind = "squares"\nname = "sq"\nnumbers = {numbers}\n')
    return path


def test_a_kind_registered_here_runs_shows_and_reports_through_the_cli(squares_kind, tmp_path: Path) -> None:
    store = str(tmp_path / "runs")
    code, stdout, stderr = invoke("run", str(_recipe(tmp_path)), "--store", store, "--quiet", "--device", "cpu")
    assert code == 0, stderr
    run_id = stdout.split()[1]
    assert CALLS == [2, 3, 10]

    code, stdout, _ = invoke("show", run_id, "--store", store, "--json")
    view = json.loads(stdout)
    assert code == 0 and view["kind"] == "squares" and view["status"] == "done" and "levels" not in view
    assert [u["square"] for u in view["units"]] == [100, 9, 4]  # the kind's unit order
    code, stdout, _ = invoke("show", run_id, "--store", store)
    assert code == 0 and "n²" in stdout and "100" in stdout
    code, stdout, _ = invoke("show", run_id, "--store", store, "--markdown")
    assert stdout.splitlines()[:3] == ["| n | n² |", "|---|---|", "| 10 | 100 |"]
    code, stdout, _ = invoke("report", run_id, "--store", store)
    page = Path(stdout.split("report: ")[1].strip()).read_text()
    assert "<p class='summary'>squares</p>" in page and "<td>100</td>" in page and "the recipe" in page

    # The same recipe is the same run: every unit is found in the store, none is computed again.
    code, stdout, _ = invoke("run", str(_recipe(tmp_path)), "--store", store, "--quiet", "--device", "cpu")
    assert code == 0 and run_id in stdout and CALLS == [2, 3, 10]


def test_a_registered_kinds_errors_are_usage_errors(squares_kind, tmp_path: Path) -> None:
    store = tmp_path / "runs"
    for numbers, message in (("[1, -2]", "numbers: must not be negative"), ('"x"', "numbers")):
        code, _, stderr = invoke("run", str(_recipe(tmp_path, numbers)), "--store", str(store), "--quiet")
        assert code == 2 and message in stderr and stderr.count("\n") == 1, stderr
    code, _, stderr = invoke("run", str(_recipe(tmp_path)), "--store", str(store), "--workers", "2")
    assert code == 2 and stderr == "error: --workers: kind 'squares' does not honour it (its execution flags: none)\n"
    assert not store.exists() or not list(store.rglob("*.sqlite"))  # nothing written
    with pytest.raises(ValueError, match="already registered"):
        register_kind(SQUARES)
    with pytest.raises(ValueError, match="already registered"):
        register_kind(Kind("lottery", SquaresConfig, _prepare, _rows, lambda *a: ""))


BUILT_IN = ["boosting-tabular", "lottery", "moe", "moefy", "moefy-minilm", "pooling", "pooling-embeddings"]


def test_every_built_in_kind_has_a_complete_record() -> None:
    assert kind_names() == BUILT_IN
    for name in BUILT_IN:
        kind = get_kind(name)
        assert kind.name == name and kind.config.model_fields["kind"].default == name
        assert set(kind.honours) <= set(EXECUTION_SETTINGS) and callable(kind.rows) and callable(kind.page)
        assert kind.rows({"recipe": {}}, []) == [] or name == "pooling-embeddings"
    with pytest.raises(KeyError, match="unknown experiment kind 'nope'; known: boosting-tabular, lottery"):
        get_kind("nope")


@pytest.mark.parametrize("recipe, flags, flag", [
    ("pooling-mnist1d.toml", ["--population", "4"], "--population"),
    ("pooling-mnist1d.toml", ["--sparse-below", "0.2"], "--sparse-below"),
    ("moefy-mnist.toml", ["--workers", "2"], "--workers"),
    ("moe-mnist.toml", ["--sparse-below", "0.5"], "--sparse-below"),
    ("boosting-tabular.toml", ["--population", "2"], "--population"),
    ("moefy-minilm.toml", ["--sparse-below", "0.1"], "--sparse-below"),
])
def test_an_execution_flag_a_kind_does_not_honour_is_a_usage_error(recipe: str, flags: list[str], flag: str,
                                                                      tmp_path: Path) -> None:
    store = tmp_path / "runs"
    code, _, stderr = invoke("run", str(ROOT / "recipes" / recipe), "--store", str(store), *flags)
    assert code == 2 and stderr.startswith(f"error: {flag}: kind ") and stderr.count("\n") == 1, stderr
    assert "does not honour it" in stderr and not store.exists()
