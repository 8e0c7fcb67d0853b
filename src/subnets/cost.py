"""Parameters, active parameters and multiply-accumulates (MACs) per example of a model as it runs.

:func:`measure` runs a model once on a batch (in evaluation mode, without gradients; each module's training flag
is restored afterwards) with forward hooks, and returns a :class:`Cost`: the model's parameters, the parameters
each example uses (its *active* parameters) and the MACs each example costs, in total and layer by layer in the
order the layers ran. A masked model counts only its kept weights, a routed one only what each token was routed
to, a truncated one only the part that ran, and :meth:`Cost.prefix_macs` gives each example's MACs up to the end
of chosen blocks: what it costs if it stops there (early exits).

Conventions, those of ``torch.utils.flop_counter.FlopCounterMode`` (which counts a ``(m, k) @ (k, n)`` product
as ``2 m k n`` FLOPs, so its FLOPs are twice these MACs on a dense model):

- A ``Linear`` or ``Conv1d/2d/3d`` costs one MAC per kept weight per output row: per token for a ``Linear``, per
  output position for a convolution. With a ``mask`` (parameter name -> bool tensor of its shape, True = kept,
  e.g. a :class:`subnets.masks.Mask`) a pruned weight costs nothing and is not active, although a dense kernel
  would still multiply by its zero. Weights are never inspected for zeros: pass the mask.
- Biases, normalisation, activations, pooling, residual additions and other element-wise work cost 0 MACs; the
  parameters of a layer that runs (biases and norm scales included) are active. Products of two activations
  (attention scores) are not counted; the registered models have none.
- A module with a method ``forward_cost(inputs, kwargs, output, kept) -> RowCost`` accounts for itself and
  everything inside it, from what its forward call just did: ``inputs``, ``kwargs`` and ``output`` are the
  call's, ``kept(parameter)`` the parameter's bool mask (all True when unmasked). It reports every *row* of
  its work (a token, or an example); the rows of a batch of N examples come from the examples in order,
  ``rows / N`` each, so an example's MACs are the sum over its rows and its active parameters their mean
  (the parameters a token uses, as "active parameters" is meant for mixtures of experts). Routed layers
  (``subnets.experts.MoE``) and truncated ones (``subnets.boosting.BoostedNet``) count themselves this way.
- Any other module with parameters of its own is an error naming it, rather than a silent zero.
- A module called more than once in a forward pass adds its MACs each time and its active parameters once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

Keep = Callable[[torch.Tensor], torch.Tensor]
"""``kept(parameter)``: the parameter's bool tensor of kept weights (all True when it is not masked)."""

_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NO_MACS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)


@dataclass(frozen=True, eq=False)
class RowCost:
    """What a ``forward_cost`` module spent on each row (token or example) of one call: ``macs`` and ``active``
    parameters, both of shape ``(rows,)``."""

    macs: torch.Tensor
    active: torch.Tensor


@dataclass(frozen=True, eq=False)
class LayerCost:
    """One module's share: its ``parameters``, and per example (``(N,)``, on the CPU) its MACs (int64) and the
    parameters of it the example used (float64: a mean over the example's tokens)."""

    parameters: int
    macs_per_example: torch.Tensor
    active_per_example: torch.Tensor

    @property
    def macs(self) -> float:
        """Mean MACs per example."""
        return float(self.macs_per_example.double().mean())

    @property
    def active_parameters(self) -> float:
        """Mean active parameters per example."""
        return float(self.active_per_example.mean())


@dataclass(frozen=True, eq=False)
class Cost(LayerCost):
    """A model's ``parameters`` (all of them, pruned weights included), each example's MACs and active parameters
    (``(N,)``, with their means ``macs`` and ``active_parameters``), and ``layers``: module name ->
    :class:`LayerCost` of every counted module that ran, in the order they first ran (the model itself is ``""``)."""

    layers: dict[str, LayerCost]

    def summary(self) -> dict[str, float]:
        """``parameters``, ``active_parameters`` and ``macs`` (means per example), for tables and JSON."""
        return {"parameters": self.parameters, "active_parameters": self.active_parameters, "macs": self.macs}

    def prefix_macs(self, boundaries: Sequence[str]) -> torch.Tensor:
        """``(len(boundaries), N)``: each example's MACs through the end of each named module (e.g. ``"layer2"``:
        every layer that ran up to the last one inside it), i.e. its cost if it left the network there. Given in
        forward order, the rows are non-decreasing."""
        names = list(self.layers)
        ends = []
        for boundary in boundaries:
            inside = [i for i, name in enumerate(names) if _within(name, boundary)]
            if not inside:
                raise ValueError(f"no counted layer ran inside '{boundary}'; layers: {', '.join(names)}")
            ends.append(inside[-1])
        running = torch.cumsum(torch.stack([layer.macs_per_example for layer in self.layers.values()]), 0)
        return running[ends]


def _within(name: str, module: str) -> bool:
    """Whether module ``name`` is ``module`` or inside it (everything is inside the model, ``""``)."""
    return not module or name == module or name.startswith(module + ".")


def _keep(model: nn.Module, mask: Mapping[str, torch.Tensor] | None) -> Keep:
    """``kept`` for ``model``'s parameters under ``mask`` (checked against the model's names and shapes)."""
    params = dict(model.named_parameters())
    masked: dict[int, torch.Tensor] = {}
    for name, keep in (mask or {}).items():
        if name not in params:
            raise ValueError(f"the mask names '{name}', which is not a parameter of the model")
        if keep.shape != params[name].shape:
            raise ValueError(f"the mask of '{name}' has shape {tuple(keep.shape)}, the parameter "
                             f"{tuple(params[name].shape)}")
        masked[id(params[name])] = keep.to(device=params[name].device, dtype=torch.bool)

    def kept(param: torch.Tensor) -> torch.Tensor:
        held = masked.get(id(param))
        return torch.ones_like(param, dtype=torch.bool) if held is None else held

    return kept


def _rows_per_example(name: str, rows: int, examples: int) -> int:
    """``rows / examples``: each example's share of the rows module ``name`` worked on."""
    if rows % examples:
        raise ValueError(f"module '{name}' worked on {rows} rows, not a multiple of the {examples} examples")
    return rows // examples


@torch.no_grad()
def measure(model: nn.Module, inputs: torch.Tensor, mask: Mapping[str, torch.Tensor] | None = None,
            **kwargs: Any) -> Cost:
    """The :class:`Cost` of ``model(inputs, **kwargs)`` for a batch ``inputs`` of N examples (first axis), with
    only the weights kept by ``mask`` counted (see the module docstring for what counts). ``kwargs`` reach the
    forward call, e.g. ``stages=t`` for a boosted network truncated to ``t`` stages."""
    kept = _keep(model, mask)
    examples = len(inputs)
    macs: dict[str, torch.Tensor] = {}
    active: dict[str, torch.Tensor] = {}
    sizes: dict[str, int] = {}

    def add(name: str, module: nn.Module, example_macs: torch.Tensor, example_active: torch.Tensor) -> None:
        if name in macs:
            macs[name] = macs[name] + example_macs
            active[name] = torch.maximum(active[name], example_active)
        else:
            macs[name], active[name] = example_macs, example_active
            sizes[name] = sum(p.numel() for p in module.parameters())

    def used(module: nn.Module) -> torch.Tensor:
        count = sum(int(kept(p).sum()) for p in module.parameters())
        return torch.full((examples,), count, dtype=torch.float64)

    def weighted(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kw: dict, output: torch.Tensor) -> None:
            rows = _rows_per_example(name, output.numel() // module.weight.shape[0], examples)
            per_row = int(kept(module.weight).sum())
            add(name, module, torch.full((examples,), rows * per_row, dtype=torch.int64), used(module))
        return hook

    def free(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kw: dict, output: Any) -> None:
            add(name, module, torch.zeros(examples, dtype=torch.int64), used(module))
        return hook

    def reported(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kw: dict, output: Any) -> None:
            row = module.forward_cost(args, kw, output, kept)
            rows = _rows_per_example(name, len(row.macs), examples)
            add(name, module, row.macs.detach().to("cpu", torch.int64).reshape(examples, rows).sum(1),
                row.active.detach().to("cpu", torch.float64).reshape(examples, rows).mean(1))
        return hook

    hooks: list[tuple[nn.Module, Callable[..., None]]] = []
    opaque: list[str] = []
    for name, module in model.named_modules():
        if any(_within(name, outer) for outer in opaque):
            continue
        if callable(getattr(module, "forward_cost", None)):
            opaque.append(name)
            hooks.append((module, reported(name)))
        elif isinstance(module, _WEIGHTED):
            hooks.append((module, weighted(name)))
        elif isinstance(module, _NO_MACS):
            hooks.append((module, free(name)))
        elif any(True for _ in module.parameters(recurse=False)):
            raise ValueError(f"cannot count module '{name}' ({type(module).__name__}): it has parameters of its own "
                             "and no forward_cost method (see subnets.cost)")
    training = {module: module.training for module in model.modules()}
    handles = [module.register_forward_hook(hook, with_kwargs=True) for module, hook in hooks]
    try:
        model.eval()
        model(inputs, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in training.items():
            module.training = flag
    layers = {name: LayerCost(sizes[name], macs[name], active[name]) for name in macs}
    return Cost(
        parameters=sum(p.numel() for p in model.parameters()),
        macs_per_example=sum(macs.values(), torch.zeros(examples, dtype=torch.int64)),
        active_per_example=sum(active.values(), torch.zeros(examples, dtype=torch.float64)),
        layers=layers,
    )
