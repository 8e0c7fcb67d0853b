"""Window arithmetic with hand-written backward passes, so that pooling ops cost a few passes over the input.

A pooling window of ``k`` positions is walked as ``k`` strided views of the input, one per position inside the
window (:class:`Windows`): view ``j`` holds element ``j`` of every window, shaped like the output. Sums over the
window are then ``k`` additions of output-sized tensors, and a gradient goes back by adding into the same views
of one zero tensor, with no unfolded copy of the input and nothing input-sized saved that is not needed.
A global window (the whole map) is reduced over the spatial dims directly instead.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

# Average and max pooling by number of spatial dims.
AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d}
MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d}


class Windows:
    """The windows of ``kernel`` and ``stride`` (no padding, floor mode) over maps of ``size``."""

    def __init__(self, size: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.size, self.kernel, self.stride = size, kernel, stride
        self.dims = len(size)
        self.out_size = tuple((n - k) // s + 1 for n, k, s in zip(size, kernel, stride, strict=True))
        self.count = math.prod(kernel)
        self.whole = kernel == size  # one window: the whole map
        # Every element in exactly one window: gradients can be written, not added into zeros.
        self.exact = stride == kernel and all(n % k == 0 for n, k in zip(size, kernel, strict=True))

    def positions(self) -> list[tuple[object, ...]]:
        """For each position inside the window (row-major), the index of its output-shaped view."""
        return [(..., *(slice(o, o + s * (n - 1) + 1, s) for o, s, n in zip(offset, self.stride, self.out_size,
                                                                              strict=True)))
                for offset in itertools.product(*(range(k) for k in self.kernel))]

    def spatial(self) -> tuple[int, ...]:
        """The spatial dims of an input."""
        return tuple(range(2, 2 + self.dims))

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """The mean of each window of ``t``, output-shaped."""
        if self.whole:
            return t.mean(self.spatial(), keepdim=True)
        return AVG_POOL[self.dims](t, self.kernel, self.stride)

    def max(self, t: torch.Tensor) -> torch.Tensor:
        """The maximum of each window of ``t``, output-shaped."""
        if self.whole:
            return t.amax(self.spatial(), keepdim=True)
        return MAX_POOL[self.dims](t, self.kernel, self.stride)

    def spread(self, g: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """An input-shaped tensor whose every element is the sum of ``g`` over the windows that hold it."""
        if self.whole:
            return g.expand_as(like).contiguous()
        out = self.gradient_like(like)
        for index in self.positions():
            self.put(out, index, g)
        return out

    def times_spread(self, t: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """``t * spread(g)`` (``t`` input-shaped and contiguous), in one broadcast product where the windows tile
        the map exactly."""
        if not self.exact or not t.is_contiguous():
            return self.spread(g, t).mul_(t)
        n, c = t.shape[:2]
        blocks = [d for o, k in zip(self.out_size, self.kernel, strict=True) for d in (o, k)]
        spread = g.reshape(n, c, *[d for o in self.out_size for d in (o, 1)])
        return (t.view(n, c, *blocks) * spread).view(t.shape)

    def gradient_like(self, like: torch.Tensor) -> torch.Tensor:
        """A tensor like ``like`` for window contributions: zeros, or uninitialised where every element is in
        exactly one window (each position's first contribution is then written with :meth:`put`)."""
        return torch.empty_like(like) if self.exact else torch.zeros_like(like)

    def put(self, gradient: torch.Tensor, index: tuple[object, ...], value: torch.Tensor) -> None:
        """The first contribution ``value`` of position ``index`` to a :meth:`gradient_like` tensor."""
        if self.exact:
            gradient[index].copy_(value)
        else:
            gradient[index] += value


def _window_max(x: torch.Tensor, windows: Windows) -> torch.Tensor:
    """The maximum of each window, from the strided views (no indices computed, unlike max pooling)."""
    indices = windows.positions()
    top = x[indices[0]].clone()
    for index in indices[1:]:
        torch.maximum(top, x[index], out=top)
    return top


def _reduced(grad: torch.Tensor | None, shape: torch.Size) -> torch.Tensor | None:
    return None if grad is None else grad.sum_to_size(shape)


class PowerMean(torch.autograd.Function):
    """``(window mean of max(x, eps)^p)^(1/p)`` with ``p`` broadcastable to ``(1, C, 1, ...)``.

    Saves ``x^p`` (one input-sized tensor) for the backward pass, where ``x^p log x = x^p log(x^p) / p`` gives
    p's gradient.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: torch.Tensor, eps: float, windows: Windows) -> torch.Tensor:
        powers = x.clamp(min=eps).pow_(p)
        mean = windows.mean(powers)
        out = mean.pow(1.0 / p)
        ctx.save_for_backward(x, p, powers, mean, out)
        ctx.eps, ctx.windows = eps, windows
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, p, powers, mean, out = ctx.saved_tensors
        windows: Windows = ctx.windows
        grad_x = grad_p = None
        if ctx.needs_input_grad[0]:
            # d out / d x_j = out / (count * mean) * x_j^(p - 1), for x_j above eps.
            scale = grad * out / (mean * windows.count)
            grad_x = powers * scale if windows.whole else windows.times_spread(powers, scale)
            grad_x.div_(x).masked_fill_(x < ctx.eps, 0.0)
        if ctx.needs_input_grad[1]:
            weighted = windows.mean(powers.log().mul_(powers)) / p  # window mean of x^p log x
            grad_p = _reduced(grad * out * (weighted / mean - mean.log() / p) / p, p.shape)
        return grad_x, grad_p, None, None


class SoftMean(torch.autograd.Function):
    """SoftPool: ``sum_j e_j x_j / sum_j e_j`` with ``e_j = exp(x_j - window max)``; nothing input-sized saved."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, windows: Windows) -> torch.Tensor:
        top = windows.max(x) if windows.whole else _window_max(x, windows)
        if windows.whole:
            e = (x - top).exp_()
            total = e.sum(windows.spatial(), keepdim=True)
            out = e.mul_(x).sum(windows.spatial(), keepdim=True).div_(total)
        else:
            total, weighted = torch.zeros_like(top), torch.zeros_like(top)
            for index in windows.positions():
                e = (x[index] - top).exp_()
                total += e
                weighted.addcmul_(e, x[index])
            out = weighted.div_(total)
        ctx.save_for_backward(x, top, total, out)
        ctx.windows = windows
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None]:
        x, top, total, out = ctx.saved_tensors
        windows: Windows = ctx.windows
        scale = grad / total
        # d out / d x_j = e_j / total * (1 + x_j - out)
        if windows.whole:
            return (x - top).exp_().mul_(x - out + 1).mul_(scale), None
        grad_x = windows.gradient_like(x)
        for index in windows.positions():
            windows.put(grad_x, index, (x[index] - top).exp_().mul_(x[index] - out + 1).mul_(scale))
        return grad_x, None


class WindowFilters(torch.autograd.Function):
    """``r[f] = sum_j weight[f, j] x_j`` for every window and channel: ``(filters, N, C, *S')``; one filter of
    the window's shape shared by all channels (the gates and leaves of gated and tree pooling)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, windows: Windows) -> torch.Tensor:
        flat = weight.reshape(len(weight), -1)
        out = x.new_empty(len(weight), *x.shape[:2], *windows.out_size)
        for j, index in enumerate(windows.positions()):
            view = x[index]
            for f in range(len(weight)):
                if j == 0:
                    torch.mul(view, flat[f, 0], out=out[f])
                else:
                    out[f].addcmul_(view, flat[f, j])
        ctx.save_for_backward(x, weight)
        ctx.windows = windows
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, weight = ctx.saved_tensors
        windows: Windows = ctx.windows
        flat = weight.reshape(len(weight), -1)
        grad_x = windows.gradient_like(x) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(flat) if ctx.needs_input_grad[1] else None
        rows = grad.reshape(len(weight), -1)
        for j, index in enumerate(windows.positions()):
            if grad_x is not None:
                view = grad_x[index]
                for f in range(len(weight)):
                    if f == 0 and windows.exact:
                        torch.mul(grad[0], flat[0, j], out=view)
                    else:
                        view.addcmul_(grad[f], flat[f, j])
            if grad_w is not None:
                grad_w[:, j] = rows @ x[index].reshape(-1)
        return grad_x, None if grad_w is None else grad_w.reshape(weight.shape), None


class StochasticPick(torch.autograd.Function):
    """Training-time stochastic pooling of ``a = relu(x)``: in each window, the first position whose running
    sum of ``a`` exceeds ``u`` times the window's total (``u`` uniform in [0, 1), one per window), i.e. position
    ``j`` with probability ``a_j / sum a``; the gradient goes to the picked element."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, u: torch.Tensor, windows: Windows) -> torch.Tensor:
        values = [x[index].clamp(min=0) for index in windows.positions()]
        total = values[0].clone()
        for value in values[1:]:
            total += value
        threshold, running = u * total, torch.zeros_like(total)
        picked = torch.zeros(u.shape, dtype=torch.int64, device=x.device)
        for value in values[:-1]:  # count the positions whose running sum stays at or below the threshold
            running += value
            picked += running <= threshold
        out = values[-1]
        for j in range(len(values) - 1):
            out = torch.where(picked == j, values[j], out)
        ctx.save_for_backward(x, picked, out)
        ctx.windows = windows
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        x, picked, out = ctx.saved_tensors
        windows: Windows = ctx.windows
        passed = torch.where(out > 0, grad, 0.0)  # relu's gradient at the picked element
        grad_x = windows.gradient_like(x)
        for j, index in enumerate(windows.positions()):
            windows.put(grad_x, index, torch.where(picked == j, passed, 0.0))
        return grad_x, None, None


class GatedMix(torch.autograd.Function):
    """Gated pooling in one sweep of the window: ``mean + a (max - mean)`` with ``a = sigmoid(sum_j w_j x_j)``.

    Saves the position of each window's maximum (one byte per output) and the gate; the input gradient is
    written once, position by position.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, gate: torch.Tensor, windows: Windows) -> torch.Tensor:
        flat = gate.reshape(-1)
        indices = windows.positions()
        top, total = x[indices[0]].clone(), x[indices[0]].clone()
        where = torch.zeros(top.shape, dtype=torch.uint8, device=x.device)
        response = x[indices[0]] * flat[0]
        for j, index in enumerate(indices[1:], start=1):
            view = x[index]
            larger = view > top
            where.masked_fill_(larger, j)
            torch.maximum(top, view, out=top)
            total += view
            response.addcmul_(view, flat[j])
        mean = total.div_(windows.count)
        a = torch.sigmoid(response)
        out = torch.addcmul(mean, a, top - mean)
        ctx.save_for_backward(x, gate, where, a, top, mean)
        ctx.windows = windows
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, gate, where, a, top, mean = ctx.saved_tensors
        windows: Windows = ctx.windows
        flat = gate.reshape(-1)
        to_top = grad * a
        to_each = (grad - to_top).div_(windows.count)  # the mean's share, the same for every position
        to_response = grad * (top - mean) * a * (1 - a)
        grad_x = windows.gradient_like(x) if ctx.needs_input_grad[0] else None
        grad_gate = torch.zeros_like(flat) if ctx.needs_input_grad[1] else None
        rows = to_response.reshape(-1)
        for j, index in enumerate(windows.positions()):
            if grad_x is not None:
                windows.put(grad_x, index, to_each)
                view = grad_x[index]
                view.addcmul_(to_response, flat[j])
                view += torch.where(where == j, to_top, 0.0)
            if grad_gate is not None:
                grad_gate[j] = rows @ x[index].reshape(-1)
        return grad_x, None if grad_gate is None else grad_gate.reshape(gate.shape), None
