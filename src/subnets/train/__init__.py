"""Training: one short loop over in-memory batches, with masks kept exactly zero.

``train(model, dataset, TrainConfig(...), seed=...)`` runs an iteration-based schedule (lengths written as
``"50000it"`` or ``"10ep"``), evaluates on validation and test every ``eval_every``, and returns the curves,
the early-stop iteration (minimum validation loss, as the Lottery Ticket paper defines it) with the test
accuracy there, and copies of the weights at requested iterations (for rewinding).
``train_population(models, data, config, seeds=...)`` trains K networks of one architecture in one batched
pass, each member as it would train alone. ``TrainingPool`` trains networks concurrently in worker processes.
"""

from subnets.recipes.execution import ONE_AT_A_TIME, Execution
from subnets.recipes.training import TrainConfig, parse_duration
from subnets.train.loop import Diverged, StepHooks, TrainResult, evaluate, train
from subnets.train.population import Population, evaluate_population, population_support, train_population
from subnets.train.workers import TrainingPool, UnitPool, WorkerFailed

__all__ = [
    "Diverged",
    "ONE_AT_A_TIME",
    "Execution",
    "Population",
    "StepHooks",
    "TrainConfig",
    "TrainResult",
    "TrainingPool",
    "UnitPool",
    "WorkerFailed",
    "evaluate",
    "evaluate_population",
    "parse_duration",
    "population_support",
    "train",
    "train_population",
]
