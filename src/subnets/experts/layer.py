"""The mixture-of-experts layer: router -> dispatch (tokens sorted by expert) -> experts -> combine.

Each token goes to its router's ``k`` experts. Dispatch sorts the ``T * k`` (token, expert) pairs by expert,
so each expert runs once on one contiguous slice of tokens (a loop over experts, never over tokens), and
combine adds every expert output back into its token's row, scaled by the routing weight. Shared experts,
if any, see every token and are added unweighted (DeepSeekMoE). Null experts (MoE++) are router choices
whose output is zero: a token routed to one spends less compute. With a ``capacity_factor`` each expert
takes at most ``ceil(capacity_factor * T * k / E)`` tokens per batch, first come first served in token
order (Switch Transformer); the pairs beyond it are dropped and contribute nothing. Expert weights are
stacked, ``(E, ...)``, so fine-grained configurations (many small experts) are one parameter per matrix.

On a CPU with float32 tensors the gather, experts and combine, the top-k selection and the dispatch run in
a compiled kernel (:mod:`subnets.experts.cpu_kernel`) that gives the same bits as the Python loop here;
the loop runs on other devices and where the kernel cannot be built.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from types import ModuleType
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from subnets.cost import Keep, RowCost
from subnets.experts import cpu_kernel
from subnets.experts.routing import Router, Routing

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}
CHUNK = 1024  # most pairs per matrix product: an expert's slice runs in equal runs of at most this many


@dataclass
class _Plan:
    """What ``_ExpertsFunction`` needs besides tensors: the row each pair reads (and adds its output to), the
    pairs per expert, the expert kind and activation, and whether to save for the backward pass."""

    index: torch.Tensor
    counts: list[int]
    kind: str
    activation: Callable[[torch.Tensor], torch.Tensor]
    save: bool
    compiled: ModuleType | None = None

    def __post_init__(self) -> None:
        self.starts = [0] * len(self.counts)
        for expert in range(1, len(self.counts)):
            self.starts[expert] = self.starts[expert - 1] + self.counts[expert - 1]

    @property
    def bounds(self) -> list[int]:
        """Each expert's first pair, then the number of pairs: expert e owns pairs ``bounds[e] .. bounds[e+1]-1``."""
        return [*self.starts, len(self.index)]

    @property
    def kind_id(self) -> int:
        """The expert kind as the compiled kernel numbers it: 0 GELU MLP, 1 ReLU MLP, 2 SwiGLU."""
        return 2 if self.kind == "swiglu" else 0 if self.activation is F.gelu else 1

    def chunks(self, expert: int) -> Iterator[tuple[int, int, bool]]:
        """``(start, stop, first)`` for each run of ``expert``'s pairs (``first``: its first run)."""
        count, start = self.counts[expert], self.starts[expert]
        size = -(-count // -(-count // CHUNK)) if count else 1
        for begin in range(start, start + count, size):
            yield begin, min(begin + size, start + count), begin == start

    @cached_property
    def largest(self) -> int:
        """The most pairs in one run."""
        return max((stop - start for e in range(len(self.counts)) for start, stop, _ in self.chunks(e)), default=0)

    @cached_property
    def busiest_first(self) -> list[int]:
        """The experts with pairs, most pairs first: the order workers take them in."""
        return [e for e in sorted(range(len(self.counts)), key=lambda e: -self.counts[e]) if self.counts[e]]


class _Workers:
    """Threads that run experts at once on a CPU, each expert on one thread.

    Small experts' products and element-wise steps scale poorly across threads; two experts side by side,
    each on one core, do better. torch releases the GIL inside every operator, so Python threads run them
    concurrently. Each worker takes the next expert from a shared list (busiest first) as soon as it is
    free, so a worker slowed down by something else on its core simply runs fewer experts; every expert
    writes only its own rows, so results do not depend on which worker ran what. Each worker sets its own
    torch thread count (per thread in OpenMP and MKL), and the caller's count is set again afterwards,
    since torch also keeps the last value set as the default for threads it has not seen yet.
    """

    def __init__(self) -> None:
        self.pool: ThreadPoolExecutor | None = None
        self.size = 0
        self.lock = threading.Lock()

    def count(self, experts: list[int], device: torch.device) -> int:
        """How many workers run ``experts``: one per torch thread (at most one per expert) on a CPU, else 1."""
        return min(torch.get_num_threads(), len(experts)) if device.type == "cpu" else 1

    def run(self, work: Callable[[int, _Buffers], None], experts: list[int], device: torch.device,
            buffers: Callable[[], _Buffers]) -> None:
        """``work(expert, scratch)`` for every expert, concurrently where :meth:`count` says so; waits for all.
        ``buffers()`` makes one worker's scratch tensors."""
        workers = self.count(experts, device)
        if workers <= 1:  # alone: in expert order, so that adding as it goes sums each token's pairs in order
            scratch = buffers()
            for expert in sorted(experts):
                work(expert, scratch)
            return
        threads = torch.get_num_threads()
        with self.lock:  # callers on several threads share the pool
            if self.pool is None or self.size < workers:
                if self.pool is not None:
                    self.pool.shutdown(wait=False)  # work already submitted to it still runs
                self.pool = ThreadPoolExecutor(workers, thread_name_prefix="subnets-experts")
                self.size = workers
            pool = self.pool
        each = max(1, threads // workers)
        queue = iter(experts)
        taking = threading.Lock()

        def task() -> None:
            # Asking first matters: torch sets a thread's count from its last-set default at the thread's
            # first operator, which would undo a count set before it.
            if torch.get_num_threads() != each:
                torch.set_num_threads(each)
            scratch = buffers()
            with torch.no_grad():  # grad mode is per thread; the work is the inside of an autograd.Function
                while True:
                    with taking:
                        expert = next(queue, None)
                    if expert is None:
                        return
                    work(expert, scratch)

        try:
            for future in [pool.submit(task) for _ in range(workers)]:
                future.result()
        finally:
            torch.set_num_threads(threads)


_WORKERS = _Workers()


class _Workspace(threading.local):
    """Large scratch tensors kept from call to call, one set per thread (each as large as the largest asked
    for, held until the thread ends): on a CPU a fresh tensor of tens of MB costs a page fault per 4 kB
    page on every call. Other devices' allocators cache memory already, so there a new tensor is made each
    time."""

    def __init__(self) -> None:
        self.tensors: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}

    def __call__(self, name: str, like: torch.Tensor, rows: int, width: int) -> torch.Tensor:
        """A ``(rows, width)`` tensor of ``like``'s device and dtype, valid until this thread next asks for
        ``name``; its contents are undefined."""
        if like.device.type != "cpu":
            return like.new_empty(rows, width)
        key = (name, like.device, like.dtype)
        held = self.tensors.get(key)
        if held is None or held.numel() < rows * width:
            with torch.inference_mode(False):  # an inference tensor could not be written outside that mode later
                held = self.tensors[key] = like.new_empty(rows * width)
        return held[: rows * width].view(rows, width)


_WORKSPACE = _Workspace()


class _Buffers:
    """Chunk-sized scratch tensors reused by every run of a call (so they stay in cache), taken from the
    calling thread's :data:`_WORKSPACE` (so a call does not page-fault fresh ones in)."""

    def __init__(self, like: torch.Tensor, rows: int, **widths: int) -> None:
        self.buffers = {name: _WORKSPACE(f"run {name}", like, rows, width) for name, width in widths.items()}

    def __call__(self, name: str, rows: int) -> torch.Tensor:
        return self.buffers[name][:rows]


def _activate(plan: _Plan, hidden: torch.Tensor, out: torch.Tensor, silu: torch.Tensor | None = None) -> None:
    """``out`` = the expert's activation of its pre-activation ``hidden`` (bias included); for SwiGLU, ``silu``
    (if given) receives ``silu(gate)``."""
    if plan.kind == "swiglu":
        gate, up = hidden.chunk(2, dim=-1)
        torch.ops.aten.silu.out(gate, out=out if silu is None else silu)
        torch.mul(out if silu is None else silu, up, out=out)
    elif plan.activation is F.gelu:
        torch.ops.aten.gelu.out(hidden, out=out)
    else:
        torch.clamp(hidden, min=0, out=out)


class _ExpertsFunction(torch.autograd.Function):
    """Gather, experts and weighted combine in one pass, with a hand-written backward.

    Pair ``p`` (sorted by expert) reads row ``index[p]`` of ``tokens``, runs through its expert and adds its
    output times ``weights[p]`` into row ``index[p]`` of the result. Each expert runs on its pairs in equal
    runs of at most ``CHUNK``, intermediates written into scratch buffers reused from run to run. One worker
    takes the experts in order and adds each run's outputs into their tokens' rows at once (while they are
    in cache); several workers copy each pair's output to its own row of a pair-sized workspace, and one
    ``index_add_`` at the end adds them into their tokens' rows. Either way a token's row sums its pairs in
    pair order from zero, and every output is computed in a scratch buffer (MKL can round a product
    differently depending on where it writes, for rows that are not 16-byte aligned), so results depend
    neither on which worker ran which expert nor on the number of workers. The pre-activations are saved for
    backward.

    The backward pass mirrors it run by run: weight gradients are written in place into one ``(E, ...)``
    tensor (autograd through ``w_in[i]`` would allocate and add a full-size gradient per expert), the
    routing-weight gradient is the dot product of the incoming gradient with the unweighted output, taken at
    the hidden width, and the token gradient is combined like the output. On a CPU with several threads
    experts run concurrently (:class:`_Workers`). With ``plan.compiled`` the CPU kernel runs the same
    operators on the same runs instead (``csrc/experts_cpu.cpp``), one expert per OpenMP thread.
    """

    @staticmethod
    def forward(ctx, tokens: torch.Tensor, weights: torch.Tensor | None, w_in: torch.Tensor, w_out: torch.Tensor,
                b_in: torch.Tensor | None, b_out: torch.Tensor | None, plan: _Plan) -> torch.Tensor:
        width, hidden_width, out_width = w_in.shape[-1], w_out.shape[-2], w_out.shape[-1]
        pairs, experts = len(plan.index), plan.busiest_first
        saved = tokens.new_empty(pairs, width) if plan.save else None
        if plan.save:  # torch packs the saved tensors when forward returns, after saved is filled in below
            ctx.plan = plan
            ctx.save_for_backward(tokens, weights, w_in, w_out, b_in, b_out, saved)
        direct = _WORKERS.count(experts, tokens.device) == 1  # one worker adds each run's outputs at once
        outputs = None if direct else _WORKSPACE("pairs", tokens, pairs, out_width)
        if plan.compiled is not None:
            return plan.compiled.experts_forward(
                tokens, weights, w_in, w_out, b_in, b_out, plan.index, plan.bounds, experts, plan.kind_id, CHUNK,
                saved, direct, outputs)
        result = tokens.new_zeros(len(tokens), out_width)
        scale_activated = weights is not None and b_out is None and hidden_width < out_width

        def work(expert: int, buffer: _Buffers) -> None:
            for start, stop, _ in plan.chunks(expert):
                rows, n = plan.index[start:stop], stop - start
                x = torch.index_select(tokens, 0, rows, out=buffer("x", n))
                hidden = torch.mm(x, w_in[expert], out=saved[start:stop] if plan.save else buffer("hidden", n))
                if b_in is not None:
                    hidden += b_in[expert]
                activated = buffer("activated", n)
                _activate(plan, hidden, activated)
                if scale_activated:  # (w a) W = w (a W), on the narrower side
                    activated *= weights[start:stop, None]
                output = torch.mm(activated, w_out[expert], out=buffer("output", n))
                if b_out is not None:
                    output += b_out[expert]
                if weights is not None and not scale_activated:
                    output *= weights[start:stop, None]
                if direct:
                    result.index_add_(0, rows, output)
                else:
                    outputs[start:stop] = output

        largest = plan.largest
        _WORKERS.run(work, experts, tokens.device, lambda: _Buffers(
            tokens, largest, x=tokens.shape[-1], hidden=0 if plan.save else width, activated=hidden_width,
            output=out_width))
        return result if direct else result.index_add_(0, plan.index, outputs)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_result: torch.Tensor):
        tokens, weights, w_in, w_out, b_in, b_out, saved = ctx.saved_tensors
        plan: _Plan = ctx.plan
        need = ctx.needs_input_grad
        dim, width, hidden_width, out_width = tokens.shape[-1], w_in.shape[-1], w_out.shape[-2], w_out.shape[-1]
        experts = plan.busiest_first
        grad_result = grad_result.contiguous()
        direct = _WORKERS.count(experts, tokens.device) == 1
        grad_pairs = _WORKSPACE("pairs", tokens, len(plan.index), dim) if need[0] and not direct else None
        if plan.compiled is not None:
            grads = plan.compiled.experts_backward(
                grad_result, tokens, weights, w_in, w_out, b_in, b_out, saved, plan.index, plan.bounds, experts,
                plan.kind_id, CHUNK, need[0], need[1], direct, grad_pairs)
            return (*grads, None)
        grad_tokens = torch.zeros_like(tokens) if need[0] else None
        grad_weights = torch.empty_like(weights) if weights is not None and need[1] else None
        grad_w_in, grad_w_out = torch.empty_like(w_in), torch.empty_like(w_out)
        grad_b_in = torch.empty_like(b_in) if b_in is not None else None
        grad_b_out = torch.empty_like(b_out) if b_out is not None else None
        for expert, count in enumerate(plan.counts):
            if not count:  # an expert without tokens gets a zero gradient
                for grad in (grad_w_in, grad_w_out, grad_b_in, grad_b_out):
                    if grad is not None:
                        grad[expert].zero_()
        scale_activated = hidden_width <= out_width  # scale the narrower factor of the w_out gradient

        def work(expert: int, buffer: _Buffers) -> None:
            for start, stop, first in plan.chunks(expert):
                rows, n = plan.index[start:stop], stop - start
                grad_output = torch.index_select(grad_result, 0, rows, out=buffer("grad_output", n))
                hidden = saved[start:stop]
                activated, silu = buffer("activated", n), buffer("silu", n)
                _activate(plan, hidden, activated, silu)
                grad_activated = torch.mm(grad_output, w_out[expert].T, out=buffer("grad_activated", n))
                if grad_weights is not None:  # d/dw of w * output: <grad_output, output> = <grad_activated, activated>
                    product = torch.mul(grad_activated, activated, out=buffer("product", n))
                    torch.sum(product, -1, out=grad_weights[start:stop])
                    if b_out is not None:
                        grad_weights[start:stop] += grad_output @ b_out[expert]
                if weights is not None:
                    scale = weights[start:stop]
                    grad_activated *= scale[:, None]
                    (activated if scale_activated else grad_output).mul_(scale[:, None])
                grad_out = grad_w_out[expert]
                torch.mm(activated.T, grad_output, out=grad_out) if first else grad_out.addmm_(activated.T, grad_output)
                if grad_b_out is not None:
                    if weights is not None and scale_activated:
                        bias = torch.mv(grad_output.T, scale)
                    else:
                        bias = grad_output.sum(0)
                    grad_b_out[expert] = bias if first else grad_b_out[expert] + bias
                grad_hidden = buffer("grad_hidden", n)
                if plan.kind == "swiglu":
                    gate, up = hidden.chunk(2, dim=-1)
                    product = torch.mul(grad_activated, up, out=buffer("product", n))
                    torch.ops.aten.silu_backward.grad_input(product, gate, grad_input=grad_hidden[:, :hidden_width])
                    torch.mul(grad_activated, silu, out=grad_hidden[:, hidden_width:])
                elif plan.activation is F.gelu:
                    torch.ops.aten.gelu_backward.grad_input(grad_activated, hidden, grad_input=grad_hidden)
                else:
                    torch.ops.aten.threshold_backward.grad_input(grad_activated, hidden, 0, grad_input=grad_hidden)
                if grad_b_in is not None:
                    bias = grad_hidden.sum(0)
                    grad_b_in[expert] = bias if first else grad_b_in[expert] + bias
                x = torch.index_select(tokens, 0, rows, out=buffer("x", n))
                grad_in = grad_w_in[expert]
                torch.mm(x.T, grad_hidden, out=grad_in) if first else grad_in.addmm_(x.T, grad_hidden)
                if grad_tokens is not None:
                    grad_x = torch.mm(grad_hidden, w_in[expert].T, out=buffer("grad_x", n))
                    if direct:
                        grad_tokens.index_add_(0, rows, grad_x)
                    else:
                        grad_pairs[start:stop] = grad_x

        largest = plan.largest
        _WORKERS.run(work, experts, tokens.device, lambda: _Buffers(
            tokens, largest, grad_output=out_width, activated=hidden_width,
            silu=hidden_width if plan.kind == "swiglu" else 0, grad_activated=hidden_width, product=hidden_width,
            grad_hidden=width, x=dim, grad_x=dim))
        if grad_pairs is not None:
            grad_tokens.index_add_(0, plan.index, grad_pairs)
        return grad_tokens, grad_weights, grad_w_in, grad_w_out, grad_b_in, grad_b_out, None


def sort_by_expert(flat_experts: torch.Tensor, num_choices: int) -> torch.Tensor:
    """The stable order of the (token, choice) pairs ``flat_experts`` (expert ids below ``num_choices``) by
    expert: token order within each expert. On a CPU numpy's stable sort of 8- or 16-bit keys, a radix sort,
    takes a tenth of torch's stable argsort for the tens of thousands of pairs of a batch."""
    if flat_experts.device.type == "cpu" and num_choices <= 2 ** 15:
        keys = flat_experts.numpy().astype(np.uint8 if num_choices <= 2 ** 8 else np.int16)
        return torch.from_numpy(np.argsort(keys, kind="stable"))
    return torch.argsort(flat_experts, stable=True)


def dispatch(experts: torch.Tensor, num_experts: int, num_choices: int,
             capacity: int | None = None) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    """Where the ``(T, k)`` choices ``experts`` go: the kept (token, choice) pairs as flat ids ``t * k + j``,
    sorted by expert and in token order within each expert; the pairs of each of the ``num_experts`` experts;
    and the ``(T, k)`` mask of kept choices. Choices ``num_experts .. num_choices - 1`` are null experts,
    never kept; with a ``capacity`` each expert keeps its first ``capacity`` pairs in token order (Switch)."""
    compiled = cpu_kernel.kernel() if experts.device.type == "cpu" else None
    if compiled is not None:
        return compiled.dispatch(experts, num_experts, -1 if capacity is None else capacity)
    flat_experts = experts.reshape(-1)
    order = sort_by_expert(flat_experts, num_choices)
    by_expert = flat_experts[order]
    keep = by_expert < num_experts
    if capacity is not None:
        chosen = torch.bincount(flat_experts, minlength=num_choices)
        starts = torch.cumsum(chosen, 0) - chosen
        keep &= torch.arange(len(order), device=order.device) - starts[by_expert] < capacity
    order = order[keep]
    kept = torch.zeros_like(flat_experts, dtype=torch.bool)
    kept[order] = True
    counts = torch.bincount(by_expert[keep], minlength=num_experts).tolist()
    return order, counts, kept.view(experts.shape)


class Experts(nn.Module):
    """``num_experts`` feed-forward experts of one shape: ``mlp`` (``act(x W1 + b1) W2 + b2``) or ``swiglu``
    (``(silu(x Wg) * x Wu) W2``, no biases). Outputs have width ``out_dim`` (default ``dim``)."""

    def __init__(self, num_experts: int, dim: int, hidden: int, kind: Literal["mlp", "swiglu"] = "mlp",
                 activation: Literal["gelu", "relu"] = "gelu", out_dim: int | None = None) -> None:
        super().__init__()
        if kind not in ("mlp", "swiglu"):
            raise ValueError(f"expert kind must be 'mlp' or 'swiglu', got {kind!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        self.num_experts, self.dim, self.hidden, self.kind = num_experts, dim, hidden, kind
        self.out_dim = out_dim = dim if out_dim is None else out_dim
        self.activation = ACTIVATIONS[activation]
        width = 2 * hidden if kind == "swiglu" else hidden
        self.w_in = nn.Parameter(torch.empty(num_experts, dim, width))
        self.w_out = nn.Parameter(torch.empty(num_experts, hidden, out_dim))
        self.b_in = nn.Parameter(torch.zeros(num_experts, width)) if kind == "mlp" else None
        self.b_out = nn.Parameter(torch.zeros(num_experts, out_dim)) if kind == "mlp" else None
        for weight, fan_in in ((self.w_in, dim), (self.w_out, hidden)):
            nn.init.uniform_(weight, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    def expert(self, index: int, tokens: torch.Tensor) -> torch.Tensor:
        """Expert ``index`` applied to ``tokens`` of shape ``(n, dim)``."""
        hidden = tokens @ self.w_in[index]
        if self.kind == "swiglu":
            gate, up = hidden.chunk(2, dim=-1)
            return (F.silu(gate) * up) @ self.w_out[index]
        return self.activation(hidden + self.b_in[index]) @ self.w_out[index] + self.b_out[index]

    def sizes(self, kept: Keep) -> tuple[torch.Tensor, torch.Tensor]:
        """``(E,)`` each: an expert's MACs per token (its kept weights; biases add none) and its active
        parameters (those weights and its biases), counting only what ``kept`` keeps (see :mod:`subnets.cost`)."""
        macs = kept(self.w_in).flatten(1).sum(1) + kept(self.w_out).flatten(1).sum(1)
        biases = [kept(b).flatten(1).sum(1) for b in (self.b_in, self.b_out) if b is not None]
        return macs, macs + sum(biases, torch.zeros_like(macs))

    def forward(self, tokens: torch.Tensor, counts: list[int], index: torch.Tensor | None = None,
                weights: torch.Tensor | None = None) -> torch.Tensor:
        """Run expert i on the i-th slice of ``tokens`` (sorted by expert; ``counts[i]`` rows each).

        With ``index`` (a row of ``tokens`` for each dispatched pair, sorted by expert, ``counts[i]`` for
        expert i), expert i runs on the rows ``tokens[index[slice i]]`` instead, and each output, scaled by
        its entry of ``weights`` if given, is added into its row of a result shaped like ``tokens``: gather,
        experts and combine in one pass (see ``_ExpertsFunction``)."""
        counts = [int(c) for c in counts]
        if index is None:
            if sum(counts) != len(tokens):
                raise ValueError(f"counts add up to {sum(counts)}, but there are {len(tokens)} tokens")
            index = torch.arange(len(tokens), device=tokens.device)
        index = index.long()
        params = (self.w_in, self.w_out, self.b_in, self.b_out)
        save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (tokens, weights, *params))
        compiled = None
        if tokens.device.type == "cpu" and all(t is None or t.dtype == torch.float32
                                               for t in (tokens, weights, *params)):
            compiled = cpu_kernel.kernel()
        plan = _Plan(index, counts, self.kind, self.activation, save, compiled)
        return _ExpertsFunction.apply(tokens, weights, *params, plan)


class MoE(nn.Module):
    """A mixture-of-experts feed-forward layer for inputs ``(..., dim)``.

    ``num_experts`` routed experts of width ``hidden``, ``k`` per token, plus ``shared`` always-on experts
    and ``null`` zero-output experts the router may choose (indices ``num_experts`` and up). After a forward
    pass, ``last_routing`` holds the routing decision, with ``kept`` marking the (token, choice) pairs that
    were computed (for balancing losses and diagnostics, and for :func:`subnets.cost.measure`, which counts each
    token's MACs and active parameters from it).
    """

    def __init__(self, dim: int, hidden: int, num_experts: int, k: int, *, shared: int = 0, null: int = 0,
                 capacity_factor: float | None = None, kind: Literal["mlp", "swiglu"] = "mlp",
                 activation: Literal["gelu", "relu"] = "gelu", score: Literal["softmax", "sigmoid"] = "softmax",
                 normalize: bool = True) -> None:
        super().__init__()
        if shared < 0:
            raise ValueError(f"shared must be non-negative, got {shared}")
        if null < 0:
            raise ValueError(f"null must be non-negative, got {null}")
        if capacity_factor is not None and not capacity_factor > 0:
            raise ValueError(f"capacity_factor must be positive (or None for no dropping), got {capacity_factor}")
        self.num_experts, self.capacity_factor = num_experts, capacity_factor
        self.router = Router(dim, num_experts + null, k, score, normalize)
        self.experts = Experts(num_experts, dim, hidden, kind, activation)
        self.shared = Experts(shared, dim, hidden, kind, activation) if shared else None
        self.last_routing: Routing | None = None

    def capacity(self, num_tokens: int) -> int | None:
        """Most tokens one expert takes from a batch of ``num_tokens`` (None: no limit)."""
        if self.capacity_factor is None:
            return None
        return math.ceil(self.capacity_factor * num_tokens * self.router.k / self.num_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(-1, x.shape[-1])
        routing = self.router(tokens)
        num_tokens, k = routing.experts.shape
        order, counts, routing.kept = dispatch(routing.experts, self.num_experts, self.router.num_experts,
                                               self.capacity(num_tokens))
        self.last_routing = routing
        combined = self.experts(tokens, counts, index=order // k, weights=routing.weights.reshape(-1)[order])
        if self.shared is not None:
            for i in range(self.shared.num_experts):
                combined = combined + self.shared.expert(i, tokens)
        return combined.reshape(x.shape)

    def forward_cost(self, inputs: tuple, kwargs: dict, output: torch.Tensor, kept: Keep) -> RowCost:
        """Per token, from the routing of the forward call just made (:mod:`subnets.cost`): the router's product,
        the routed experts that computed the token (a null expert or a pair dropped for capacity costs nothing)
        and every shared expert."""
        routing = self.last_routing
        router = kept(self.router.gate.weight).sum()
        macs, params = self.experts.sizes(kept)
        chosen = routing.experts.clamp(max=self.num_experts - 1)  # null choices are never kept
        token_macs = router + (macs[chosen] * routing.kept).sum(1)
        token_params = router + (params[chosen] * routing.kept).sum(1)
        if self.shared is not None:
            shared_macs, shared_params = self.shared.sizes(kept)
            token_macs, token_params = token_macs + shared_macs.sum(), token_params + shared_params.sum()
        return RowCost(token_macs, token_params)
