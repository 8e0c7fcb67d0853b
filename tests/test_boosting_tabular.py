"""The ``boosting-tabular`` experiment: its tables and folds, the end-to-end MLP and tree baselines, the run
through the command line (stored results, truncation curves, reproducibility, report, errors)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_invoke import invoke, run_recipe

from subnets import catalogue
from subnets.boosting import BoostedMLPClassifier
from subnets.boosting import experiments as boosting_experiments
from subnets.boosting.baselines import MLPSettings, TreeSettings, check_tree_packages, fit_mlp, fit_trees
from subnets.boosting.experiments import BoostingTabularConfig, BoostingTabularExperiment
from subnets.data.tables import Table, load_table, make_folds
from subnets.progress import Progress
from subnets.steps import MemoryStepStore

ROOT = Path(__file__).resolve().parents[1]
TINY = ['tables=["breast_cancer","diabetes"]', "folds=2", "boosted.n_stages=3", "boosted.stage_steps=20",
        "mlp.steps=200", "mlp.eval_every=50", "mlp.lbfgs_iterations=30", "trees.rounds=20"]


def _run(store: Path, overrides: list[str]) -> tuple[int, str, str]:
    return run_recipe(ROOT / "recipes" / "boosting-tabular.toml", store, overrides, "--threads", "1")


@pytest.mark.parametrize("name", ["breast_cancer", "diabetes"])
def test_folds_partition_the_rows_and_keep_fit_validation_and_test_apart(name: str) -> None:
    table = load_table(name)
    folds = make_folds(table, 5, seed=3, validation_fraction=0.1)
    tests = np.concatenate([f.test for f in folds])
    assert sorted(tests) == list(range(len(table.y)))  # every row is tested exactly once
    for fold in folds:
        parts = [set(fold.fit), set(fold.val), set(fold.test)]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert len(fold.fit) + len(fold.val) + len(fold.test) == len(table.y)
        assert len(fold.val) == pytest.approx(0.1 * (len(fold.fit) + len(fold.val)), abs=1)
    if table.task == "classification":  # stratified: each fold's test share of a class is near the overall
        overall = table.y.mean()
        assert all(abs(table.y[f.test].mean() - overall) < 0.02 for f in folds)
    again = make_folds(table, 5, seed=3, validation_fraction=0.1)
    assert all(np.array_equal(a.val, b.val) for a, b in zip(folds, again, strict=True))


def test_tables_record_their_source_and_checksum() -> None:
    table = load_table("friedman1_20k")
    assert table.x.shape == (20_000, 10) and table.task == "regression"
    assert table.source["sha256_xy"] == load_table("friedman1_20k").source["sha256_xy"]
    assert "make_friedman1" in table.source["source"]
    with pytest.raises(ValueError, match="unknown table 'iris'; known: breast_cancer"):
        load_table("iris")


def test_a_tensor_dataset_is_a_table_with_its_own_split() -> None:
    table = load_table("modular_addition")
    assert table.x.shape == (97 * 97, 2 * 97) and table.task == "classification" and table.classes == 97
    assert [len(table.split[s]) for s in ("fit", "val", "test")] == [4704, 2352, 2353]
    assert table.source["dataset_sha256"] and "mnist1d" in catalogue.table_names()
    with pytest.raises(ValueError, match="unknown table 'file'"):  # a dataset with a required option is not one
        load_table("file")


def test_a_fixed_split_is_repeated_and_its_trees_fitted_once(monkeypatch) -> None:
    table = load_table("wine")
    rows = np.random.default_rng(0).permutation(len(table.y))
    fixed = Table("wine", table.x, table.y, "classification", table.source,
                  {"fit": rows[:100], "val": rows[100:130], "test": rows[130:]})
    monkeypatch.setattr(boosting_experiments, "load_table", lambda name: fixed)
    config = BoostingTabularConfig(name="t", tables=["wine"], folds=3, methods=["mlp-adam", "lightgbm"])
    experiment = BoostingTabularExperiment(config, torch.device("cpu"))
    assert all(np.array_equal(f.test, rows[130:]) for f in experiment.folds["wine"])
    assert experiment.units() == [("wine/mlp-adam", 0), ("wine/lightgbm", 0), ("wine/mlp-adam", 1),
                                  ("wine/mlp-adam", 2)]


def _classification_data() -> tuple[np.ndarray, ...]:
    table = load_table("breast_cancer")
    fold = make_folds(table, 3, 0, 0.2)[0]
    return (table.x[fold.fit], table.y[fold.fit], table.x[fold.val], table.y[fold.val], table.x[fold.test],
            table.y[fold.test])


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "lbfgs"])
def test_end_to_end_mlp_keeps_its_best_validation_check_and_is_seeded(optimizer: str) -> None:
    x, y, x_val, y_val, x_test, y_test = _classification_data()
    settings = MLPSettings(width=16, steps=600, eval_every=50, lbfgs_iterations=60, lbfgs_eval_every=5, patience=3)
    model, facts, _ = fit_mlp(x, y, x_val, y_val, "classification", 2, optimizer, settings, seed=1)
    with torch.no_grad():
        val_loss = torch.nn.functional.cross_entropy(model(torch.tensor(x_val, dtype=torch.float32)),
                                                     torch.as_tensor(y_val))
        accuracy = (model(torch.tensor(x_test, dtype=torch.float32)).argmax(1).numpy() == y_test).mean()
    assert float(val_loss) == pytest.approx(facts["best_val_loss"], rel=1e-5)
    assert facts["best_step"] <= facts["steps_run"]
    assert accuracy > 0.9
    again, _, _ = fit_mlp(x, y, x_val, y_val, "classification", 2, optimizer, settings, seed=1)
    other, _, _ = fit_mlp(x, y, x_val, y_val, "classification", 2, optimizer, settings, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(),
                                                 strict=True))
    assert not torch.equal(model.hidden.weight, other.hidden.weight)


def test_switching_mlp_units_off_is_the_smaller_network() -> None:
    x, y, x_val, y_val, *_ = _classification_data()
    model, _, _ = fit_mlp(x, y, x_val, y_val, "classification", 2, "adam",
                          MLPSettings(width=12, steps=100, eval_every=50), seed=0)
    inputs = torch.tensor(x[:50], dtype=torch.float32)
    keep = model.unit_order()[:5]
    small = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    with torch.no_grad():
        small[0].weight.copy_(model.hidden.weight[keep])
        small[0].bias.copy_(model.hidden.bias[keep])
        small[2].weight.copy_(model.out.weight[:, keep])
        small[2].bias.copy_(model.out.bias)
        torch.testing.assert_close(model(inputs, keep), small((inputs - model.mean) / model.std))
        torch.testing.assert_close(model(inputs, torch.arange(12)), model(inputs))
    magnitude = (model.hidden.weight.norm(dim=1) * model.out.weight.norm(dim=0)).detach()
    assert torch.all(magnitude[model.unit_order()][:-1] >= magnitude[model.unit_order()][1:])


@pytest.mark.parametrize("method", ["lightgbm", "xgboost", "hist-gb"])
def test_tree_baselines_learn_and_stop_early(method: str) -> None:
    pytest.importorskip({"lightgbm": "lightgbm", "xgboost": "xgboost", "hist-gb": "sklearn"}[method])
    x, y, x_val, y_val, x_test, y_test = _classification_data()
    model, facts = fit_trees(method, x, y, x_val, y_val, "classification", TreeSettings(rounds=300, patience=5),
                             seed=0, threads=1)
    assert (model.predict(x_test) == y_test).mean() > 0.9
    assert 1 <= facts["rounds"] < 300  # breast_cancer needs far fewer rounds: early stopping stopped it


def test_a_missing_tree_package_names_what_to_install(monkeypatch) -> None:
    import importlib

    real = importlib.import_module

    def without_xgboost(name: str, *args, **kwargs):
        if name == "xgboost":
            raise ImportError("no xgboost")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", without_xgboost)
    with pytest.raises(ImportError, match="needs the package xgboost-cpu"):
        check_tree_packages(["boosted", "xgboost"])


def test_an_explicit_validation_set_is_the_one_early_stopping_watches() -> None:
    x, y, x_val, y_val, *_ = _classification_data()
    model = BoostedMLPClassifier(n_stages=6, units_per_stage=2, stage_steps=30,
                                 random_state=0).fit(x, y, eval_set=(x_val, y_val))
    assert len(model.validation_loss_) == 7
    p = model.predict_proba(x_val)[:, 1]
    manual = -np.mean(y_val * np.log(p) + (1 - y_val) * np.log(1 - p))
    assert model.validation_loss_[-1] == pytest.approx(manual, rel=1e-4)
    with pytest.raises(ValueError, match="either eval_set or validation_fraction"):
        BoostedMLPClassifier(validation_fraction=0.2).fit(x, y, eval_set=(x_val, y_val))
    with pytest.raises(ValueError, match="eval_set: y_val has classes not in y"):
        BoostedMLPClassifier(n_stages=1).fit(x, y, eval_set=(x_val, y_val + 5))


def test_minibatch_stages_are_seeded_and_learn() -> None:
    x, y, _, _, x_test, y_test = _classification_data()
    fit = lambda seed: BoostedMLPClassifier(n_stages=4, batch_size=32, stage_steps=40, random_state=seed).fit(x, y)  # noqa: E731
    first, again, other = fit(0), fit(0), fit(1)
    assert first.train_loss_ == again.train_loss_ and first.train_loss_ != other.train_loss_
    assert first.score(x_test, y_test) > 0.9
    with pytest.raises(ValueError, match="batch_size needs stage_optimizer='adam'"):
        BoostedMLPClassifier(batch_size=32, stage_optimizer="lbfgs").fit(x, y)


def test_the_step_bound_limits_how_far_one_stage_moves_a_separable_fit() -> None:
    x, y, *_ = _classification_data()
    losses = {bound: BoostedMLPClassifier(n_stages=1, learning_rate=1.0, max_step=bound, stage_steps=200,
                                          random_state=0).fit(x, y).train_loss_[1] for bound in (0.5, 100.0)}
    assert losses[100.0] < losses[0.5] / 5  # unbounded, the step runs far along a separating stage
    with pytest.raises(ValueError, match="max_step must be > 0"):
        BoostedMLPClassifier(max_step=0).fit(x, y)


def test_a_run_stores_every_unit_with_truncation_curves_reproducibly(tmp_path) -> None:
    code, stdout, stderr = _run(tmp_path / "a", TINY)
    assert code == 0, stderr
    run_id = stdout.split()[1]
    view = json.loads(invoke("show", run_id, "--store", str(tmp_path / "a"), "--json")[1])
    units = {f"{u['table']}/{u['method']}/{u['fold']}": u for u in view["units"]}
    methods = ["boosted", "mlp-adam", "mlp-sgd", "mlp-lbfgs", "lightgbm", "xgboost", "hist-gb"]
    assert set(units) == {f"{t}/{m}/{f}" for t in ("breast_cancer", "diabetes") for m in methods for f in (0, 1)}
    boosted = units["breast_cancer/boosted/0"]
    curve = boosted["truncation"]
    assert curve["units"] == [8 * t for t in range(boosted["stages"] + 1)]
    assert curve["score"][-1] == boosted["score"] == boosted["accuracy"]
    assert curve["score"][0] < 0.7  # no stage: the prior, the majority class
    mlp = units["diabetes/mlp-adam/1"]
    assert mlp["truncation"]["units"] == [0, 8, 16, 24]
    assert mlp["truncation"]["score"][-1] == pytest.approx(mlp["r2"]) == mlp["truncation"]["score_magnitude"][-1]
    assert mlp["rmse"] > 0 and units["breast_cancer/lightgbm/0"]["rounds"] >= 1
    # MACs per example of k hidden units: k * (features + outputs), whichever network they belong to
    assert curve["macs"] == [8 * t * (30 + 1) for t in range(boosted["stages"] + 1)]  # one logit for two classes
    assert mlp["truncation"]["macs"] == [k * (10 + 1) for k in (0, 8, 16, 24)]
    assert units["breast_cancer/boosted/0"]["rows"] == units["breast_cancer/hist-gb/0"]["rows"]

    code, stdout, _ = _run(tmp_path / "b", TINY)
    again = json.loads(invoke("show", stdout.split()[1], "--store", str(tmp_path / "b"), "--json")[1])
    for unit in again["units"]:
        key = f"{unit['table']}/{unit['method']}/{unit['fold']}"
        assert unit["score"] == units[key]["score"], key
        assert unit.get("truncation") == units[key].get("truncation"), key

    code, markdown, _ = invoke("show", run_id, "--store", str(tmp_path / "a"), "--markdown")
    assert code == 0 and "| diabetes | mlp-lbfgs | 2 |" in markdown and "reference" in markdown
    code, stdout, _ = invoke("report", run_id, "--store", str(tmp_path / "a"))
    report = tmp_path / "a" / "reports" / run_id
    assert code == 0 and (report / "truncation.png").stat().st_size > 10_000
    page = (report / "index.html").read_text()
    assert (report / "score_time.png").exists() and "Results per table and method" in page
    assert page.count("boosted (first stages)") == 2  # a truncation row per table


@pytest.mark.parametrize(("override", "message"), [
    ('tables=["iris"]', "tables: unknown table 'iris'; known: breast_cancer"),
    ('methods=["boosted","boosted"]', "methods: methods must be distinct"),
    ('methods=["catboost"]', "methods: unknown method 'catboost'"),
    ("folds=1", "folds: Input should be greater than or equal to 2"),
    ("boosted.units_per_stage=0", "boosted.units_per_stage: Input should be greater than or equal to 1"),
    ("trees.depth=3", "trees.depth: Extra inputs are not permitted"),
])
def test_a_bad_recipe_is_a_one_line_usage_error_and_writes_nothing(tmp_path, override: str, message: str) -> None:
    store = tmp_path / "store"
    code, _, stderr = _run(store, [*TINY, override])
    assert code == 2 and message in stderr and stderr.count("\n") == 1, stderr
    assert not store.exists()


class _Recorder(Progress):
    def __init__(self) -> None:
        self.started: dict[str, int] = {}
        self.advanced: dict[str, int] = {}
        self.finished: list[str] = []

    def start(self, key: str, total: int, description: str = "") -> None:
        self.started[key] = total

    def advance(self, key: str, steps: int = 1, **metrics: float) -> None:
        self.advanced[key] = self.advanced.get(key, 0) + steps

    def finish(self, key: str) -> None:
        self.finished.append(key)


def test_long_fits_report_progress_per_stage_check_and_round() -> None:
    recorder = _Recorder()
    config = BoostingTabularConfig(name="t", tables=["breast_cancer"], folds=2,
                                   methods=["boosted", "mlp-adam", "lightgbm", "xgboost"],
                                   boosted={"n_stages": 4, "stage_steps": 20}, mlp={"steps": 300, "eval_every": 50},
                                   trees={"rounds": 30})
    results = BoostingTabularExperiment(config, torch.device("cpu"), recorder).run(MemoryStepStore())

    def total(method: str, count) -> int:  # over both folds, which share the task's key
        return sum(count(r) for r in results if r["method"] == method)

    assert recorder.started["breast_cancer/boosted"] == 4
    assert recorder.advanced["breast_cancer/boosted"] == total("boosted", lambda r: len(r["validation_loss"]) - 1)
    assert recorder.started["breast_cancer/mlp-adam"] == 6
    assert recorder.advanced["breast_cancer/mlp-adam"] == total("mlp-adam", lambda r: r["steps_run"] // 50)
    for method in ("lightgbm", "xgboost"):  # every round run: those kept, and at most the patience more
        kept = total(method, lambda r: r["rounds"])
        assert kept <= recorder.advanced[f"breast_cancer/{method}"] <= kept + 2 * 20
    assert set(recorder.finished) >= {"breast_cancer/boosted", "breast_cancer/lightgbm", "boosting"}
