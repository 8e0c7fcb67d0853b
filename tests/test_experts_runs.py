"""The ``moe`` and ``moefy`` experiment kinds through the command line: stored results, resumption, reports,
and one-line errors for bad recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_invoke import invoke, run_recipe

ROOT = Path(__file__).resolve().parents[1]


MOE_TINY = ["seeds=[0]", "train.length=40it", "train.eval_every=20it", "train.batch_size=64",
            'variants=["dense-active","none","loss-free","balanced"]']
MOEFY_TINY = ["seeds=[0]", "train.length=150it", "train.eval_every=150it", 'moefy.layers=["fc2"]',
              "moefy.experts=[4]", 'moefy.methods=["weights"]', "moefy.samples=300", "moefy.router_steps=30"]


def _run(recipe: str, store: Path, overrides: list[str]) -> tuple[int, str, str]:
    return run_recipe(ROOT / "recipes" / recipe, store, overrides)


def test_moe_run_records_diagnostics_every_step_and_resumes(tmp_path) -> None:
    store = tmp_path / "runs"
    code, stdout, stderr = _run("moe-mnist.toml", store, MOE_TINY)
    assert code == 0, stderr
    run_id = stdout.split()[1]
    view = json.loads(invoke("show", run_id, "--store", str(store), "--json")[1])
    units = {u["variant"]: u for u in view["units"]}
    assert set(units) == {"dense-active", "none", "loss-free", "balanced"}
    assert "diagnostics" not in units["dense-active"]
    assert units["balanced"]["max_violation_end"] == 0.0  # balanced assignment: equal loads in every batch
    assert units["none"]["active_parameters"] < units["none"]["parameters"]
    assert abs(units["none"]["active_parameters"] - units["dense-active"]["active_parameters"]) < 0.02 * \
        units["dense-active"]["active_parameters"]
    assert sum(units["none"]["test_routing"]["load"]) == 2 * 10_000  # k = 2 choices per test image
    tensors = _diagnostics(store, run_id, "none/s0")
    assert tensors["per_step"].shape == (40, 4) and tensors["load"].shape == (40, 8)
    assert tensors["load"].sum(1).eq(64 * 2).all()  # every step's choices counted

    code, stdout, _ = _run("moe-mnist.toml", store, MOE_TINY)  # the same run: nothing trains again
    assert code == 0 and run_id in stdout
    code, stdout, _ = invoke("report", run_id, "--store", str(store))
    index = Path(stdout.split("report: ")[1].strip())
    assert (index.parent / "max_violation.png").is_file() and (index.parent / "test_load.png").is_file()
    assert "balanced" in invoke("show", run_id, "--store", str(store), "--markdown")[1]


def _diagnostics(store: Path, run_id: str, key: str) -> dict:
    from subnets.runs.store import Store

    found = Store(store).steps(run_id).get_step(key)
    assert found is not None
    return found[1]["diagnostics"]


def test_moefy_run_measures_accuracy_against_active_experts(tmp_path) -> None:
    store = tmp_path / "runs"
    code, stdout, stderr = _run("moefy-mnist.toml", store, MOEFY_TINY)
    assert code == 0, stderr
    run_id = stdout.split()[1]
    units = json.loads(invoke("show", run_id, "--store", str(store), "--json")[1])["units"]
    dense = next(u for u in units if u["step"] == "dense")
    split = next(u for u in units if u["step"] == "moefy")
    assert split["k"] == [1, 2, 3, 4] and split["all_active_agreement"] == 1.0
    for selection in ("router", "oracle", "random"):  # every expert active: the dense network exactly
        assert split["test_acc"][selection][-1] == dense["test_acc_final"]
    assert split["test_acc"]["router"][0] > split["test_acc"]["random"][0]
    lenet = 784 * 300 + 300 * 100 + 100 * 10  # every expert active: the dense network's MACs, no router
    assert split["macs"][-1] == lenet
    assert split["macs"][0] < split["macs"][1] < split["macs"][2] < lenet  # fc1, the router, the chosen experts
    assert (Path(invoke("report", run_id, "--store", str(store))[1].split("report: ")[1].strip()).parent
            / "accuracy_vs_active.png").is_file()


@pytest.mark.parametrize("recipe, overrides, message", [
    ("moe-mnist.toml", ["model.k=9"], "model: k (9) must not exceed experts (8)"),
    ("moe-mnist.toml", ["balancing.micro_batches=3"], "micro_batches (3) must divide train.batch_size (128)"),
    ("moe-mnist.toml", ['variants=["none","bogus"]'], "variants.1"),
    ("moe-mnist.toml", ["model.experts=0"], "model.experts"),
    ("moefy-mnist.toml", ['moefy.layers=["fc3"]'], "layer 'fc3' is not a feed-forward block of this model; "
                                                     "its blocks: fc1, fc2"),
    ("moefy-mnist.toml", ["moefy.experts=[400]"], "400 experts for layer 'fc1' with 300 neurons"),
])
def test_bad_recipes_are_one_line_errors(tmp_path, recipe: str, overrides: list[str], message: str) -> None:
    store = tmp_path / "store"
    code, _, stderr = _run(recipe, store, overrides)
    assert code == 2 and message in stderr and stderr.count("\n") == 1, stderr
    assert not store.exists()
