"""Token pooling: ``(N, T, D)`` with a padding mask ``(N, T)`` (True = a real token) -> ``(N, D)``.

Padded positions never change the output, whatever they hold. A row with no real token gives zeros.
Learned ops: attention pooling with one learned query, and multi-head attention pooling with key and value
projections (as in the multi-head aggregation readouts of set transformers and SimPool-style attention pools).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _checked(op: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The mask as a bool ``(N, T)`` tensor (all True when None), after checking shapes."""
    if x.dim() != 3:
        raise ValueError(f"{type(op).__name__} expects tokens (N, T, D), got shape {tuple(x.shape)}")
    if mask is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    if tuple(mask.shape) != tuple(x.shape[:2]):
        raise ValueError(f"{type(op).__name__}: mask shape {tuple(mask.shape)} does not match tokens "
                         f"{tuple(x.shape[:2])} (N, T)")
    return mask.to(torch.bool)


def _zero_padding(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``x`` with its padded positions set to zero, so that whatever they held (NaN, inf, huge values) reaches
    no arithmetic: multiplying by the mask instead would turn them into NaN (0 * inf, 0 * NaN), in the output
    and in the gradient. The gradient of the result is zero at the padded positions."""
    return x.masked_fill(~keep.unsqueeze(-1), 0.0)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax of ``scores`` over ``dim`` where ``mask`` is True; zero elsewhere and for fully masked rows."""
    scores = scores.masked_fill(~mask, float("-inf"))
    top = scores.amax(dim, keepdim=True).clamp(min=torch.finfo(scores.dtype).min).detach()
    e = torch.exp(scores - top)
    return e / e.sum(dim, keepdim=True).clamp(min=torch.finfo(scores.dtype).tiny)


class MeanTokens(nn.Module):
    """The mean of the real tokens."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        keep = _checked(self, x, mask)
        count = keep.unsqueeze(-1).to(x.dtype).sum(1).clamp(min=1)
        return _zero_padding(x, keep).sum(1) / count


class MaxTokens(nn.Module):
    """The feature-wise maximum over the real tokens."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        keep = _checked(self, x, mask)
        top = x.masked_fill(~keep.unsqueeze(-1), float("-inf")).amax(1)
        return top.masked_fill(~keep.any(1, keepdim=True), 0.0)


def _pick(x: torch.Tensor, keep: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    picked = x.gather(1, index.reshape(-1, 1, 1).expand(-1, 1, x.shape[-1])).squeeze(1)
    return picked.masked_fill(~keep.any(1, keepdim=True), 0.0)


class FirstToken(nn.Module):
    """The first real token (the CLS readout)."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        keep = _checked(self, x, mask)
        return _pick(x, keep, keep.to(torch.int8).argmax(1))


class LastToken(nn.Module):
    """The last real token (the EOS readout of decoder models)."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        keep = _checked(self, x, mask)
        return _pick(x, keep, x.shape[1] - 1 - keep.flip(1).to(torch.int8).argmax(1))


class AttentionPool(nn.Module):
    """A weighted mean of the real tokens, weights ``softmax_t(x_t . q / sqrt(D))`` from a learned query ``q``
    (initially zero: the mean)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(features))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        keep = _checked(self, x, mask)
        x = _zero_padding(x, keep)
        weights = masked_softmax(x @ self.query / math.sqrt(x.shape[-1]), keep, dim=1)
        return (weights.unsqueeze(-1) * x).sum(1)


class MultiHeadAttentionPool(nn.Module):
    """Multi-head attention pooling: per head, a learned query attends over the real tokens' keys and averages
    their values; heads are concatenated and projected by ``out``."""

    def __init__(self, features: int, heads: int = 4) -> None:
        super().__init__()
        if heads < 1 or features % heads:
            raise ValueError(f"multihead: features ({features}) must be divisible by heads ({heads})")
        self.heads = heads
        self.query = nn.Parameter(torch.randn(heads, features // heads) / math.sqrt(features // heads))
        self.key = nn.Linear(features, features, bias=False)
        self.value = nn.Linear(features, features, bias=False)
        self.out = nn.Linear(features, features)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        keep = _checked(self, x, mask)
        x = _zero_padding(x, keep)
        n, t, d = x.shape
        keys = self.key(x).reshape(n, t, self.heads, d // self.heads)
        values = self.value(x).reshape(n, t, self.heads, d // self.heads)
        scores = (keys * self.query).sum(-1) / math.sqrt(d // self.heads)  # (N, T, heads)
        weights = masked_softmax(scores, keep.unsqueeze(-1), dim=1)
        pooled = (weights.unsqueeze(-1) * values).sum(1).reshape(n, d)
        return self.out(pooled).masked_fill(~keep.any(1, keepdim=True), 0.0)
