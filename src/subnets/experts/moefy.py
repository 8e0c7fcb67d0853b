"""Experts from a trained dense network: MoE-fication (split a feed-forward block) and upcycling (copy it).

A feed-forward block is ``linear_out(act(linear_in(x)))``. :func:`moefy` partitions its hidden neurons into
``n_experts`` groups of (nearly) equal size by balanced k-means, either of the neurons' input weight vectors
(``method="weights"``) or of their activation patterns over sample inputs (``method="coactivation"``:
neurons that fire together end up together, MoEfication, Zhang et al. 2022). Each group becomes an expert
that holds its neurons' rows of ``linear_in`` and columns of ``linear_out``; a small router, trained on a
little data while the experts stay frozen, predicts how much each expert contributes to a token's output,
and at inference only the ``k`` experts it ranks highest run. The experts' outputs are added with weight 1,
so with every expert active the block computes exactly what the dense one did.

:func:`upcycle` copies the block into ``n_experts`` identical experts under a fresh router (sparse upcycling,
Komatsuzaki et al. 2023): a :class:`~subnets.experts.MoE` that starts out computing the dense block and is
trained further.

Blocks are found by name, :func:`feed_forward_sites` lists them: ``fc{i}`` in a ``subnets`` MLP (the block
``fc{i} -> act -> fc{i+1}``) and every transformer layer with BERT's ``intermediate``/``output`` layout
(e.g. ``encoder.layer.0`` in all-MiniLM-L6-v2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from subnets.cost import Keep, RowCost
from subnets.experts.layer import Experts, MoE, dispatch
from subnets.experts.routing import top_k


@dataclass
class FeedForwardSite:
    """A feed-forward block inside a model and how to put a replacement for the whole block in its place."""

    name: str
    linear_in: nn.Linear
    activation: str
    linear_out: nn.Linear
    install: Callable[[nn.Module], None]


def _activation_name(module: Any, where: str) -> str:
    kind = type(module).__name__
    if kind == "ReLU":
        return "relu"
    if kind in ("GELU", "GELUActivation") and getattr(module, "approximate", "none") == "none":
        return "gelu"
    raise ValueError(f"feed-forward block '{where}': activation {kind} is not supported (relu or exact gelu)")


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def feed_forward_sites(model: nn.Module) -> dict[str, FeedForwardSite]:
    """The model's feed-forward blocks by name (see the module docstring for the layouts recognised)."""
    sites: dict[str, FeedForwardSite] = {}
    depth = getattr(model, "depth", None)
    if isinstance(depth, int) and hasattr(model, "act1"):
        for i in range(1, depth):
            def install(block: nn.Module, i: int = i) -> None:
                setattr(model, f"fc{i}", block)
                setattr(model, f"act{i}", nn.Identity())
                setattr(model, f"fc{i + 1}", nn.Identity())

            sites[f"fc{i}"] = FeedForwardSite(f"fc{i}", getattr(model, f"fc{i}"), "",
                                              getattr(model, f"fc{i + 1}"), install)
    for name, module in model.named_modules():
        intermediate, output = getattr(module, "intermediate", None), getattr(module, "output", None)
        if isinstance(getattr(intermediate, "dense", None), nn.Linear) and \
                isinstance(getattr(output, "dense", None), nn.Linear):
            def install(block: nn.Module, layer: nn.Module = module) -> None:
                layer.intermediate = block
                layer.output.dense = nn.Identity()

            sites[name] = FeedForwardSite(name, intermediate.dense, "", output.dense, install)
    for site in sites.values():
        if site.name.startswith("fc"):
            site.activation = _activation_name(getattr(model, f"act{site.name[2:]}"), site.name)
        else:
            layer = model.get_submodule(site.name)
            site.activation = _activation_name(layer.intermediate.intermediate_act_fn, site.name)
    return sites


def find_site(model: nn.Module, layer: str) -> FeedForwardSite:
    """The feed-forward block called ``layer``; any other name is an error listing the blocks there are."""
    sites = feed_forward_sites(model)
    if layer not in sites:
        known = ", ".join(sites) or "none"
        raise ValueError(f"layer '{layer}' is not a feed-forward block of this model; its blocks: {known}")
    return sites[layer]


@torch.no_grad()
def block_inputs(model: nn.Module, layers: str | list[str], batches: Iterable[Any],
                 call: Callable[[nn.Module, Any], Any] = lambda model, batch: model(batch),
                 keep: Callable[[Any], torch.Tensor] | None = None) -> torch.Tensor | dict[str, torch.Tensor]:
    """The inputs ``(N, dim)`` that block ``layers`` sees while ``call(model, batch)`` runs each batch; for a
    list of layers, a dict of them by layer, collected in one pass.

    ``keep(batch)``, if given, is a boolean mask over the batch's tokens (e.g. a transformer's attention
    mask, to leave padding out).
    """
    names = [layers] if isinstance(layers, str) else list(layers)
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    handles = [find_site(model, name).linear_in.register_forward_hook(
        lambda _m, args, _out, name=name: seen[name].append(args[0].reshape(-1, args[0].shape[-1])))
        for name in names]
    try:
        for batch in batches:
            call(model, batch)
            if keep is not None:
                mask = keep(batch).reshape(-1).bool()
                for name in names:
                    seen[name][-1] = seen[name][-1][mask]
    finally:
        for handle in handles:
            handle.remove()
    inputs = {name: torch.cat(parts) for name, parts in seen.items()}
    return inputs[layers] if isinstance(layers, str) else inputs


def balanced_kmeans(points: torch.Tensor, n_clusters: int, seed: int = 0, iterations: int = 30) -> torch.Tensor:
    """Cluster ``points`` ``(n, f)`` into ``n_clusters`` groups whose sizes differ by at most one.

    Lloyd's algorithm with the assignment step solved exactly as a linear assignment of points to
    ``ceil(n / n_clusters)`` slots per centre (squared distances, scipy's Hungarian solver); starts from
    k-means++ centres. Returns the cluster of each point, ``(n,)``.
    """
    n = len(points)
    if not 1 <= n_clusters <= n:
        raise ValueError(f"n_experts must be between 1 and the number of neurons ({n}), got {n_clusters}")
    x = points.detach().double().cpu().numpy()
    rng = np.random.default_rng(seed)
    norms = (x * x).sum(1)
    centres = [x[rng.integers(n)]]
    gaps = np.full(n, np.inf)
    for _ in range(1, n_clusters):
        gaps = np.minimum(gaps, np.maximum(norms - 2 * x @ centres[-1] + centres[-1] @ centres[-1], 0))
        total = gaps.sum()
        centres.append(x[rng.choice(n, p=gaps / total)] if total > 0 else x[rng.integers(n)])
    centres_np = np.asarray(centres)
    slots = math.ceil(n / n_clusters)
    sizes = np.full(n_clusters, slots)
    sizes[: n_clusters * slots - n] -= 1  # n slots in all: sizes differ by at most one
    slot_cluster = np.repeat(np.arange(n_clusters), sizes)
    labels = np.full(n, -1)
    for _ in range(iterations):
        cost = norms[:, None] - 2 * x @ centres_np.T + (centres_np * centres_np).sum(1)[None]
        rows, cols = linear_sum_assignment(cost[:, slot_cluster])
        new = np.empty(n, dtype=np.int64)
        new[rows] = slot_cluster[cols]
        if np.array_equal(new, labels):
            break
        labels = new
        members = np.zeros((n_clusters, n))
        members[labels, np.arange(n)] = 1.0
        centres_np = (members @ x) / members.sum(1, keepdims=True)
    return torch.from_numpy(labels)


class MoefiedFeedForward(nn.Module):
    """A dense feed-forward block split into experts: the ``k`` experts the router ranks highest run for each
    token and their outputs add (weight 1) to the block's output bias. ``k`` may be changed at any time;
    with ``k == num_experts`` the block equals the dense one. Experts are zero-padded to one width (expert e's
    real neurons, ``groups[e]``, in its first ``len(groups[e])`` columns), and a padded neuron contributes
    exactly zero. After a forward pass that chose experts, ``last_choice`` holds the ``(T, k)`` choices (None
    when every expert ran), from which :func:`subnets.cost.measure` counts each token's cost."""

    def __init__(self, experts: Experts, bias_out: torch.Tensor | None, router: nn.Module, k: int,
                 groups: list[torch.Tensor]) -> None:
        super().__init__()
        self.experts, self.router, self.groups = experts, router, groups
        self.bias_out = nn.Parameter(bias_out.clone(), requires_grad=False) if bias_out is not None else None
        self.num_experts = experts.num_experts
        self.k = k
        self.selection: Literal["router", "oracle", "random"] = "router"
        self.last_choice: torch.Tensor | None = None

    @property
    def k(self) -> int:
        """Experts run per token."""
        return self._k

    @k.setter
    def k(self, value: int) -> None:
        if not 1 <= value <= self.num_experts:
            raise ValueError(f"k must be between 1 and the number of experts ({self.num_experts}), got {value}")
        self._k = value

    def contributions(self, tokens: torch.Tensor) -> torch.Tensor:
        """Each expert's output norm for each token, ``(T, E)``: what the router learns to predict."""
        return torch.stack([self.experts.expert(e, tokens).norm(dim=-1) for e in range(self.num_experts)], 1)

    def select(self, tokens: torch.Tensor) -> torch.Tensor:
        """The ``(T, k)`` experts chosen for ``tokens``: by the router, or, for analysis, by ``selection =
        "oracle"`` (the experts whose outputs are largest, which needs every expert computed) or
        ``"random"`` (k distinct experts uniformly at random, from torch's global generator)."""
        if self.selection == "oracle":
            scores = self.contributions(tokens)
        elif self.selection == "random":
            scores = torch.rand(len(tokens), self.num_experts, device=tokens.device)
        else:
            scores = self.router(tokens)
        return top_k(scores, self.k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(-1, x.shape[-1])
        if self.k == self.num_experts:
            self.last_choice = None
            out = sum(self.experts.expert(e, tokens) for e in range(self.num_experts))
        else:
            self.last_choice = self.select(tokens)
            order, counts, _ = dispatch(self.last_choice, self.num_experts, self.num_experts)
            out = self.experts(tokens, counts, index=order // self.k)  # gather, experts, add: one pass
        if self.bias_out is not None:
            out = out + self.bias_out
        return out.reshape(*x.shape[:-1], self.experts.out_dim)

    def expert_sizes(self, kept: Keep) -> tuple[torch.Tensor, torch.Tensor]:
        """``(E,)`` each: an expert's MACs per token and its active parameters, counting only the kept weights
        (and input biases) of its real neurons: padded neurons are zeros that a dense kernel multiplies but
        that do no work of the block's. The experts' output biases are zeros too (the block adds ``bias_out``)."""
        width = self.experts.w_in.shape[-1]
        sizes = torch.tensor([len(g) for g in self.groups], device=self.experts.w_in.device)
        real = torch.arange(width, device=sizes.device) < sizes[:, None]  # (E, width)
        macs = (kept(self.experts.w_in) & real[:, None, :]).flatten(1).sum(1) \
            + (kept(self.experts.w_out) & real[:, :, None]).flatten(1).sum(1)
        return macs, macs + (kept(self.experts.b_in) & real).sum(1)

    def router_size(self, kept: Keep) -> tuple[int, int]:
        """The router's MACs per token (its Linear layers' kept weights) and its kept parameters; a router with
        parameters in any other kind of module cannot be counted and is an error naming it."""
        macs = 0
        for name, module in self.router.named_modules():
            if isinstance(module, nn.Linear):
                macs += int(kept(module.weight).sum())
            elif any(True for _ in module.parameters(recurse=False)):
                where = f"router.{name}" if name else "router"
                raise ValueError(f"cannot count module '{where}' ({type(module).__name__}) of a moefied block: "
                                 "only Linear layers in a router are counted")
        return macs, sum(int(kept(p).sum()) for p in self.router.parameters())

    def forward_cost(self, inputs: tuple, kwargs: dict, output: torch.Tensor, kept: Keep) -> RowCost:
        """Per token, from the forward call just made (:mod:`subnets.cost`): the experts chosen for it (their
        real neurons only, see :meth:`expert_sizes`), plus the router's Linear layers when the router chose.
        When every expert ran (``k == num_experts``) or an oracle chose (it computes every expert to score
        them, and then has the top ``k`` outputs at hand) a token costs every expert and no router; a random
        choice costs no router. Active parameters include ``bias_out``."""
        tokens = output.numel() // output.shape[-1]
        macs, params = self.expert_sizes(kept)
        bias = int(kept(self.bias_out).sum()) if self.bias_out is not None else 0
        choice = self.last_choice
        if choice is None or self.selection == "oracle":
            return RowCost(macs.sum().expand(tokens), (params.sum() + bias).expand(tokens))
        if self.selection == "router":
            router_macs, router_params = self.router_size(kept)
        else:
            router_macs = router_params = 0
        return RowCost(macs[choice].sum(1) + router_macs, params[choice].sum(1) + router_params + bias)


def split_block(site: FeedForwardSite, groups: list[torch.Tensor]) -> Experts:
    """The block's neurons as experts: expert e holds the neurons ``groups[e]``, zero-padded to one width."""
    width = max(len(g) for g in groups)
    w_in, b_in, w_out = site.linear_in.weight, site.linear_in.bias, site.linear_out.weight
    experts = Experts(len(groups), w_in.shape[1], width, "mlp", site.activation, out_dim=w_out.shape[0])
    with torch.no_grad():
        for p in experts.parameters():
            p.zero_()
        for e, neurons in enumerate(groups):
            experts.w_in[e, :, : len(neurons)] = w_in[neurons].T
            if b_in is not None:
                experts.b_in[e, : len(neurons)] = b_in[neurons]
            experts.w_out[e, : len(neurons)] = w_out[:, neurons].T
    experts.requires_grad_(False)
    return experts.to(w_in.device)


def neuron_features(site: FeedForwardSite, method: Literal["weights", "coactivation"],
                    inputs: torch.Tensor | None, samples: int = 8192, seed: int = 0) -> torch.Tensor:
    """What neurons are clustered by: unit-norm input weight vectors, or whether each neuron is active
    (> 0) on each of at most ``samples`` of the sample inputs (co-activation patterns)."""
    if method == "weights":
        return F.normalize(site.linear_in.weight.detach(), dim=1)
    if method == "coactivation":
        if inputs is None:
            raise ValueError("method 'coactivation' needs sample inputs of the block")
        if len(inputs) > samples:
            generator = torch.Generator().manual_seed(seed)
            inputs = inputs[torch.randperm(len(inputs), generator=generator)[:samples].to(inputs.device)]
        with torch.no_grad():
            return (site.linear_in(inputs) > 0).T.float()
    raise ValueError(f"method must be 'weights' or 'coactivation', got {method!r}")


def train_router(block: MoefiedFeedForward, inputs: torch.Tensor, *, steps: int = 500, batch_size: int = 256,
                 lr: float = 3e-3, seed: int = 0) -> list[float]:
    """Fit ``block.router`` (experts frozen) to rank experts by their contribution to each input: softmax
    cross-entropy against each token's contributions normalised to sum to 1. Returns the loss per step."""
    with torch.no_grad():
        target = block.contributions(inputs)
        target = target / target.sum(dim=1, keepdim=True).clamp_min(1e-12)
    optimizer = torch.optim.Adam(block.router.parameters(), lr=lr)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    losses = []
    for _ in range(steps):
        rows = torch.randint(len(inputs), (min(batch_size, len(inputs)),), generator=generator).to(inputs.device)
        loss = -(target[rows] * F.log_softmax(block.router(inputs[rows]), dim=-1)).sum(dim=1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def moefy(model: nn.Module, layer: str, n_experts: int, k: int, inputs: torch.Tensor, *,
          method: Literal["weights", "coactivation"] = "coactivation", router_steps: int = 500,
          seed: int = 0) -> MoefiedFeedForward:
    """Split block ``layer`` of ``model`` into ``n_experts`` experts with ``k`` active, in place.

    ``inputs`` are sample inputs of the block, ``(N, dim)`` (:func:`block_inputs` collects them): they are
    what the co-activation clustering sees and what the router is trained on. Returns the installed block.
    """
    site = find_site(model, layer)
    hidden = site.linear_in.out_features
    if not 1 <= n_experts <= hidden:
        raise ValueError(f"n_experts must be between 1 and the block's {hidden} neurons, got {n_experts}")
    if not 1 <= k <= n_experts:
        raise ValueError(f"k must be between 1 and n_experts ({n_experts}), got {k}")
    labels = balanced_kmeans(neuron_features(site, method, inputs, seed=seed), n_experts, seed)
    groups = [torch.nonzero(labels == e).flatten() for e in range(n_experts)]
    experts = split_block(site, groups)
    torch.manual_seed(seed)
    router = nn.Linear(site.linear_in.in_features, n_experts).to(inputs.device)
    bias_out = site.linear_out.bias.detach() if site.linear_out.bias is not None else None
    block = MoefiedFeedForward(experts, bias_out, router, k, groups)
    train_router(block, inputs, steps=router_steps, seed=seed)
    site.install(block)
    return block


def upcycle(model: nn.Module, layer: str, n_experts: int, k: int = 2) -> MoE:
    """Replace block ``layer`` by a :class:`MoE` of ``n_experts`` copies of it and a fresh router, in place.

    The combine weights of each token sum to 1, so the upcycled layer computes the dense block exactly
    until training makes the experts differ.
    """
    site = find_site(model, layer)
    if not 1 <= k <= n_experts:
        raise ValueError(f"k must be between 1 and n_experts ({n_experts}), got {k}")
    dim, hidden = site.linear_in.in_features, site.linear_in.out_features
    if site.linear_out.out_features != dim:
        raise ValueError(f"upcycle: block '{layer}' maps width {dim} to {site.linear_out.out_features}; "
                         "an MoE layer keeps the width")
    moe = MoE(dim, hidden, n_experts, k, activation=site.activation).to(site.linear_in.weight.device)
    with torch.no_grad():
        moe.experts.w_in.copy_(site.linear_in.weight.T.expand(n_experts, dim, hidden))
        moe.experts.w_out.copy_(site.linear_out.weight.T.expand(n_experts, hidden, dim))
        if site.linear_in.bias is not None:
            moe.experts.b_in.copy_(site.linear_in.bias.expand(n_experts, hidden))
        else:
            moe.experts.b_in.zero_()
        if site.linear_out.bias is not None:
            moe.experts.b_out.copy_(site.linear_out.bias.expand(n_experts, -1))
        else:
            moe.experts.b_out.zero_()
    site.install(moe)
    return moe
