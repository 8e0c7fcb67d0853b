"""Boosting: networks grown in stages of hidden units, each fitted to the residuals of the stages before.

``BoostedMLPRegressor`` and ``BoostedMLPClassifier`` are scikit-learn estimators; after ``fit`` their
``module_`` is one ordinary network, and ``predict(X, stages=t)`` truncates it to its first ``t`` stages.
"""

from subnets.boosting.estimators import BoostedMLPClassifier, BoostedMLPRegressor, BoostedNet

__all__ = ["BoostedMLPClassifier", "BoostedMLPRegressor", "BoostedNet"]
