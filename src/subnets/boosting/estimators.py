"""Boosted MLPs (Emami & Martinez-Munoz, "Sequential Training of Neural Networks with Gradient Boosting"):
one hidden layer grown in stages of ``units_per_stage`` units, each stage fitted to the pseudo-residuals of the
network so far, scaled by a line search and the shrinkage, then frozen.

After ``fit``, ``model.module`` is one ordinary ``nn.Module`` with ``n_stages * units_per_stage`` hidden units
(inputs standardised inside it); ``predict(X, stages=t)`` uses only the units of the first ``t`` stages, so one
fitted model serves several compute budgets. The estimators follow scikit-learn's conventions (``fit``,
``predict``, ``predict_proba``, ``score``, ``get_params``/``set_params``).

Every random draw of a fit (initial weights, validation split, subsamples, minibatch order) comes from the
estimator's own ``torch.Generator`` seeded from ``random_state``, never from torch's global generator, so fits
running at once in threads (joblib's threading backend) give the same results as alone. ``random_state``: an int
reproduces the fit, None draws fresh entropy (every fit differs), a ``numpy.random.RandomState`` or ``Generator``
is drawn from (so refitting with the same instance differs). Randomness inside a trained ``feature_extractor``
(e.g. dropout) is the extractor's own and draws from torch's global generator, which ``fit`` neither seeds nor
restores.
"""

from __future__ import annotations

import copy
import math
import numbers
import secrets
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from subnets.boosting.losses import BinaryLogLoss, MultinomialDeviance, SquaredError
from subnets.cost import Keep, RowCost, measure

_ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh}


def mean_and_scale(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Column means and population stds of ``x`` ``(n, d)``; a constant column's scale is 1 (left unscaled)."""
    mean, std = x.mean(0), x.std(0, unbiased=False)
    return mean, torch.where(std > 0, std, torch.ones_like(std))


def torch_generator(random_state: Any) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``random_state`` the scikit-learn way: an int is the seed, None is
    fresh entropy, a ``numpy.random.RandomState`` or ``Generator`` is drawn from (its state moves on)."""
    if random_state is None:
        seed = secrets.randbits(63)
    elif isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        seed = int(random_state)
    elif isinstance(random_state, np.random.RandomState):
        seed = int(random_state.randint(0, 2**63 - 1, dtype=np.int64))
    elif isinstance(random_state, np.random.Generator):
        seed = int(random_state.integers(0, 2**63 - 1))
    else:
        raise ValueError(f"random_state must be None, an int, a numpy.random.RandomState or a numpy.random.Generator, "
                         f"got {random_state!r}")
    try:
        return torch.Generator().manual_seed(seed)
    except RuntimeError as error:
        raise ValueError(f"random_state {random_state!r} is not a valid seed: {error}") from None


def _linear(fan_in: int, fan_out: int, generator: torch.Generator, device: torch.device) -> nn.Linear:
    """``nn.Linear(fan_in, fan_out)`` initialised as torch does by default (weights kaiming-uniform with
    ``a=sqrt(5)`` and biases, both uniform in ``+-1/sqrt(fan_in)``), drawn on the CPU from ``generator``, then moved
    to ``device``: torch's global generator is not touched."""
    layer = torch.nn.utils.skip_init(nn.Linear, fan_in, fan_out)
    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    with torch.no_grad():
        torch.nn.init.uniform_(layer.weight, -bound, bound, generator=generator)
        torch.nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
    return layer.to(device)


def _extract(extractor: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    """The features the stages see: ``extractor(x)`` in evaluation mode without gradients (``x`` without one)."""
    if extractor is None:
        return x
    extractor.eval()
    with torch.no_grad():
        features = extractor(x)
    if features.dim() != 2 or len(features) != len(x):
        raise ValueError(f"feature_extractor must map (n, d) inputs to (n, features), got {tuple(features.shape)} "
                         f"for {tuple(x.shape)}")
    return features


def _caster(dtype: torch.dtype | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Tensors to ``dtype`` (unchanged when None)."""
    return (lambda tensor: tensor) if dtype is None else (lambda tensor: tensor.to(dtype))


class BoostedNet(nn.Module):
    """``out_bias + sum(stage_bias) + act(standardise(x) @ hidden_weight.T + hidden_bias) @ out_weight.T`` whose
    hidden units come in stages of ``units`` each; stage ``s`` adds ``units`` hidden units and ``stage_bias[s]``.
    ``forward(x, stages=t)`` is exactly the boosted model after ``t`` stages, and ``subnets.cost.measure(net, x,
    stages=t)`` its cost."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, bias: torch.Tensor, units: int,
                 activation: str, extractor: nn.Module | None = None) -> None:
        super().__init__()
        self.extractor = extractor
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.hidden_weight = nn.Parameter(mean.new_zeros(0, len(mean)))
        self.hidden_bias = nn.Parameter(mean.new_zeros(0))
        self.out_weight = nn.Parameter(mean.new_zeros(len(bias), 0))
        self.out_bias = nn.Parameter(bias.clone())
        self.stage_bias = nn.Parameter(mean.new_zeros(0, len(bias)))
        self.units, self.activation = units, activation

    @property
    def stages(self) -> int:
        """The number of stages added so far."""
        return len(self.hidden_bias) // self.units

    def features(self, x: torch.Tensor, units: int | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The first ``units`` hidden activations (all when None), computed in ``dtype`` (the parameters' when None;
        the extractor runs as it is)."""
        m = len(self.hidden_bias) if units is None else units
        if self.extractor is not None:
            x = self.extractor(x)
        cast = _caster(dtype)
        z = (cast(x) - cast(self.mean)) / cast(self.std)
        return _ACTIVATIONS[self.activation](z @ cast(self.hidden_weight[:m]).T + cast(self.hidden_bias[:m]))

    def forward(self, x: torch.Tensor, stages: int | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        t = self.stages if stages is None else stages
        m = t * self.units
        cast = _caster(dtype)
        return (self.features(x, m, dtype) @ cast(self.out_weight[:, :m]).T + cast(self.out_bias)
                + cast(self.stage_bias[:t]).sum(0))

    def forward_cost(self, inputs: tuple, kwargs: dict, output: torch.Tensor, kept: Keep) -> RowCost:
        """Per example, the stages this call used (:mod:`subnets.cost`): their hidden and output products and
        parameters, the output bias, and the extractor's cost, measured on the same inputs."""
        x, stages = inputs[0], kwargs.get("stages", inputs[1] if len(inputs) > 1 else None)
        t = self.stages if stages is None else stages
        m = t * self.units
        weights = int(kept(self.hidden_weight)[:m].sum() + kept(self.out_weight)[:, :m].sum())
        biases = int(kept(self.hidden_bias)[:m].sum() + kept(self.out_bias).sum() + kept(self.stage_bias)[:t].sum())
        macs = torch.full((len(x),), weights, dtype=torch.int64)
        active = torch.full((len(x),), weights + biases, dtype=torch.float64)
        if self.extractor is not None:
            extractor = measure(self.extractor, x, {name: kept(p) for name, p in self.extractor.named_parameters()})
            macs, active = macs + extractor.macs_per_example, active + extractor.active_per_example
        return RowCost(macs, active)

    @torch.no_grad()
    def add_stage(self, weight: torch.Tensor, bias: torch.Tensor, out_weight: torch.Tensor,
                  out_bias: torch.Tensor) -> None:
        """Append one stage's units (``weight`` ``(J, d)``, ``bias`` ``(J,)``) with their output weights
        ``(K, J)`` and its share ``out_bias`` ``(K,)`` of the output bias."""
        self.hidden_weight = nn.Parameter(torch.cat([self.hidden_weight, weight]))
        self.hidden_bias = nn.Parameter(torch.cat([self.hidden_bias, bias]))
        self.out_weight = nn.Parameter(torch.cat([self.out_weight, out_weight], 1))
        self.stage_bias = nn.Parameter(torch.cat([self.stage_bias, out_bias[None]]))

    @torch.no_grad()
    def truncate(self, stages: int) -> None:
        """Keep the first ``stages`` stages."""
        m = stages * self.units
        self.hidden_weight = nn.Parameter(self.hidden_weight[:m].clone())
        self.hidden_bias = nn.Parameter(self.hidden_bias[:m].clone())
        self.out_weight = nn.Parameter(self.out_weight[:, :m].clone())
        self.stage_bias = nn.Parameter(self.stage_bias[:stages].clone())


class _BoostedMLP(BaseEstimator):
    """The boosting loop shared by the regressor and the classifier. ``stage_callback(stage, train_loss,
    validation_loss)``, if given, is called after each stage (``validation_loss`` is None without a validation
    set), e.g. to draw a progress bar."""

    def __init__(self, n_stages: int = 20, units_per_stage: int = 8, learning_rate: float = 0.5,
                 stage_optimizer: Literal["adam", "lbfgs"] = "adam", stage_steps: int = 200,
                 stage_lr: float = 0.01, batch_size: int | None = None, subsample: float = 1.0,
                 activation: Literal["relu", "tanh"] = "relu",
                 line_search: bool = True, max_step: float = 10.0, validation_fraction: float | None = None,
                 n_iter_no_change: int | None = None,
                 random_state: int | np.random.RandomState | np.random.Generator | None = None,
                 feature_extractor: nn.Module | None = None, train_extractor: bool = False,
                 device: str = "cpu", stage_callback: Callable[[int, float, float | None], None] | None = None
                 ) -> None:
        self.n_stages = n_stages
        self.units_per_stage = units_per_stage
        self.learning_rate = learning_rate
        self.stage_optimizer = stage_optimizer
        self.stage_steps = stage_steps
        self.stage_lr = stage_lr
        self.batch_size = batch_size
        self.subsample = subsample
        self.activation = activation
        self.line_search = line_search
        self.max_step = max_step
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.random_state = random_state
        self.feature_extractor = feature_extractor
        self.train_extractor = train_extractor
        self.device = device
        self.stage_callback = stage_callback

    @property
    def module(self) -> BoostedNet:
        """The fitted network (``n_stages_ * units_per_stage`` hidden units)."""
        check_is_fitted(self, "module_")
        return self.module_

    def _check_params(self) -> None:
        for name in ("n_stages", "units_per_stage", "stage_steps", "batch_size"):
            value, optional = getattr(self, name), name == "batch_size"
            if value is None and optional:
                continue
            if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1{' or None' if optional else ''}, got {value!r}")
        if self.batch_size is not None and self.stage_optimizer == "lbfgs":
            raise ValueError("batch_size needs stage_optimizer='adam' (L-BFGS fits each stage on the full batch)")
        if not self.max_step > 0:
            raise ValueError(f"max_step must be > 0, got {self.max_step!r}")
        if not self.learning_rate > 0 or not self.stage_lr > 0:
            raise ValueError(f"learning_rate and stage_lr must be > 0, got {self.learning_rate!r}, "
                             f"{self.stage_lr!r}")
        if not 0 < self.subsample <= 1:
            raise ValueError(f"subsample must be in (0, 1], got {self.subsample!r}")
        if self.stage_optimizer not in ("adam", "lbfgs"):
            raise ValueError(f"stage_optimizer must be 'adam' or 'lbfgs', got {self.stage_optimizer!r}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(_ACTIVATIONS)}, got {self.activation!r}")
        if self.validation_fraction is not None and not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1) or None, got {self.validation_fraction!r}")

    def _boost(self, x: np.ndarray, y: torch.Tensor, loss: Any, scale: torch.Tensor, shift: torch.Tensor,
               held_out: tuple[np.ndarray, torch.Tensor] | None = None) -> None:
        """Fit ``self.module_`` to ``y`` (``(n, K)`` in the loss's space; outputs are ``shift + scale * F``);
        ``held_out`` is a validation set given to ``fit`` (``eval_set``), in the same spaces."""
        inputs = torch.tensor(x, dtype=torch.float32)
        if held_out is not None:
            if self.validation_fraction is not None:
                raise ValueError("give either eval_set or validation_fraction, not both")
            inputs, y = torch.cat([inputs, torch.tensor(held_out[0], dtype=torch.float32)]), torch.cat([y, held_out[1]])
        device = self._torch_device()
        generator = torch_generator(self.random_state)
        self._boost_seeded(inputs.to(device), y.to(device), loss, scale.to(device), shift.to(device), generator,
                           0 if held_out is None else len(held_out[1]))

    def _boost_seeded(self, x: torch.Tensor, y: torch.Tensor, loss: Any, scale: torch.Tensor, shift: torch.Tensor,
                      generator: torch.Generator, held_out: int) -> None:
        """The boosting loop; the last ``held_out`` rows of ``x`` and ``y`` are the validation set (when 0,
        ``validation_fraction`` of the rows are drawn for it). Every draw comes from ``generator`` (on the CPU)."""
        n = len(x) - held_out
        order = torch.randperm(n, generator=generator).to(x.device)
        n_val = int(round(n * self.validation_fraction)) if self.validation_fraction else 0
        if self.validation_fraction and not 0 < n_val < n:
            raise ValueError(f"validation_fraction={self.validation_fraction} leaves no training or validation "
                             f"rows of {n}")
        val, train = order[:n_val], order[n_val:]
        if held_out:
            val, train, n_val = (torch.arange(n, n + held_out, device=x.device), torch.arange(n, device=x.device),
                                 held_out)
        extractor = None if self.feature_extractor is None else copy.deepcopy(self.feature_extractor).to(x.device)
        features = _extract(extractor, x)
        y_train = y[train]
        mean, std = mean_and_scale(features[train])
        init = loss.init(y_train)
        self.module_ = BoostedNet(mean, std, shift + scale * init, self.units_per_stage, self.activation, extractor)
        f_train = init.expand(len(train), -1).clone()
        f_val = init.expand(n_val, -1).clone()
        z_train, z_val = (features[train] - mean) / std, (features[val] - mean) / std
        self.train_loss_ = [float(loss.loss(y_train, f_train))]
        self.validation_loss_ = [float(loss.loss(y[val], f_val))] if n_val else []
        best, since_best = 0, 0
        self.stage_seconds_ = []
        for _ in range(self.n_stages):
            start = time.perf_counter()
            residual = loss.residuals(y_train, f_train)
            rows = (torch.randperm(len(train), generator=generator)[:max(1, math.ceil(self.subsample * len(train)))]
                    .to(x.device) if self.subsample < 1 else slice(None))
            if extractor is not None and self.train_extractor and not self.module_.stages:
                # The extractor trains with the first stage only, then stays fixed: later stages fit residuals
                # of features that no longer move.
                x_rows = x[train][rows]
                extractor.train()
                stage = self._fit_stage(lambda batch, x_rows=x_rows: (extractor(x_rows[batch]) - mean) / std,
                                        residual[rows], y.shape[1], list(extractor.parameters()), generator)
                features = _extract(extractor, x)
                z_train, z_val = (features[train] - mean) / std, (features[val] - mean) / std
            else:
                z_rows = z_train[rows]
                stage = self._fit_stage(lambda batch, z_rows=z_rows: z_rows[batch], residual[rows], y.shape[1], [],
                                        generator)
            with torch.no_grad():
                h_train, h_val = stage(z_train), stage(z_val)
            step = self._step(loss, y_train, f_train, h_train) * self.learning_rate
            f_train += step * h_train
            f_val += step * h_val
            first, act, last = stage
            self.module_.add_stage(first.weight.detach(), first.bias.detach(),
                                   scale[:, None] * step * last.weight.detach(), scale * step * last.bias.detach())
            self.train_loss_.append(float(loss.loss(y_train, f_train)))
            self.stage_seconds_.append(time.perf_counter() - start)
            if n_val:
                self.validation_loss_.append(float(loss.loss(y[val], f_val)))
                if self.validation_loss_[-1] < self.validation_loss_[best]:
                    best, since_best = len(self.validation_loss_) - 1, 0
                else:
                    since_best += 1
            if self.stage_callback is not None:
                self.stage_callback(len(self.train_loss_) - 1, self.train_loss_[-1],
                                    self.validation_loss_[-1] if n_val else None)
            if n_val and self.n_iter_no_change is not None and since_best >= self.n_iter_no_change:
                break
        if n_val and self.n_iter_no_change is not None:
            self.module_.truncate(best)
        self.n_stages_ = self.module_.stages

    def _fit_stage(self, inputs: Callable[[Any], torch.Tensor], residual: torch.Tensor, outputs: int,
                   extra: list[nn.Parameter], generator: torch.Generator) -> nn.Sequential:
        """J new units and their output weights fitted to ``residual`` by least squares on ``inputs(rows)``
        (full batch, or Adam on minibatches of ``batch_size`` rows drawn without replacement, epoch by epoch);
        the ``extra`` parameters (a feature extractor's) train with them. The initial weights and the minibatch
        order are drawn from ``generator``."""
        with torch.no_grad():
            width = inputs(slice(0, 1)).shape[1]
        device = residual.device
        stage = nn.Sequential(_linear(width, self.units_per_stage, generator, device),
                              nn.ReLU() if self.activation == "relu" else nn.Tanh(),
                              _linear(self.units_per_stage, outputs, generator, device))
        parameters = [*stage.parameters(), *extra]

        def objective(batch: Any = slice(None)) -> torch.Tensor:
            return (stage(inputs(batch)) - residual[batch]).pow(2).sum(1).mean()

        if self.stage_optimizer == "lbfgs":
            optimizer = torch.optim.LBFGS(parameters, lr=1.0, max_iter=self.stage_steps,
                                          line_search_fn="strong_wolfe")

            def closure() -> torch.Tensor:
                optimizer.zero_grad()
                value = objective()
                value.backward()
                return value

            optimizer.step(closure)
        else:
            optimizer = torch.optim.Adam(parameters, lr=self.stage_lr)
            n, size = len(residual), self.batch_size
            batched = size is not None and size < n
            order, position = (torch.randperm(n, generator=generator).to(device) if batched else None), 0
            for _ in range(self.stage_steps):
                batch: Any = slice(None)
                if batched:
                    if position + size > n:
                        order, position = torch.randperm(n, generator=generator).to(device), 0
                    batch, position = order[position:position + size], position + size
                optimizer.zero_grad()
                objective(batch).backward()
                optimizer.step()
        return stage

    def _step(self, loss: Any, y: torch.Tensor, f: torch.Tensor, h: torch.Tensor) -> float:
        """The multiplier in ``[0, max_step]`` of the new stage's output that minimises the training loss (1 without
        line search). The bound matters for classification: on separable training rows the loss keeps falling as
        the multiplier grows, and an unbounded step makes the model overconfident after one stage."""
        if not self.line_search:
            return 1.0
        if isinstance(loss, SquaredError):  # closed form: <r, h> / <h, h>
            denominator = float(h.pow(2).sum())
            step = float((loss.residuals(y, f) * h).sum()) / denominator if denominator > 0 else 0.0
            return min(max(step, 0.0), self.max_step)
        result = minimize_scalar(lambda rho: float(loss.loss(y, f + rho * h)), bounds=(0.0, self.max_step),
                                 method="bounded", options={"xatol": 1e-4})
        return float(result.x)

    def _torch_device(self) -> torch.device:
        """``device`` as a torch device: ``"auto"`` is CUDA when there is one; CUDA without one is an error."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {self.device!r}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' but no CUDA device is available (use 'auto' or 'cpu')")
        return device

    def _check_eval_set(self, eval_set: Any, **options: Any) -> tuple[np.ndarray, np.ndarray]:
        """``eval_set`` validated like the training data (same number of features, finite, equal lengths)."""
        if not isinstance(eval_set, tuple | list) or len(eval_set) != 2:
            raise ValueError("eval_set must be a pair (X_val, y_val)")
        x_val, y_val = validate_data(self, *eval_set, reset=False, dtype=np.float64, **options)
        return x_val, y_val

    def _raw(self, X: Any, stages: int | None) -> torch.Tensor:
        check_is_fitted(self, "module_")
        x = validate_data(self, X, reset=False)
        if stages is not None and (not isinstance(stages, int | np.integer) or not 0 <= stages <= self.n_stages_):
            raise ValueError(f"stages must be an int in [0, {self.n_stages_}], got {stages!r}")
        # The stages run in float64: float32 matrix products round differently with the number of rows, so a row's
        # prediction would depend on the rows predicted with it (scikit-learn checks it does not).
        with torch.no_grad():
            return self.module_(torch.tensor(x, dtype=torch.float32, device=self.module_.mean.device), stages,
                                dtype=torch.float64).cpu()


def _as_float_targets(y: np.ndarray) -> torch.Tensor:
    """Regression targets ``(n,)`` or ``(n, K)`` as a float32 tensor ``(n, K)`` (a copy)."""
    return torch.tensor(np.asarray(y, dtype=np.float64).reshape(len(y), -1), dtype=torch.float32)


class BoostedMLPRegressor(RegressorMixin, _BoostedMLP):
    """A boosted MLP for regression with the squared error; targets are standardised while fitting."""

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def fit(self, X: Any, y: Any, eval_set: tuple[Any, Any] | None = None) -> BoostedMLPRegressor:
        """Grow the network stage by stage on ``X`` ``(n, d)``, ``y`` ``(n,)`` or ``(n, K)``; ``eval_set``
        ``(X_val, y_val)`` is the validation set of early stopping (instead of ``validation_fraction``)."""
        self._check_params()
        x, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=np.float64)
        targets = _as_float_targets(y)
        self._single_output = np.ndim(y) == 1
        shift, scale = mean_and_scale(targets)
        held_out = None
        if eval_set is not None:
            x_val, y_val = self._check_eval_set(eval_set, multi_output=True, y_numeric=True)
            if y_val.ndim != y.ndim:
                raise ValueError(f"eval_set: y_val has {y_val.ndim} dimension(s), y has {y.ndim}")
            held_out = (x_val, (_as_float_targets(y_val) - shift) / scale)
        self._boost(x, (targets - shift) / scale, SquaredError(), scale, shift, held_out)
        return self

    def predict(self, X: Any, stages: int | None = None) -> np.ndarray:
        """Predictions of the first ``stages`` stages (all by default)."""
        out = self._raw(X, stages).numpy()
        return out[:, 0] if self._single_output else out


class BoostedMLPClassifier(ClassifierMixin, _BoostedMLP):
    """A boosted MLP classifier: binary log-loss for two classes, the multinomial deviance for more."""

    def fit(self, X: Any, y: Any, eval_set: tuple[Any, Any] | None = None) -> BoostedMLPClassifier:
        """Grow the network stage by stage on ``X`` ``(n, d)`` and labels ``y`` ``(n,)``; ``eval_set``
        ``(X_val, y_val)`` is the validation set of early stopping (instead of ``validation_fraction``)."""
        self._check_params()
        x, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self._encoder = LabelEncoder().fit(y)
        self.classes_ = self._encoder.classes_
        if len(self.classes_) < 2:
            raise ValueError("BoostedMLPClassifier needs at least 2 classes in y, got 1 class")
        loss = BinaryLogLoss() if len(self.classes_) == 2 else MultinomialDeviance()
        held_out = None
        if eval_set is not None:
            x_val, y_val = self._check_eval_set(eval_set)
            unknown = set(np.unique(y_val)) - set(self.classes_)
            if unknown:
                raise ValueError(f"eval_set: y_val has classes not in y: {sorted(unknown)!r}")
            held_out = (x_val, self._targets(y_val))
        targets = self._targets(y)
        outputs = targets.shape[1]
        self._boost(x, targets, loss, torch.ones(outputs), torch.zeros(outputs), held_out)
        return self

    def _targets(self, y: np.ndarray) -> torch.Tensor:
        """Labels as the loss's targets: 0/1 ``(n, 1)`` for two classes, one-hot ``(n, K)`` for more."""
        codes = torch.as_tensor(self._encoder.transform(y))
        if len(self.classes_) == 2:
            return codes.float()[:, None]
        return torch.nn.functional.one_hot(codes, len(self.classes_)).float()

    def predict_proba(self, X: Any, stages: int | None = None) -> np.ndarray:
        """Class probabilities ``(n, n_classes)`` from the first ``stages`` stages (all by default)."""
        f = self._raw(X, stages)
        if len(self.classes_) == 2:
            p = torch.sigmoid(f)
            return torch.cat([1 - p, p], 1).numpy()
        return torch.softmax(f, 1).numpy()

    def predict(self, X: Any, stages: int | None = None) -> np.ndarray:
        """The most probable class of each row."""
        probabilities = self.predict_proba(X, stages)
        return self.classes_[probabilities.argmax(1)]
