"""Losses of gradient boosting in function space: the best constant, the loss, and the pseudo-residuals.

``F`` is the model's raw output, ``(n, K)``: a value per target for squared error, a logit for binary log-loss
(K = 1), one logit per class for the multinomial deviance. The pseudo-residuals are ``-dL/dF`` per example,
the targets each boosting stage fits.
"""

from __future__ import annotations

import torch


class SquaredError:
    """``L = (y - F)^2 / 2``: residuals ``y - F``, best constant the mean."""

    name = "squared_error"

    def init(self, y: torch.Tensor) -> torch.Tensor:
        """The constant minimising the loss over ``y`` ``(n, K)``: its column means."""
        return y.mean(0)

    def loss(self, y: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """The mean loss."""
        return 0.5 * (y - f).pow(2).sum(1).mean()

    def residuals(self, y: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """``-dL/dF`` per example."""
        return y - f


class BinaryLogLoss:
    """Log-loss of ``p = sigmoid(F)`` for labels ``y`` in {0, 1} ``(n, 1)``: residuals ``y - p``, best constant
    the log-odds of the positive rate."""

    name = "log_loss"

    def init(self, y: torch.Tensor) -> torch.Tensor:
        rate = y.mean(0).clamp(1e-12, 1 - 1e-12)
        return torch.log(rate / (1 - rate))

    def loss(self, y: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(f, y)

    def residuals(self, y: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        return y - torch.sigmoid(f)


class MultinomialDeviance:
    """Cross-entropy of ``softmax(F)`` for one-hot labels ``y`` ``(n, K)``: residuals ``y - softmax(F)``, best
    constant the log class priors."""

    name = "multinomial"

    def init(self, y: torch.Tensor) -> torch.Tensor:
        return torch.log(y.mean(0).clamp(min=1e-12))

    def loss(self, y: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        return -(y * torch.log_softmax(f, 1)).sum(1).mean()

    def residuals(self, y: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        return y - torch.softmax(f, 1)
