"""Pruning criteria: functions that return a smaller :class:`Mask`."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from subnets.masks.mask import Mask


def _prune_count(kept: int, fraction: float) -> int:
    """Weights to remove when pruning ``fraction`` of ``kept`` (rounded to nearest, as open_lth does)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"pruning fraction must be in [0, 1), got {fraction}")
    return int(round(kept * fraction))


def layerwise_magnitude(model: nn.Module, mask: Mask, fractions: Mapping[str, float]) -> Mask:
    """Remove ``fractions[name]`` of each layer's remaining weights, smallest magnitude first.

    This is the Lottery Ticket paper's per-layer rate (e.g. 20% of each hidden layer, 10% of the output
    layer per level). Layers without a fraction are kept as they are.
    """
    params = dict(model.named_parameters())
    new = {}
    for name, keep in mask.items():
        fraction = fractions.get(name, 0.0)
        n_prune = _prune_count(int(keep.sum()), fraction)
        keep = keep.clone()
        if n_prune:
            scores = params[name].detach().abs().masked_fill(~keep.to(params[name].device), float("inf"))
            drop = torch.topk(scores.flatten(), n_prune, largest=False).indices
            keep.view(-1)[drop.to(keep.device)] = False
        new[name] = keep
    return Mask(new)


def global_magnitude(model: nn.Module, mask: Mask, fraction: float, layers: list[str] | None = None) -> Mask:
    """Remove ``fraction`` of the remaining weights of ``layers`` (default: all) by one global threshold."""
    params = dict(model.named_parameters())
    names = list(mask) if layers is None else layers
    unknown = [n for n in names if n not in mask]
    if unknown:
        raise ValueError(f"global pruning: '{unknown[0]}' is not a masked layer")
    scores = torch.cat([
        params[n].detach().abs().masked_fill(~mask[n].to(params[n].device), float("inf")).flatten().cpu()
        for n in names
    ])
    n_prune = _prune_count(sum(int(mask[n].sum()) for n in names), fraction)
    drop = torch.zeros_like(scores, dtype=torch.bool)
    if n_prune:
        drop[torch.topk(scores, n_prune, largest=False).indices] = True
    new, offset = dict(mask.items()), 0
    for n in names:
        size = mask[n].numel()
        new[n] = mask[n] & ~drop[offset:offset + size].view_as(mask[n]).to(mask[n].device)
        offset += size
    return Mask(new)


def random_like_counts(reference: Mask, generator: torch.Generator) -> Mask:
    """A uniformly random mask that keeps exactly as many weights per layer as ``reference``.

    The lottery ticket ``random_prune`` control: same per-layer sparsity, random positions.
    """
    new = {}
    for name, keep in reference.items():
        count = int(keep.sum())
        chosen = torch.randperm(keep.numel(), generator=generator)[:count]
        flat = torch.zeros(keep.numel(), dtype=torch.bool)
        flat[chosen] = True
        new[name] = flat.view_as(keep).to(keep.device)
    return Mask(new)
