"""The base install (no extras: no scikit-learn, transformers, mnist1d, LightGBM or XGBoost) runs the CLI and the
lottery, and a kind whose extra is missing says which extra to install in one line with exit code 2.

These tests run only where scikit-learn is missing: CI makes such an environment (``make base-test``); in the full
development environment they are skipped.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
pytestmark = pytest.mark.skipif(importlib.util.find_spec("sklearn") is not None,
                                reason="needs a base-only install (make base-test)")


def _subnets(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "subnets", *args], capture_output=True, text=True)


def test_help_and_data_list_answer_without_the_extras() -> None:
    assert _subnets("--help").returncode == 0
    listed = _subnets("data", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "mnist" in {d["name"] for d in json.loads(listed.stdout)}


def test_the_lottery_runs_shows_and_reports(tmp_path: Path) -> None:
    store = str(tmp_path / "runs")
    done = _subnets("run", str(ROOT / "recipes" / "lth-mnist-lenet300-quick.toml"), "--store", store, "--quiet",
                    "--device", "cpu", "--set", "prune.levels=1", "--set", "train.length=30it",
                    "--set", "train.eval_every=30it")
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.split()[1]
    view = json.loads(_subnets("show", run_id, "--store", store, "--json").stdout)
    assert view["status"] == "done" and len(view["units"]) == len(view["levels"]) == 4
    assert _subnets("report", run_id, "--store", store).returncode == 0


@pytest.mark.parametrize("recipe, extra", [("boosting-tabular.toml", "tabular"), ("moefy-minilm.toml", "text"),
                                           ("pooling-embeddings.toml", "text")])
def test_a_kind_whose_extra_is_missing_names_it(recipe: str, extra: str, tmp_path: Path) -> None:
    done = _subnets("run", str(ROOT / "recipes" / recipe), "--store", str(tmp_path / "runs"))
    assert done.returncode == 2 and f"pip install 'subnets[{extra}]'" in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and not (tmp_path / "runs").exists()
