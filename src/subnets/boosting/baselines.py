"""What the boosted MLP is compared with: the same one-hidden-layer MLP trained end to end (Adam, SGD or L-BFGS),
and gradient-boosted trees (LightGBM, XGBoost, scikit-learn's HistGradientBoosting).

Every baseline gets the same fit rows and the same validation rows, and stops early on the validation loss: the
MLPs keep the weights of their best validation check, the trees the best number of rounds. LightGBM and XGBoost
are optional dependencies (the ``trees`` extra); a missing one is a clear error naming the package to install.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from subnets.boosting.estimators import mean_and_scale
from subnets.cost import Keep, RowCost
from subnets.data.tables import Task
from subnets.progress import SILENT, Progress
from subnets.recipes.boosting import MLP_OPTIMIZERS, TREES

_PACKAGES = {"lightgbm": ("lightgbm", "lightgbm"), "xgboost": ("xgboost", "xgboost-cpu")}


class HiddenLayerMLP(nn.Module):
    """``out(act(standardise(x) @ W1.T + b1))``: one hidden layer of ``width`` ReLU units; ``forward(x, keep)``
    uses only the hidden units ``keep`` (an index tensor; all when None), so units can be switched off."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, width: int, outputs: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.hidden = nn.Linear(len(mean), width)
        self.out = nn.Linear(width, outputs)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        z = (x - self.mean) / self.std
        if keep is None:
            return self.out(torch.relu(self.hidden(z)))
        h = torch.relu(z @ self.hidden.weight[keep].T + self.hidden.bias[keep])
        return h @ self.out.weight[:, keep].T + self.out.bias

    def forward_cost(self, inputs: tuple, kwargs: dict, output: torch.Tensor, kept: Keep) -> RowCost:
        """Per example, the hidden units this call kept (:mod:`subnets.cost`): their input and output weights as
        MACs, those and their biases plus the output bias as active parameters."""
        x, keep = inputs[0], kwargs.get("keep", inputs[1] if len(inputs) > 1 else None)
        units = torch.arange(self.hidden.out_features) if keep is None else keep.cpu()
        weights = int(kept(self.hidden.weight)[units].sum() + kept(self.out.weight)[:, units].sum())
        biases = int(kept(self.hidden.bias)[units].sum() + kept(self.out.bias).sum())
        return RowCost(torch.full((len(x),), weights, dtype=torch.int64),
                       torch.full((len(x),), weights + biases, dtype=torch.float64))

    def unit_order(self) -> torch.Tensor:
        """Hidden units from most to least important by magnitude: ``|w_in| * |w_out|`` (L2 norms)."""
        with torch.no_grad():
            score = self.hidden.weight.norm(dim=1) * self.out.weight.norm(dim=0)
        return torch.argsort(score, descending=True, stable=True)


@dataclass(frozen=True)
class MLPSettings:
    """How the end-to-end MLPs train: Adam/SGD take ``steps`` minibatch steps of ``batch_size`` rows, checking
    the validation loss every ``eval_every`` steps; L-BFGS takes ``lbfgs_iterations`` iterations on the full batch,
    checking every ``lbfgs_eval_every`` (it overfits a small table within a few dozen). Training stops after
    ``patience`` checks without improvement and keeps the best check's weights."""

    width: int
    steps: int = 4000
    batch_size: int = 128
    adam_lr: float = 1e-3
    sgd_lr: float = 0.01
    momentum: float = 0.9
    eval_every: int = 100
    lbfgs_iterations: int = 500
    lbfgs_eval_every: int = 10
    patience: int = 10


def _loss(task: Task, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y) if task == "classification" else F.mse_loss(out, y)


def fit_mlp(x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, task: Task, classes: int,
            optimizer: Literal["adam", "sgd", "lbfgs"], settings: MLPSettings, seed: int,
            device: torch.device | str = "cpu", progress: Progress = SILENT,
            key: str = "mlp") -> tuple[HiddenLayerMLP, dict[str, Any], tuple[float, float]]:
    """An MLP trained end to end on ``device`` with early stopping; returns it, facts about the training (steps
    run, best step), and the target ``(shift, scale)`` of regression (outputs are standardised targets).
    ``progress`` advances task ``key`` at each validation check."""
    if optimizer not in MLP_OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(MLP_OPTIMIZERS)}, got {optimizer!r}")
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.tensor(x, dtype=torch.float32, device=device)
    val_inputs = torch.tensor(x_val, dtype=torch.float32, device=device)
    shift, scale = (0.0, 1.0) if task == "classification" else (float(y.mean()), float(y.std()) or 1.0)
    if task == "classification":
        target = torch.as_tensor(y, dtype=torch.long, device=device)
        val_target = torch.as_tensor(y_val, dtype=torch.long, device=device)
    else:
        target = torch.tensor((y - shift) / scale, dtype=torch.float32, device=device)[:, None]
        val_target = torch.tensor((y_val - shift) / scale, dtype=torch.float32, device=device)[:, None]
    with torch.random.fork_rng(devices=[]):  # the initial weights come from the seed, torch's state is kept
        torch.manual_seed(seed)
        model = HiddenLayerMLP(*mean_and_scale(inputs.cpu()), settings.width,
                               classes if task == "classification" else 1).to(device)
    if optimizer == "lbfgs":
        chosen: torch.optim.Optimizer = torch.optim.LBFGS(model.parameters(), lr=1.0,
                                                          max_iter=settings.lbfgs_eval_every, history_size=20,
                                                          line_search_fn="strong_wolfe")
    elif optimizer == "adam":
        chosen = torch.optim.Adam(model.parameters(), lr=settings.adam_lr)
    else:
        chosen = torch.optim.SGD(model.parameters(), lr=settings.sgd_lr, momentum=settings.momentum)
    n = len(inputs)
    order, position = torch.randperm(n, generator=generator), 0
    best, best_step, best_state, since, step = float("inf"), 0, copy.deepcopy(model.state_dict()), 0, 0
    limit = settings.lbfgs_iterations if optimizer == "lbfgs" else settings.steps
    every = settings.lbfgs_eval_every if optimizer == "lbfgs" else settings.eval_every
    progress.start(key, -(-limit // every), f"mlp-{optimizer} (validation checks)")
    while step < limit and since < settings.patience:
        model.train()
        if optimizer == "lbfgs":
            def closure() -> torch.Tensor:
                chosen.zero_grad()
                value = _loss(task, model(inputs), target)
                value.backward()
                return value

            chosen.step(closure)
            step += settings.lbfgs_eval_every
        else:
            for _ in range(settings.eval_every):
                if position + settings.batch_size > n:
                    order, position = torch.randperm(n, generator=generator), 0
                batch = order[position:position + settings.batch_size]
                position += settings.batch_size
                chosen.zero_grad()
                _loss(task, model(inputs[batch]), target[batch]).backward()
                chosen.step()
            step += settings.eval_every
        with torch.no_grad():
            value = float(_loss(task, model(val_inputs), val_target))
        if value < best:
            best, best_step, best_state, since = value, step, copy.deepcopy(model.state_dict()), 0
        else:
            since += 1
        progress.advance(key, 1, val_loss=value)
    progress.finish(key)
    model.load_state_dict(best_state)
    model.eval()
    return model, {"steps_run": step, "best_step": best_step, "best_val_loss": best}, (shift, scale)


@dataclass(frozen=True)
class TreeSettings:
    """Gradient-boosted trees: at most ``rounds`` rounds of ``learning_rate``, leaves per tree ``leaves``,
    stopping after ``patience`` rounds without a better validation loss."""

    rounds: int = 1000
    learning_rate: float = 0.1
    leaves: int = 31
    patience: int = 20


def _package(method: str) -> Any:
    module, package = _PACKAGES[method]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"method {method!r} needs the package {package} (pip install {package}, or the project's "
                          "'trees' extra)") from None


def check_tree_packages(methods: list[str]) -> None:
    """Raise ImportError naming the package a tree method in ``methods`` needs and is missing."""
    for method in methods:
        if method in _PACKAGES:
            _package(method)


def fit_trees(method: str, x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, task: Task,
              settings: TreeSettings, seed: int, threads: int, progress: Progress = SILENT,
              key: str = "trees") -> tuple[Any, dict[str, Any]]:
    """A fitted tree ensemble (scikit-learn API: ``predict``, ``predict_proba``) and its rounds kept.
    ``progress`` advances task ``key`` each round (LightGBM, XGBoost; HistGradientBoosting reports none)."""
    progress.start(key, settings.rounds, f"{method} (rounds, at most)")
    try:
        return _fit_trees(method, x, y, x_val, y_val, task, settings, seed, threads, lambda: progress.advance(key))
    finally:
        progress.finish(key)


def _fit_trees(method: str, x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, task: Task,
               settings: TreeSettings, seed: int, threads: int, tick: Callable[[], None]) -> tuple[Any, dict[str, Any]]:
    classification = task == "classification"
    if method == "lightgbm":
        lightgbm = _package(method)
        model = (lightgbm.LGBMClassifier if classification else lightgbm.LGBMRegressor)(
            n_estimators=settings.rounds, learning_rate=settings.learning_rate, num_leaves=settings.leaves,
            random_state=seed, n_jobs=threads, verbose=-1)
        model.fit(x, y, eval_X=(x_val,), eval_y=(y_val,),
                  callbacks=[lightgbm.early_stopping(settings.patience, verbose=False), lambda _: tick()])
        return model, {"rounds": int(model.best_iteration_ or settings.rounds)}
    if method == "xgboost":
        xgboost = _package(method)
        model = (xgboost.XGBClassifier if classification else xgboost.XGBRegressor)(
            n_estimators=settings.rounds, learning_rate=settings.learning_rate, max_leaves=settings.leaves,
            grow_policy="lossguide", max_depth=0, tree_method="hist", random_state=seed, n_jobs=threads,
            early_stopping_rounds=settings.patience, callbacks=[_xgboost_ticks(xgboost, tick)])
        model.fit(x, y, eval_set=[(x_val, y_val)], verbose=False)
        return model, {"rounds": int(model.best_iteration) + 1}
    if method == "hist-gb":
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        model = (HistGradientBoostingClassifier if classification else HistGradientBoostingRegressor)(
            max_iter=settings.rounds, learning_rate=settings.learning_rate, max_leaf_nodes=settings.leaves,
            early_stopping=True, n_iter_no_change=settings.patience, random_state=seed)
        model.fit(x, y, X_val=x_val, y_val=y_val)
        return model, {"rounds": int(model.n_iter_)}
    raise ValueError(f"unknown tree method {method!r}; known: {', '.join(TREES)}")


def _xgboost_ticks(xgboost: Any, tick: Callable[[], None]) -> Any:
    """An XGBoost training callback that calls ``tick()`` after each round."""

    class Ticks(xgboost.callback.TrainingCallback):
        def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
            tick()
            return False

    return Ticks()
