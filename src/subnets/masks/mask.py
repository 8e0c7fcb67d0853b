"""The :class:`Mask` type and its enforcement during training."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn


class Mask(Mapping[str, torch.Tensor]):
    """Parameter name -> bool tensor of the parameter's shape (True = kept)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self._tensors = {name: t.detach().to(torch.bool) for name, t in tensors.items()}

    @classmethod
    def ones_like(cls, model: nn.Module, names: Iterable[str]) -> Mask:
        """A mask that keeps every weight of the named parameters."""
        params = dict(model.named_parameters())
        missing = [n for n in names if n not in params]
        if missing:
            raise ValueError(f"model has no parameter '{missing[0]}'")
        return cls({n: torch.ones_like(params[n], dtype=torch.bool) for n in names})

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def kept(self) -> dict[str, int]:
        """Number of kept weights per layer."""
        return {n: int(t.sum()) for n, t in self._tensors.items()}

    def sizes(self) -> dict[str, int]:
        """Number of weights per layer."""
        return {n: t.numel() for n, t in self._tensors.items()}

    def density(self) -> float:
        """Fraction of the masked weights that are kept (the paper's "weights remaining")."""
        return sum(self.kept().values()) / max(1, sum(self.sizes().values()))

    def sparsity(self) -> float:
        """Fraction of the masked weights that are pruned."""
        return 1.0 - self.density()

    def per_layer(self) -> dict[str, float]:
        """Density of each layer."""
        sizes = self.sizes()
        return {n: k / sizes[n] for n, k in self.kept().items()}

    def to(self, device: torch.device | str) -> Mask:
        """The same mask on ``device``."""
        return Mask({n: t.to(device) for n, t in self._tensors.items()})

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Plain tensors for saving (``torch.save``; load with ``weights_only=True``)."""
        return {n: t.cpu() for n, t in self._tensors.items()}

    def apply(self, model: nn.Module) -> None:
        """Zero every weight outside the mask, in place."""
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, keep in self._tensors.items():
                params[name].mul_(keep.to(params[name].dtype))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mask) or set(self) != set(other):
            return False
        return all(torch.equal(self[n].cpu(), other[n].cpu()) for n in self)

    def __repr__(self) -> str:
        return f"Mask({len(self)} layers, density={self.density():.4f})"


class MaskedParameters:
    """Keeps a model's pruned weights exactly zero through training.

    Gradients of pruned weights are zeroed before the optimizer step and the weights are multiplied by the
    mask after it, each as one fused ``_foreach`` call over all masked parameters (no Python loop per
    step). With zero gradients Adam's moments at pruned positions stay zero, and the multiply removes any
    weight decay or momentum drift, so pruned weights are exactly zero after every step.
    """

    def __init__(self, model: nn.Module, mask: Mask) -> None:
        params = dict(model.named_parameters())
        self.params = [params[n] for n in mask]
        self.factors = [mask[n].to(device=params[n].device, dtype=params[n].dtype) for n in mask]

    def mask_gradients(self) -> None:
        """Zero the gradients of pruned weights."""
        grads = [p.grad for p in self.params if p.grad is not None]
        if not self.params:
            return
        if len(grads) == len(self.params):
            torch._foreach_mul_(grads, self.factors)
        else:
            for p, f in zip(self.params, self.factors, strict=True):
                if p.grad is not None:
                    p.grad.mul_(f)

    @torch.no_grad()
    def mask_weights(self) -> None:
        """Zero the pruned weights."""
        if self.params:
            torch._foreach_mul_(self.params, self.factors)
