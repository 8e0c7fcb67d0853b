"""The ``boosting-tabular`` experiment: the boosted MLP against the same MLP trained end to end (Adam, SGD, L-BFGS)
and against gradient-boosted trees (LightGBM, XGBoost, HistGradientBoosting), on tables split by
cross-validation (MNIST: its fixed split, repeated with different seeds).

Every method of a fold gets the same fit rows, stops early on the same validation rows and is scored on the same
test rows, so scores are paired by fold. The end-to-end MLPs have as many hidden units as the boosted MLP at full
length (``n_stages * units_per_stage``). Each step (``{table}/{method}/s{fold}``) also stores the truncation
curve of the MLPs: the test score with only the first ``k`` stages' units of the boosted MLP, and with as many
units of an end-to-end MLP kept, either the first by index (the hidden units of a dense layer are exchangeable,
so this is a random choice) or those of largest ``|w_in| * |w_out|``.

Tree ensembles without row or feature subsampling are deterministic given their data, so on a table with a
fixed split they are fitted once (fold 0), not once per repetition.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from subnets.boosting.baselines import (
    TREES,
    MLPSettings,
    TreeSettings,
    check_tree_packages,
    fit_mlp,
    fit_trees,
)
from subnets.boosting.estimators import BoostedMLPClassifier, BoostedMLPRegressor
from subnets.cost import measure
from subnets.data.tables import Fold, Table, load_table, make_folds
from subnets.progress import SILENT, Progress
from subnets.recipes.boosting import BOOSTED, MLPS, BoostingTabularConfig
from subnets.steps import StepStore, Tensors, Unit, UnitWorkers, derive_seed, run_units


def _score(table: Table, truth: np.ndarray, predicted: np.ndarray) -> float:
    """Accuracy, or R^2 for regression."""
    if table.task == "classification":
        return float((predicted == truth).mean())
    return float(1 - ((predicted - truth) ** 2).sum() / ((truth - truth.mean()) ** 2).sum())


def _metrics(table: Table, truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    score = _score(table, truth, predicted)
    if table.task == "classification":
        return {"score": score, "accuracy": score}
    return {"score": score, "r2": score, "rmse": float(np.sqrt(((predicted - truth) ** 2).mean()))}


class BoostingTabularExperiment:
    """The steps of one ``boosting-tabular`` recipe; the tables are loaded (and the tree packages checked) first."""

    def __init__(self, config: BoostingTabularConfig, device: torch.device, progress: Progress = SILENT,
                 workers: int = 1) -> None:
        check_tree_packages(config.methods)
        self.config, self.device, self.progress, self.workers = config, device, progress, workers
        self.tables = {name: load_table(name) for name in config.tables}
        self.folds = {name: make_folds(table, config.folds, config.seed, config.validation_fraction)
                      for name, table in self.tables.items()}
        self.source = {"tables": {name: table.source for name, table in self.tables.items()}}

    def units(self) -> list[tuple[str, int]]:
        """``(table/method, fold)`` in run order: fold by fold, so a partial run covers every table."""
        return [(f"{table}/{method}", fold) for fold in range(self.config.folds) for table in self.config.tables
                for method in self.config.methods
                if not (self.tables[table].split and method in TREES and fold > 0)]

    def run(self, steps: StepStore) -> list[dict[str, Any]]:
        """Run (or resume) every table, method and fold, each stored as one step."""
        workers = UnitWorkers(self.workers, partial(_unit, self.config, str(self.device))) if self.workers > 1 else None
        return run_units(steps, self.progress, "boosting", self.units(), self._fit,
                         lambda r: f"{'accuracy' if 'accuracy' in r else 'R2'} {r['score']:.4f}, "
                                   f"fit {r['fit_seconds']:.1f}s", workers)

    def _fit(self, variant: str, fold: int) -> tuple[dict[str, Any], dict[str, Tensors]]:
        name, method = variant.split("/")
        table, rows = self.tables[name], self.folds[name][fold]
        seed = derive_seed(self.config.seed, name, method, fold) % 2**31
        data = (table.x[rows.fit], table.y[rows.fit], table.x[rows.val], table.y[rows.val])
        if method == BOOSTED:
            result, tensors = self._boosted(table, rows, data, seed)
        elif method in MLPS:
            result, tensors = self._mlp(table, rows, data, method.removeprefix("mlp-"), seed)
        else:
            result, tensors = self._trees(table, rows, data, method, seed)
        return {"table": name, "method": method, "seed": fold, "fold": fold, "task": table.task,
                "resampling": "fixed split" if table.split else "cross-validation",
                "rows": {"fit": len(rows.fit), "val": len(rows.val), "test": len(rows.test)}, **result}, tensors

    def _boosted(self, table: Table, rows: Fold, data: tuple[np.ndarray, ...],
                 seed: int) -> tuple[dict[str, Any], dict[str, Tensors]]:
        settings = self.config.boosted
        key = f"{table.name}/{BOOSTED}"
        estimator = (BoostedMLPClassifier if table.task == "classification" else BoostedMLPRegressor)(
            **settings.model_dump(), validation_fraction=None, random_state=seed, device=str(self.device),
            stage_callback=lambda stage, train, val: self.progress.advance(key, 1, val_loss=val))
        self.progress.start(key, settings.n_stages, "boosted (stages, at most)")
        start = time.perf_counter()
        try:
            estimator.fit(data[0], data[1], eval_set=(data[2], data[3]))
        finally:
            self.progress.finish(key)
        seconds = time.perf_counter() - start
        x_test, y_test = table.x[rows.test], table.y[rows.test]
        start = time.perf_counter()
        predicted = estimator.predict(x_test)
        predict_seconds = time.perf_counter() - start
        units = settings.units_per_stage
        curve = [_score(table, y_test, estimator.predict(x_test, stages=t)) for t in range(estimator.n_stages_ + 1)]
        one = torch.tensor(x_test[:1], dtype=torch.float32, device=self.device)  # MACs are the same for every row
        macs = [measure(estimator.module, one, stages=t).macs for t in range(estimator.n_stages_ + 1)]
        return ({**_metrics(table, y_test, predicted), "fit_seconds": seconds, "predict_seconds": predict_seconds,
                 "hidden_units": estimator.n_stages_ * units, "stages": estimator.n_stages_,
                 "stage_seconds": estimator.stage_seconds_, "train_loss": estimator.train_loss_,
                 "validation_loss": estimator.validation_loss_,
                 "truncation": {"units": [t * units for t in range(len(curve))], "score": curve, "macs": macs}},
                {"final": {k: v.detach().cpu() for k, v in estimator.module.state_dict().items()}})

    def _mlp(self, table: Table, rows: Fold, data: tuple[np.ndarray, ...], optimizer: str,
             seed: int) -> tuple[dict[str, Any], dict[str, Tensors]]:
        boosted, settings = self.config.boosted, self.config.mlp
        width = boosted.n_stages * boosted.units_per_stage
        start = time.perf_counter()
        model, facts, (shift, scale) = fit_mlp(*data, table.task, table.classes, optimizer,  # type: ignore[arg-type]
                                               MLPSettings(width=width, **settings.model_dump()), seed, self.device,
                                               self.progress, f"{table.name}/mlp-{optimizer}")
        seconds = time.perf_counter() - start
        x_test = torch.tensor(table.x[rows.test], dtype=torch.float32, device=self.device)
        y_test = table.y[rows.test]

        def predict(keep: torch.Tensor | None = None) -> np.ndarray:
            with torch.no_grad():
                out = model(x_test, keep).cpu()
            return out.argmax(1).numpy() if table.task == "classification" else out[:, 0].double().numpy() * scale \
                + shift

        start = time.perf_counter()
        predicted = predict()
        predict_seconds = time.perf_counter() - start
        step = boosted.units_per_stage
        counts = list(range(0, width + 1, step))
        by_magnitude = model.unit_order()
        curve = [_score(table, y_test, predict(torch.arange(k, device=self.device))) for k in counts]
        magnitude = [_score(table, y_test, predict(by_magnitude[:k])) for k in counts]
        macs = [measure(model, x_test[:1], keep=torch.arange(k, device=self.device)).macs for k in counts]
        return ({**_metrics(table, y_test, predicted), "fit_seconds": seconds, "predict_seconds": predict_seconds,
                 "hidden_units": width, **facts,
                 "truncation": {"units": counts, "score": curve, "score_magnitude": magnitude, "macs": macs}},
                {"final": {k: v.detach().cpu() for k, v in model.state_dict().items()}})

    def _trees(self, table: Table, rows: Fold, data: tuple[np.ndarray, ...], method: str,
               seed: int) -> tuple[dict[str, Any], dict[str, Tensors]]:
        threads = torch.get_num_threads()
        with threadpool_limits(threads):
            start = time.perf_counter()
            model, facts = fit_trees(method, *data, table.task, TreeSettings(**self.config.trees.model_dump()), seed,
                                     threads, self.progress, f"{table.name}/{method}")
            seconds = time.perf_counter() - start
            start = time.perf_counter()
            predicted = np.asarray(model.predict(table.x[rows.test]))
            predict_seconds = time.perf_counter() - start
        return ({**_metrics(table, table.y[rows.test], predicted.reshape(-1)), "fit_seconds": seconds,
                 "predict_seconds": predict_seconds, **facts}, {})


def _unit(config: BoostingTabularConfig, device: str, progress: Progress) -> Unit:
    """The unit function of a worker process (see :class:`subnets.steps.UnitWorkers`): it loads the tables itself."""
    return BoostingTabularExperiment(config, torch.device(device), progress)._fit
