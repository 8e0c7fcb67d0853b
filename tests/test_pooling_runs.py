"""The ``pooling`` experiment through the command line (stored results, pairing, resumption, report, errors)
and the paired statistics it reports, checked by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_invoke import invoke, run_recipe
from scipy import stats

from subnets.stats import holm, paired_comparison

ROOT = Path(__file__).resolve().parents[1]
TINY = ["seeds=[0,1,2]", 'pools=["max","gem","stochastic"]', "train.length=40it", "train.eval_every=20it",
        "data.options.num_samples=600"]


def _run(store: Path, overrides: list[str], recipe: str = "pooling-mnist1d.toml") -> tuple[int, str, str]:
    return run_recipe(ROOT / "recipes" / recipe, store, overrides)


def _units(store: Path, run_id: str) -> dict[str, dict]:
    view = json.loads(invoke("show", run_id, "--store", str(store), "--json")[1])
    return {f"{u['pool']}/s{u['seed']}": u for u in view["units"]}


def test_pooling_run_stores_every_pool_and_seed_reproducibly_and_resumes(tmp_path) -> None:
    code, stdout, stderr = _run(tmp_path / "a", TINY)
    assert code == 0, stderr
    run_id = stdout.split()[1]
    units = _units(tmp_path / "a", run_id)
    assert set(units) == {f"{p}/s{s}" for p in ("max", "gem", "stochastic") for s in (0, 1, 2)}
    assert units["gem/s0"]["swapped"] == ["pool1", "pool2"]
    assert set(units["gem/s0"]["learned"]) == {"pool1.p", "pool2.p"}
    assert units["gem/s0"]["learned"]["pool1.p"] != [3.0]  # p was trained
    assert len({units[f"max/s{s}"]["test_acc"] for s in range(3)}) > 1  # seeds differ

    code, stdout, _ = _run(tmp_path / "b", TINY)  # another store: the same numbers, stochastic draws included
    assert code == 0
    again = _units(tmp_path / "b", stdout.split()[1])
    for key, unit in units.items():
        assert (again[key]["test_acc"], again[key]["learned"], again[key]["curve"]) == \
            (unit["test_acc"], unit["learned"], unit["curve"]), key

    code, stdout, _ = _run(tmp_path / "a", TINY)  # the same run: nothing trains again
    assert code == 0 and run_id in stdout
    markdown = invoke("show", run_id, "--store", str(tmp_path / "a"), "--markdown")[1]
    assert "p (paired t)" in markdown and markdown.splitlines()[2].startswith("| max |")  # baseline first
    index = Path(invoke("report", run_id, "--store", str(tmp_path / "a"))[1].split("report: ")[1].strip())
    assert all((index.parent / name).is_file() for name in ("accuracy.png", "differences.png", "curves.png"))


def test_runs_of_one_seed_start_from_the_same_weights_whatever_the_pool(tmp_path) -> None:
    from subnets.data import load_dataset
    from subnets.pooling.experiments import PoolingExperiment
    from subnets.runs.recipe import load_recipe

    config = load_recipe(ROOT / "recipes" / "pooling-mnist1d.toml", TINY)
    experiment = PoolingExperiment(config, load_dataset("mnist1d", num_samples=600), torch.device("cpu"))
    gem, _ = experiment.build("gem", 1)
    stochastic, _ = experiment.build("stochastic", 1)
    other_seed, _ = experiment.build("gem", 2)
    assert torch.equal(gem.conv1.weight, stochastic.conv1.weight) and torch.equal(gem.fc2.weight, stochastic.fc2.weight)
    assert not torch.equal(gem.conv1.weight, other_seed.conv1.weight)


@pytest.mark.parametrize("overrides, message", [
    (['pools=["max","median"]'], "unknown pool 'median'; known: avg, max"),
    (['pools=["gem","avg"]'], "baseline 'max' must be one of pools"),
    (['pools=["max","max"]'], "pools must be distinct"),
    (['model.name="mlp"'], "has no pooling layer"),
    (["pool_options.gem.q=2"], "pool_options.gem: pool 'gem'"),
    (["pool_options.group-gem.groups=5"], "channels (32) must be divisible by groups (5)"),
])
def test_bad_recipes_are_one_line_errors(tmp_path, overrides: list[str], message: str) -> None:
    store = tmp_path / "store"
    code, _, stderr = _run(store, TINY[2:] + overrides)
    assert code == 2 and message in stderr and stderr.count("\n") == 1, stderr
    assert not store.exists()


def test_paired_comparison_by_hand() -> None:
    method = {0: 0.91, 1: 0.93, 2: 0.90, 3: 0.95}
    baseline = {0: 0.90, 1: 0.90, 2: 0.91, 3: 0.92, 9: 0.5}  # seed 9 has no partner and is left out
    result = paired_comparison(method, baseline)
    diffs = [0.01, 0.03, -0.01, 0.03]
    mean = sum(diffs) / 4
    sd = (sum((d - mean) ** 2 for d in diffs) / 3) ** 0.5
    half = stats.t.ppf(0.975, 3) * sd / 2
    assert result["n"] == 4 and result["mean_diff"] == pytest.approx(mean)
    assert result["ci95"] == pytest.approx([mean - half, mean + half])
    t = mean / (sd / 2)
    assert result["p_t"] == pytest.approx(2 * stats.t.sf(abs(t), 3))
    assert (result["wins"], result["ties"], result["losses"]) == (3, 0, 1)
    assert result["p_wilcoxon"] == pytest.approx(stats.wilcoxon(diffs).pvalue)
    same = paired_comparison(baseline, baseline)
    assert same["mean_diff"] == 0 and same["p_t"] == 1.0 and same["p_wilcoxon"] is None


def test_holm_by_hand() -> None:
    # sorted 0.01, 0.02, 0.04 -> 3 x 0.01 = 0.03, 2 x 0.02 = 0.04, max(0.04, 1 x 0.04) = 0.04
    assert holm([0.04, 0.01, None, 0.02]) == pytest.approx([0.04, 0.03, None, 0.04])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])


def test_pooling_units_in_two_workers_equal_the_units_run_in_one_process(tmp_path) -> None:
    """``--workers 2`` runs each training in a worker with one thread: the same numbers as one process with one
    thread, bit for bit, and the store holds every unit once."""
    overrides = ["seeds=[0,1]", 'pools=["max","gem"]', "train.length=30it", "train.eval_every=15it",
                 "data.options.num_samples=600"]
    code, stdout, stderr = run_recipe(ROOT / "recipes" / "pooling-mnist1d.toml", tmp_path / "one", overrides,
                                      "--threads", "1")
    assert code == 0, stderr
    alone = _units(tmp_path / "one", stdout.split()[1])
    code, stdout, stderr = run_recipe(ROOT / "recipes" / "pooling-mnist1d.toml", tmp_path / "two", overrides,
                                      "--workers", "2", "--threads", "2")
    assert code == 0, stderr
    run_id = stdout.split()[1]
    workers = _units(tmp_path / "two", run_id)
    assert set(workers) == set(alone) and len(workers) == 4
    for key, unit in alone.items():
        assert (workers[key]["test_acc"], workers[key]["learned"], workers[key]["curve"]) == \
            (unit["test_acc"], unit["learned"], unit["curve"]), key
    from subnets.runs.store import Store

    log = Store(tmp_path / "two").log_lines(run_id)
    assert sum("test acc" in line for line in log) == 4
