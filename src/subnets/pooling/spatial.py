"""Spatial pooling over 1D or 2D feature maps: ``(N, C, *S) -> (N, C, *S')``, or ``(N, C)`` when global.

Every op pools windows of ``kernel_size`` with ``stride`` (default: the kernel), no padding, floor mode, the
way ``nn.MaxPool2d`` does by default. ``global_pool=True`` makes the window the whole map. Ops whose learned
filter has the window's shape (gated, tree, conv) need that shape up front, so their global versions take
``size=`` (the map's spatial size).

References for the formulas: GeM (Radenovic et al. 2018), Group GeM (one p per channel group), SoftPool
(Stergiou et al. 2021), mixed, gated and tree pooling (Lee, Gallagher & Tu 2016), stochastic pooling
(Zeiler & Fergus 2013), the strided convolution of the All-Convolutional Net (Springenberg et al. 2015) and
spatial pyramid pooling (He et al. 2014).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from subnets.cost import Keep, RowCost
from subnets.pooling.windows import (
    AVG_POOL,
    MAX_POOL,
    GatedMix,
    PowerMean,
    SoftMean,
    StochasticPick,
    WindowFilters,
    Windows,
)

_SHAPES = {1: "(N, C, L)", 2: "(N, C, H, W)"}


def _tuple(value: int | Sequence[int], dim: int, field: str) -> tuple[int, ...]:
    values = (value,) * dim if isinstance(value, int) else tuple(value)
    if len(values) != dim or not all(isinstance(v, int) and v > 0 for v in values):
        raise ValueError(f"{field} must be a positive int or {dim} positive ints, got {value!r}")
    return values


class SpatialPool(nn.Module):
    """Base of the spatial ops: checks the input's rank, finds the window, flattens global outputs."""

    def __init__(self, dim: int = 2, kernel_size: int | Sequence[int] = 2, stride: int | Sequence[int] | None = None,
                 global_pool: bool = False) -> None:
        super().__init__()
        if dim not in (1, 2):
            raise ValueError(f"dim must be 1 or 2, got {dim!r}")
        self.dim = dim
        self.kernel_size = _tuple(kernel_size, dim, "kernel_size")
        self.stride = self.kernel_size if stride is None else _tuple(stride, dim, "stride")
        self.global_pool = global_pool

    def window(self, x: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The kernel and stride for input ``x``, after checking its rank and that one window fits."""
        if x.dim() != self.dim + 2:
            raise ValueError(f"{type(self).__name__} with dim={self.dim} expects input {_SHAPES[self.dim]}, "
                             f"got shape {tuple(x.shape)}")
        size = tuple(x.shape[2:])
        if self.global_pool:
            return size, size
        if any(s < k for s, k in zip(size, self.kernel_size, strict=True)):
            raise ValueError(f"{type(self).__name__}: input size {size} is smaller than the kernel {self.kernel_size}")
        return self.kernel_size, self.stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel, stride = self.window(x)
        out = self.pool(x, kernel, stride)
        return out.flatten(1) if self.global_pool else out

    def pool(self, x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> torch.Tensor:
        """Pool ``x`` (already checked) with ``kernel`` and ``stride``; subclasses define it."""
        raise NotImplementedError

    def forward_cost(self, inputs: tuple, kwargs: dict, output: torch.Tensor, kept: Keep) -> RowCost:
        """Per example (see :mod:`subnets.cost`): a learned weight over the window (a gate, a tree's leaves) is one
        multiply-accumulate per window position per output value; element-wise parameters (GeM's p, a mixing
        alpha) cost none. The op's own parameters are active."""
        window = math.prod(self.kernel_size)
        weights = sum(int(kept(p).sum()) for p in self.parameters(recurse=False)
                      if tuple(p.shape[-self.dim:]) == self.kernel_size) // window
        rows = output.shape[0]
        per_example = output[0].numel() * weights * window
        active = sum(int(kept(p).sum()) for p in self.parameters(recurse=False))
        return RowCost(torch.full((rows,), per_example, dtype=torch.int64),
                       torch.full((rows,), float(active), dtype=torch.float64))

    def extra_repr(self) -> str:
        if self.global_pool:
            return f"dim={self.dim}, global"
        return f"dim={self.dim}, kernel_size={self.kernel_size}, stride={self.stride}"


class AvgPool(SpatialPool):
    """The mean of each window."""

    def pool(self, x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> torch.Tensor:
        return AVG_POOL[self.dim](x, kernel, stride)


class MaxPool(SpatialPool):
    """The maximum of each window."""

    def pool(self, x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> torch.Tensor:
        return MAX_POOL[self.dim](x, kernel, stride)


class LpPool(SpatialPool):
    """Power mean ``(mean_j max(x_j, eps)^p)^(1/p)``: average pooling at p = 1, max pooling as p grows.

    ``learn_p`` makes p a parameter (GeM). Inputs are clamped at ``eps`` so that fractional powers exist.
    """

    def __init__(self, dim: int = 2, kernel_size: int | Sequence[int] = 2, stride: int | Sequence[int] | None = None,
                 global_pool: bool = False, *, p: float = 2.0, eps: float = 1e-6, learn_p: bool = False) -> None:
        super().__init__(dim, kernel_size, stride, global_pool)
        if p <= 0:
            raise ValueError(f"p must be > 0, got {p}")
        self.eps = eps
        p_tensor = torch.full((1,), float(p))
        if learn_p:
            self.p = nn.Parameter(p_tensor)
        else:
            self.register_buffer("p", p_tensor)

    def exponent(self, x: torch.Tensor) -> torch.Tensor:
        """p, shaped to broadcast over ``x``'s channels."""
        return self.p.reshape(1, -1, *([1] * self.dim))

    def pool(self, x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> torch.Tensor:
        return PowerMean.apply(x, self.exponent(x), self.eps, Windows(tuple(x.shape[2:]), kernel, stride))


class GeM(LpPool):
    """Generalised mean pooling: the power mean with a learned p (initially 3)."""

    def __init__(self, dim: int = 2, kernel_size: int | Sequence[int] = 2, stride: int | Sequence[int] | None = None,
                 global_pool: bool = False, *, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__(dim, kernel_size, stride, global_pool, p=p, eps=eps, learn_p=True)


class GroupGeM(LpPool):
    """GeM with one learned p per group of channels (``channels // groups`` channels share a p)."""

    def __init__(self, channels: int, dim: int = 2, kernel_size: int | Sequence[int] = 2,
                 stride: int | Sequence[int] | None = None, global_pool: bool = False, *, groups: int = 4,
                 p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__(dim, kernel_size, stride, global_pool, p=p, eps=eps, learn_p=True)
        if groups < 1 or channels % groups:
            raise ValueError(f"group-gem: channels ({channels}) must be divisible by groups ({groups})")
        self.channels, self.groups = channels, groups
        self.p = nn.Parameter(torch.full((groups,), float(p)))

    def exponent(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            raise ValueError(f"GroupGeM was built for {self.channels} channels, got input with {x.shape[1]}")
        p = self.p.repeat_interleave(self.channels // self.groups)
        return p.reshape(1, -1, *([1] * self.dim))


class SoftPool(SpatialPool):
    """The softmax-weighted sum of each window, ``sum_j softmax(x)_j x_j``; each window's maximum is
    subtracted before the exponential, so it is exact for any input range."""

    def pool(self, x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> torch.Tensor:
        return SoftMean.apply(x, Windows(tuple(x.shape[2:]), kernel, stride))


class MixedPool(SpatialPool):
    """``a max + (1 - a) avg`` with one learned ``a = sigmoid(alpha)`` per layer (initially 1/2)."""

    def __init__(self, dim: int = 2, kernel_size: int | Sequence[int] = 2, stride: int | Sequence[int] | None = None,
                 global_pool: bool = False) -> None:
        super().__init__(dim, kernel_size, stride, global_pool)
        self.alpha = nn.Parameter(torch.zeros(()))

    def pool(self, x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> torch.Tensor:
        return _mix(x, kernel, stride, torch.sigmoid(self.alpha))


def _mix(x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...], a: torch.Tensor) -> torch.Tensor:
    """``a`` times max pooling plus ``1 - a`` times average pooling of ``x``."""
    dim = x.dim() - 2
    top, mean = MAX_POOL[dim](x, kernel, stride), AVG_POOL[dim](x, kernel, stride)
    return mean + a * (top - mean)


class _LearnedWindow(SpatialPool):
    """Ops whose learned weights have the window's shape: their global versions need the map's ``size`` up front
    and accept only maps of that size."""

    def __init__(self, dim: int, kernel_size: int | Sequence[int], stride: int | Sequence[int] | None,
                 global_pool: bool, size: int | Sequence[int] | None) -> None:
        super().__init__(dim, kernel_size, stride, global_pool)
        if global_pool:
            if size is None:
                raise ValueError(f"{type(self).__name__} with global_pool=True needs size= (the map's spatial size): "
                                 "its learned filter covers the whole map")
            self.kernel_size = self.stride = _tuple(size, dim, "size")

    def window(self, x: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
        kernel, stride = super().window(x)
        if self.global_pool and kernel != self.kernel_size:
            raise ValueError(f"{type(self).__name__} was built for maps of size {self.kernel_size}, got {kernel}")
        return kernel, stride


class _WindowFilters(_LearnedWindow):
    """Ops with learned filters of the window's shape, shared by all channels."""

    def responses(self, x: torch.Tensor, weight: torch.Tensor, kernel: tuple[int, ...],
                  stride: tuple[int, ...]) -> torch.Tensor:
        """``sum_j weight[f, j] x_j`` for every window and channel: ``(filters, N, C, *S')``."""
        windows = Windows(tuple(x.shape[2:]), kernel, stride)
        if windows.whole:  # one window: a product with each filter over the whole map
            return torch.tensordot(weight, x, dims=(list(range(1, 1 + self.dim)), list(windows.spatial())))[
                (..., *([None] * self.dim))]
        return WindowFilters.apply(x, weight, windows)


class GatedPool(_WindowFilters):
    """``a max + (1 - a) avg`` with ``a = sigmoid(w . window)`` computed per window from a learned filter."""

    def __init__(self, dim: int = 2, kernel_size: int | Sequence[int] = 2, stride: int | Sequence[int] | None = None,
                 global_pool: bool = False, *, size: int | Sequence[int] | None = None) -> None:
        super().__init__(dim, kernel_size, stride, global_pool, size)
        fan_in = math.prod(self.kernel_size)
        self.gate = nn.Parameter(torch.randn(self.kernel_size) / fan_in)

    def pool(self, x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> torch.Tensor:
        windows = Windows(tuple(x.shape[2:]), kernel, stride)
        if not windows.whole:
            return GatedMix.apply(x, self.gate, windows)
        return _mix(x, kernel, stride, torch.sigmoid(self.responses(x, self.gate.unsqueeze(0), kernel, stride)[0]))


class TreePool(_WindowFilters):
    """A depth-2 tree of learned pooling filters: ``g (v1 . window) + (1 - g) (v2 . window)`` with the gate
    ``g = sigmoid(w . window)``."""

    def __init__(self, dim: int = 2, kernel_size: int | Sequence[int] = 2, stride: int | Sequence[int] | None = None,
                 global_pool: bool = False, *, size: int | Sequence[int] | None = None) -> None:
        super().__init__(dim, kernel_size, stride, global_pool, size)
        fan_in = math.prod(self.kernel_size)
        self.gate = nn.Parameter(torch.randn(self.kernel_size) / fan_in)
        # Leaves start near averaging, different from each other so that the gate has something to choose.
        self.leaves = nn.Parameter((1.0 + 0.5 * torch.randn(2, *self.kernel_size)) / fan_in)

    def pool(self, x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> torch.Tensor:
        r = self.responses(x, torch.cat([self.gate.unsqueeze(0), self.leaves]), kernel, stride)
        g = torch.sigmoid(r[0])
        return r[2] + g * (r[1] - r[2])


class StochasticPool(SpatialPool):
    """Stochastic pooling of ``a = relu(x)``: in training each window outputs one of its values, drawn with
    probability ``a_j / sum a``; in evaluation the probability-weighted average ``sum a_j^2 / sum a``.
    A window with no positive value gives 0. Draws use ``generator`` (or torch's global one)."""

    def __init__(self, dim: int = 2, kernel_size: int | Sequence[int] = 2, stride: int | Sequence[int] | None = None,
                 global_pool: bool = False, *, generator: torch.Generator | None = None) -> None:
        super().__init__(dim, kernel_size, stride, global_pool)
        self.generator = generator

    def pool(self, x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> torch.Tensor:
        windows = Windows(tuple(x.shape[2:]), kernel, stride)
        a = torch.relu(x)
        if not self.training:
            return windows.mean(a * a) / windows.mean(a).clamp(min=torch.finfo(a.dtype).tiny)
        u = torch.rand(x.shape[:2] + windows.out_size, generator=self.generator, device=x.device, dtype=x.dtype)
        if not windows.whole:
            return StochasticPick.apply(x, u, windows)
        # One window: the first value whose running sum passes u times the total (a window of zeros gives 0).
        flat = a.flatten(2)
        running = flat.detach().cumsum(-1)
        chosen = (running <= u.flatten(2) * running[..., -1:]).sum(-1, keepdim=True).clamp(max=flat.shape[-1] - 1)
        return flat.gather(-1, chosen).reshape(u.shape)


class ConvPool(_LearnedWindow):
    """The All-Convolutional Net's replacement of pooling: a learned convolution with the pool's kernel and
    stride, ``channels`` in and out."""

    forward_cost = None  # not counted as a whole: subnets.cost counts its convolution as a layer

    def __init__(self, channels: int, dim: int = 2, kernel_size: int | Sequence[int] = 2,
                 stride: int | Sequence[int] | None = None, global_pool: bool = False, *,
                 size: int | Sequence[int] | None = None) -> None:
        super().__init__(dim, kernel_size, stride, global_pool, size)
        conv = nn.Conv1d if dim == 1 else nn.Conv2d
        self.conv = conv(channels, channels, self.kernel_size, self.stride)

    def pool(self, x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> torch.Tensor:
        return self.conv(x)


class SpatialPyramidPool(SpatialPool):
    """Spatial pyramid pooling: adaptive max (or average) pooling to each level's grid (``l`` bins in 1D,
    ``l x l`` in 2D), flattened and concatenated; the output length ``C * sum(l^dim)`` does not depend on the
    input's size."""

    def __init__(self, dim: int = 2, levels: Sequence[int] = (1, 2, 4), mode: str = "max") -> None:
        super().__init__(dim, 1, 1, global_pool=True)
        if not levels or not all(isinstance(level, int) and level > 0 for level in levels):
            raise ValueError(f"spp: levels must be positive ints, got {levels!r}")
        if mode not in ("max", "avg"):
            raise ValueError(f"spp: mode must be 'max' or 'avg', got {mode!r}")
        self.levels, self.mode = tuple(levels), mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.window(x)
        pool = {("max", 1): F.adaptive_max_pool1d, ("max", 2): F.adaptive_max_pool2d,
                ("avg", 1): F.adaptive_avg_pool1d, ("avg", 2): F.adaptive_avg_pool2d}[self.mode, self.dim]
        return torch.cat([pool(x, level).flatten(1) for level in self.levels], dim=1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, levels={self.levels}, mode={self.mode!r}"
