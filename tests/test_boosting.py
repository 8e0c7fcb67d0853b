"""Boosted MLPs: the initial constant, pseudo-residuals by hand, truncation equals the restricted module,
seeded determinism, learning, early stopping, scikit-learn's estimator checks and errors of the scikit-learn kind."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")
from sklearn.datasets import load_breast_cancer, make_friedman1  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from subnets.boosting import BoostedMLPClassifier, BoostedMLPRegressor  # noqa: E402
from subnets.boosting.losses import BinaryLogLoss, MultinomialDeviance, SquaredError  # noqa: E402

SMALL = {"n_stages": 4, "units_per_stage": 3, "stage_steps": 40, "random_state": 0}


def _friedman(n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    return make_friedman1(n, random_state=0)


def test_the_initial_constant_minimises_the_loss() -> None:
    x, y = _friedman()
    regressor = BoostedMLPRegressor(**SMALL).fit(x, y)
    np.testing.assert_allclose(regressor.predict(x, stages=0), np.full(len(y), y.mean()), rtol=1e-5)
    labels = (y > np.median(y) + 1).astype(int)
    binary = BoostedMLPClassifier(**SMALL).fit(x, labels)
    np.testing.assert_allclose(binary.predict_proba(x, stages=0)[0], [1 - labels.mean(), labels.mean()], rtol=1e-5)
    classes = np.digitize(y, np.quantile(y, [0.2, 0.7]))
    multi = BoostedMLPClassifier(**SMALL).fit(x, classes)
    np.testing.assert_allclose(multi.predict_proba(x, stages=0)[0], np.bincount(classes) / len(classes), rtol=1e-5)


def test_pseudo_residuals_by_hand() -> None:
    y, f = torch.tensor([[1.0], [3.0]]), torch.tensor([[0.5], [4.0]])
    assert torch.equal(SquaredError().residuals(y, f), torch.tensor([[0.5], [-1.0]]))
    labels, logits = torch.tensor([[1.0], [0.0]]), torch.tensor([[0.0], [2.0]])
    expected = torch.tensor([[1 - 0.5], [0 - 1 / (1 + np.exp(-2.0))]], dtype=torch.float32)
    torch.testing.assert_close(BinaryLogLoss().residuals(labels, logits), expected)
    onehot, logits = torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([[0.0, np.log(2.0), 0.0]], dtype=torch.float32)
    torch.testing.assert_close(MultinomialDeviance().residuals(onehot, logits), torch.tensor([[-0.25, 0.5, -0.25]]))
    assert SquaredError().init(torch.tensor([[1.0], [2.0], [6.0]])).item() == 3.0
    torch.testing.assert_close(BinaryLogLoss().init(torch.tensor([[1.0], [0.0], [0.0], [0.0]])),
                               torch.tensor([np.log(1 / 3)], dtype=torch.float32))


def test_truncation_equals_the_network_restricted_to_the_first_stages() -> None:
    x, y = _friedman()
    model = BoostedMLPRegressor(**SMALL).fit(x, y)
    net = model.module
    assert net.hidden_weight.shape == (4 * 3, 10) and net.stages == 4
    z = (torch.tensor(x, dtype=torch.float32) - net.mean) / net.std
    for t in range(5):
        units = t * 3
        hidden = torch.relu(z @ net.hidden_weight[:units].T + net.hidden_bias[:units])
        manual = hidden @ net.out_weight[:, :units].T + net.out_bias + net.stage_bias[:t].sum(0)
        np.testing.assert_allclose(model.predict(x, stages=t), manual[:, 0].detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(model.predict(x), model.predict(x, stages=4))


def test_a_seeded_fit_is_deterministic_and_the_seed_matters() -> None:
    x, y = _friedman()
    first = BoostedMLPRegressor(**SMALL).fit(x, y).predict(x)
    again = BoostedMLPRegressor(**SMALL).fit(x, y).predict(x)
    other = BoostedMLPRegressor(**{**SMALL, "random_state": 1}).fit(x, y).predict(x)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_stages_lower_the_training_loss_and_the_model_learns(optimizer: str) -> None:
    x, y = _friedman(1500)
    model = BoostedMLPRegressor(n_stages=10, stage_optimizer=optimizer, stage_steps=100 if optimizer == "adam" else 30,
                                random_state=0).fit(x[:1000], y[:1000])
    losses = model.train_loss_
    assert len(losses) == len(model.stage_seconds_) + 1 == model.n_stages_ + 1
    assert all(b <= a + 1e-7 for a, b in zip(losses, losses[1:], strict=False))  # an optimal step never hurts
    assert model.score(x[1000:], y[1000:]) > 0.9  # Friedman #1 is non-linear: a linear model gets about 0.75


def test_classifier_learns_breast_cancer() -> None:
    x, y = load_breast_cancer(return_X_y=True)
    model = BoostedMLPClassifier(n_stages=5, random_state=0).fit(x[:400], y[:400])
    assert model.score(x[400:], y[400:]) > 0.93


def test_early_stopping_keeps_the_best_number_of_stages() -> None:
    x, y = _friedman(400)
    model = BoostedMLPRegressor(n_stages=30, learning_rate=1.0, validation_fraction=0.25, n_iter_no_change=2,
                                random_state=0).fit(x, y)
    best = int(np.argmin(model.validation_loss_))
    assert model.n_stages_ == best == model.module.stages
    assert len(model.validation_loss_) <= best + 3  # stopped 2 stages after the best one


@pytest.mark.parametrize("change, message", [
    ({"x": "nan"}, "NaN"),
    ({"x": "inf"}, "infinity"),
    ({"y": "short"}, "inconsistent numbers of samples"),
    ({"n_stages": 0}, "n_stages must be an int >= 1, got 0"),
    ({"units_per_stage": 0}, "units_per_stage must be an int >= 1, got 0"),
    ({"subsample": 0.0}, "subsample must be in (0, 1]"),
])
def test_bad_input_is_a_clear_error(change: dict, message: str) -> None:
    x, y = _friedman(50)
    if change.get("x") == "nan":
        x[3, 2] = np.nan
    if change.get("x") == "inf":
        x[3, 2] = np.inf
    if change.get("y") == "short":
        y = y[:-1]
    params = {k: v for k, v in change.items() if k not in ("x", "y")}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
        BoostedMLPRegressor(**{**SMALL, **params}).fit(x, y)


def test_a_single_class_is_refused() -> None:
    x, _ = _friedman(50)
    with pytest.raises(ValueError, match="at least 2 classes"):
        BoostedMLPClassifier(**SMALL).fit(x, np.zeros(50, dtype=int))


@parametrize_with_checks([BoostedMLPRegressor(n_stages=3, stage_steps=30, random_state=0),
                          BoostedMLPClassifier(n_stages=3, stage_steps=30, random_state=0)])
def test_scikit_learn_estimator_checks(estimator, check) -> None:
    check(estimator)


def _extractor() -> torch.nn.Module:
    torch.manual_seed(5)
    return torch.nn.Sequential(torch.nn.Linear(10, 6), torch.nn.Tanh())


def test_a_frozen_feature_extractor_is_copied_and_left_as_given() -> None:
    x, y = _friedman()
    extractor = _extractor()
    before = [p.detach().clone() for p in extractor.parameters()]
    model = BoostedMLPRegressor(**SMALL, feature_extractor=extractor).fit(x, y)
    assert model.module.extractor is not extractor
    for given, kept, original in zip(extractor.parameters(), model.module.extractor.parameters(), before, strict=True):
        assert torch.equal(given, original) and torch.equal(kept, original)
    assert model.module.hidden_weight.shape[1] == 6  # the stages see the extractor's 6 features
    with torch.no_grad():
        direct = model.module(torch.tensor(x, dtype=torch.float32))[:, 0].numpy()
    np.testing.assert_allclose(model.predict(x), direct, rtol=1e-6)


def test_a_trained_feature_extractor_learns_with_the_first_stage_only() -> None:
    x, y = _friedman()
    extractor = _extractor()
    model = BoostedMLPRegressor(**SMALL, feature_extractor=extractor, train_extractor=True).fit(x, y)
    trained = model.module.extractor
    assert any(not torch.equal(a, b) for a, b in zip(extractor.parameters(), trained.parameters(), strict=True))
    np.testing.assert_allclose(model.predict(x, stages=0), np.full(len(y), y.mean()), rtol=1e-5)
    assert all(b <= a + 1e-6 for a, b in zip(model.train_loss_[1:], model.train_loss_[2:], strict=False))
    with pytest.raises(ValueError, match="feature_extractor must map"):
        BoostedMLPRegressor(**SMALL, feature_extractor=torch.nn.Flatten(0)).fit(x, y)


# Randomness: every draw of a fit comes from the estimator's own generator, seeded from random_state the
# scikit-learn way (an int reproduces, None is fresh entropy, a RandomState instance is drawn from).

THREADED = {"n_stages": 4, "units_per_stage": 3, "stage_steps": 30, "subsample": 0.8, "batch_size": 64,
            "random_state": 3}


def test_fits_running_at_once_in_threads_equal_a_fit_alone() -> None:
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    from sklearn.base import clone

    x, y = _friedman(400)
    alone = BoostedMLPRegressor(**THREADED).fit(x, y).predict(x)
    barrier = Barrier(2)

    def fit(_: int) -> np.ndarray:
        model = clone(BoostedMLPRegressor(**THREADED))
        barrier.wait()  # both fits start together, so their draws would interleave on a shared generator
        return model.fit(x, y).predict(x)

    for _ in range(3):
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(fit, range(2)))
        for result in results:
            assert np.array_equal(result, alone)


def test_a_fit_neither_reads_nor_changes_torchs_global_generator() -> None:
    x, y = _friedman(200)
    options = {**SMALL, "subsample": 0.8, "batch_size": 64}
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    unchanged: list[bool] = []
    model = BoostedMLPRegressor(**options, stage_callback=lambda *_: unchanged.append(
        torch.equal(torch.random.get_rng_state(), before))).fit(x, y)
    assert unchanged == [True] * 4  # not seeded or drawn from while fitting either
    assert torch.equal(torch.random.get_rng_state(), before)
    # Drawing from the global generator between stages changes nothing in the fit.
    disturbed = BoostedMLPRegressor(**options, stage_callback=lambda *_: torch.rand(7)).fit(x, y)
    np.testing.assert_array_equal(disturbed.predict(x), model.predict(x))


def test_random_state_none_is_fresh_and_an_int_reproduces() -> None:
    x, y = _friedman(200)
    fresh = [BoostedMLPRegressor(**{**SMALL, "random_state": None}).fit(x, y).predict(x) for _ in range(2)]
    assert not np.array_equal(*fresh)
    seeded = [BoostedMLPRegressor(**{**SMALL, "random_state": 7}).fit(x, y).predict(x) for _ in range(2)]
    np.testing.assert_array_equal(*seeded)
    labels = (y > np.median(y)).astype(int)
    fresh = [BoostedMLPClassifier(**{**SMALL, "random_state": None}).fit(x, labels).predict_proba(x)
             for _ in range(2)]
    assert not np.array_equal(*fresh)


def test_a_random_state_instance_is_accepted_and_drawn_from() -> None:
    x, y = _friedman(200)
    first = BoostedMLPRegressor(**{**SMALL, "random_state": np.random.RandomState(0)}).fit(x, y).predict(x)
    again = BoostedMLPRegressor(**{**SMALL, "random_state": np.random.RandomState(0)}).fit(x, y).predict(x)
    np.testing.assert_array_equal(first, again)
    state = np.random.RandomState(0)
    model = BoostedMLPRegressor(**{**SMALL, "random_state": state})
    assert np.array_equal(model.fit(x, y).predict(x), first)
    assert not np.array_equal(model.fit(x, y).predict(x), first)  # the instance moved on: a new draw
    labels = (y > np.median(y)).astype(int)
    BoostedMLPClassifier(**{**SMALL, "random_state": np.random.default_rng(0)}).fit(x, labels)
    with pytest.raises(ValueError, match="random_state"):
        BoostedMLPRegressor(**{**SMALL, "random_state": "zero"}).fit(x, y)
