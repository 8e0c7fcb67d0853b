"""subnets.pooling against naive loop references written from the spec: spatial, token and layer ops, gradients,
padding invariance, SPP output sizes, input checks and swap_pooling."""

from __future__ import annotations

import itertools
import math
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck
from torch.func import functional_call

from subnets.models import build_model
from subnets.pooling import (
    AttentionLayers,
    AttentionPool,
    AvgPool,
    ConvPool,
    FirstToken,
    GatedPool,
    GeM,
    GroupGeM,
    LastToken,
    LpPool,
    MaxLayers,
    MaxPool,
    MaxTokens,
    MeanLayers,
    MeanTokens,
    MixedPool,
    MultiHeadAttentionPool,
    SoftPool,
    SpatialPyramidPool,
    StochasticPool,
    TreePool,
    WeightedLayers,
    create_pool,
    pool_names,
    swap_pooling,
)

DTYPE = torch.float64
CHANNELS = 4
GROUPS = 2  # group-gem: channels 0-1 use p[0], channels 2-3 use p[1]
SHAPES = {1: (2, CHANNELS, 9), 2: (2, CHANNELS, 7, 6)}  # sizes not divisible by the kernels: floor mode

# Spatial ops compared window by window; "lp-learn" is LpPool(p=3.5, learn_p=True), "stochastic" in eval mode.
SPATIAL_CASES = ["avg", "max", "lp", "lp-learn", "gem", "group-gem", "softpool", "mixed", "gated", "tree",
                 "stochastic", "conv"]
# (kernel_size, stride) with stride None left to its default; "global" = global_pool=True.
WINDOWS: list[tuple[int, int | None] | str] = [(2, None), (3, None), (2, 1), (3, 2), (3, 1), "global"]
WINDOW_IDS = ["k2", "k3", "k2s1", "k3s2-overlap", "k3s1-overlap", "global"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """The tensors here are tiny: one intra-op thread avoids thread spin-up costs on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------------------------
# Naive references: explicit loops over windows / tokens / layers with the spec's formulas.
# ----------------------------------------------------------------------------------------------------------------


def _sigmoid(z: torch.Tensor) -> torch.Tensor:
    return 1.0 / (1.0 + torch.exp(-z))


def _softmax(scores: torch.Tensor) -> torch.Tensor:
    e = torch.exp(scores - scores.max())
    return e / e.sum()


def _geometry(spatial: tuple[int, ...], kernel: int | None, stride: int | None,
              global_pool: bool) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Per spatial axis: window size, stride and number of windows (floor mode, no padding)."""
    if global_pool:
        return tuple(spatial), tuple(spatial), (1,) * len(spatial)
    assert kernel is not None
    step = kernel if stride is None else stride
    ks, ss = (kernel,) * len(spatial), (step,) * len(spatial)
    return ks, ss, tuple((size - kernel) // step + 1 for size in spatial)


def _windows(spatial: tuple[int, ...], kernel: int | None, stride: int | None,
             global_pool: bool) -> list[tuple[tuple[int, ...], tuple[slice, ...]]]:
    """(output position, slices of the window) for every window, row-major."""
    ks, ss, outs = _geometry(spatial, kernel, stride, global_pool)
    result = []
    for pos in itertools.product(*(range(o) for o in outs)):
        result.append((pos, tuple(slice(p * s, p * s + k) for p, s, k in zip(pos, ss, ks, strict=True))))
    return result


def naive_spatial(x: torch.Tensor, kernel: int | None, stride: int | None, global_pool: bool,
                  fn: Callable[[torch.Tensor, int], torch.Tensor]) -> torch.Tensor:
    """Apply ``fn(window values flattened row-major, channel)`` to every window of every (sample, channel)."""
    n_batch, n_channels, *spatial = x.shape
    _, _, outs = _geometry(tuple(spatial), kernel, stride, global_pool)
    out = torch.zeros(n_batch, n_channels, *outs, dtype=x.dtype)
    for n in range(n_batch):
        for c in range(n_channels):
            for pos, window in _windows(tuple(spatial), kernel, stride, global_pool):
                out[(n, c, *pos)] = fn(x[(n, c, *window)].reshape(-1), c)
    return out.reshape(n_batch, n_channels) if global_pool else out


def naive_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, kernel: int | None, stride: int | None,
               global_pool: bool) -> torch.Tensor:
    """Strided convolution: every output channel sums weight * window over all input channels, plus bias."""
    n_batch, _, *spatial = x.shape
    _, _, outs = _geometry(tuple(spatial), kernel, stride, global_pool)
    out_channels = weight.shape[0]
    out = torch.zeros(n_batch, out_channels, *outs, dtype=x.dtype)
    for n in range(n_batch):
        for co in range(out_channels):
            for pos, window in _windows(tuple(spatial), kernel, stride, global_pool):
                out[(n, co, *pos)] = (weight[co] * x[(n, slice(None), *window)]).sum() + bias[co]
    return out.reshape(n_batch, out_channels) if global_pool else out


def _lp(v: torch.Tensor, p: float | torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return (v.clamp(min=eps) ** p).mean() ** (1.0 / p)


def _stochastic_eval(v: torch.Tensor) -> torch.Tensor:
    a = v.clamp(min=0)
    total = a.sum()
    return torch.zeros((), dtype=v.dtype) if total == 0 else (a * a).sum() / total


def window_fn(name: str, m: nn.Module) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """The spec's per-window formula for op ``name``, reading the module's (randomised) parameters."""
    if name == "avg":
        return lambda v, c: v.mean()
    if name == "max":
        return lambda v, c: v.max()
    if name == "lp":
        return lambda v, c: _lp(v, 2.0)
    if name == "lp-learn":
        return lambda v, c: _lp(v, 3.5)
    if name == "gem":
        return lambda v, c: _lp(v, m.p[0])
    if name == "group-gem":
        return lambda v, c: _lp(v, m.p[c // (CHANNELS // GROUPS)])
    if name == "softpool":
        return lambda v, c: (_softmax(v) * v).sum()
    if name == "mixed":
        return lambda v, c: _sigmoid(m.alpha.reshape(())) * v.max() + (1 - _sigmoid(m.alpha.reshape(()))) * v.mean()

    if name == "gated":

        def gated(v: torch.Tensor, c: int) -> torch.Tensor:
            a = _sigmoid((m.gate.reshape(-1) * v).sum())
            return a * v.max() + (1 - a) * v.mean()

        return gated
    if name == "tree":

        def tree(v: torch.Tensor, c: int) -> torch.Tensor:
            g = _sigmoid((m.gate.reshape(-1) * v).sum())
            v1, v2 = m.leaves[0].reshape(-1), m.leaves[1].reshape(-1)
            return g * (v1 * v).sum() + (1 - g) * (v2 * v).sum()

        return tree
    if name == "stochastic":
        return lambda v, c: _stochastic_eval(v)
    raise AssertionError(name)


def naive_adaptive(x: torch.Tensor, level: int, mode: str) -> torch.Tensor:
    """PyTorch's adaptive pooling bins: start = floor(i * L / l), end = ceil((i + 1) * L / l), per axis."""
    n_batch, n_channels, *spatial = x.shape
    out = torch.zeros(n_batch, n_channels, *(level,) * len(spatial), dtype=x.dtype)
    for n in range(n_batch):
        for c in range(n_channels):
            for pos in itertools.product(range(level), repeat=len(spatial)):
                window = tuple(slice(i * size // level, -((-(i + 1) * size) // level))
                               for i, size in zip(pos, spatial, strict=True))
                v = x[(n, c, *window)].reshape(-1)
                out[(n, c, *pos)] = v.max() if mode == "max" else v.mean()
    return out


def naive_spp(x: torch.Tensor, levels: tuple[int, ...], mode: str) -> torch.Tensor:
    return torch.cat([naive_adaptive(x, level, mode).reshape(x.shape[0], -1) for level in levels], dim=1)


def _real(mask: torch.Tensor | None, n: int, length: int) -> list[int]:
    return list(range(length)) if mask is None else [t for t in range(length) if bool(mask[n, t])]


def naive_tokens(name: str, m: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Token by token over the real tokens of each row; rows with none give zeros."""
    n_batch, length, d = x.shape
    out = torch.zeros(n_batch, d, dtype=x.dtype)
    for n in range(n_batch):
        real = _real(mask, n, length)
        if not real:
            continue
        tokens = [x[n, t] for t in real]
        if name == "mean":
            total = torch.zeros(d, dtype=x.dtype)
            for tok in tokens:
                total = total + tok
            out[n] = total / len(tokens)
        elif name == "max":
            best = tokens[0].clone()
            for tok in tokens[1:]:
                best = torch.where(tok > best, tok, best)
            out[n] = best
        elif name == "first":
            out[n] = tokens[0]
        elif name == "last":
            out[n] = tokens[-1]
        elif name == "attention":
            scores = torch.stack([(tok * m.query).sum() / math.sqrt(d) for tok in tokens])
            w = _softmax(scores)
            out[n] = sum(w[i] * tokens[i] for i in range(len(tokens)))
        elif name == "multihead":
            heads = m.query.shape[0]
            dh = d // heads
            keys = [m.key.weight @ tok for tok in tokens]
            values = [m.value.weight @ tok for tok in tokens]
            parts = []
            for h in range(heads):
                hs = slice(h * dh, (h + 1) * dh)
                scores = torch.stack([(m.query[h] * k[hs]).sum() / math.sqrt(dh) for k in keys])
                w = _softmax(scores)
                parts.append(sum(w[i] * values[i][hs] for i in range(len(values))))
            out[n] = m.out.weight @ torch.cat(parts) + m.out.bias
        else:
            raise AssertionError(name)
    return out


def naive_layers(name: str, m: nn.Module, hidden: list[torch.Tensor]) -> torch.Tensor:
    """Per (sample, token) over the layers."""
    n_batch, length, d = hidden[0].shape
    out = torch.zeros(n_batch, length, d, dtype=hidden[0].dtype)
    for n in range(n_batch):
        for t in range(length):
            hs = [h[n, t] for h in hidden]
            if name == "mean":
                out[n, t] = sum(hs) / len(hs)
            elif name == "max":
                best = hs[0].clone()
                for h in hs[1:]:
                    best = torch.where(h > best, h, best)
                out[n, t] = best
            elif name == "weighted":
                w = _softmax(m.logits)
                out[n, t] = m.gamma.reshape(()) * sum(w[i] * hs[i] for i in range(len(hs)))
            elif name == "attention":
                w = _softmax(torch.stack([(h * m.query).sum() / math.sqrt(d) for h in hs]))
                out[n, t] = sum(w[i] * hs[i] for i in range(len(hs)))
            else:
                raise AssertionError(name)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Building modules with non-default random parameters.
# ----------------------------------------------------------------------------------------------------------------


def make_spatial(name: str, dim: int, window: tuple[int, int | None] | str,
                 spatial: tuple[int, ...]) -> tuple[nn.Module, int | None, int | None, bool]:
    """create_pool for case ``name`` with its parameters set to random non-default values, in float64."""
    options: dict[str, object] = {}
    if window == "global":
        kernel, stride, global_pool = None, None, True
        options["global_pool"] = True
        if name in ("gated", "tree", "conv"):
            options["size"] = spatial[0] if dim == 1 else tuple(spatial)
    else:
        assert isinstance(window, tuple)
        kernel, stride = window
        global_pool = False
        options["kernel_size"] = kernel
        if stride is not None:
            options["stride"] = stride
    op = name
    if name == "lp-learn":
        op = "lp"
        options.update(p=3.5, learn_p=True)
    if name == "group-gem":
        options.update(channels=CHANNELS, groups=GROUPS)
    if name == "conv":
        options["channels"] = CHANNELS
    m = create_pool(op, dim=dim, **options).to(DTYPE)
    ks = tuple(spatial) if global_pool else (kernel,) * dim
    with torch.no_grad():
        if name == "gem":
            assert m.p.shape == (1,)
            m.p.fill_(2.5)
        elif name == "group-gem":
            assert m.p.shape == (GROUPS,)
            m.p.copy_(torch.tensor([2.5, 1.5]))
        elif name == "mixed":
            assert m.alpha.numel() == 1
            m.alpha.fill_(0.3)
        elif name == "gated":
            assert tuple(m.gate.shape) == ks
            m.gate.copy_(torch.randn(ks, dtype=DTYPE) * 0.5)
        elif name == "tree":
            assert tuple(m.gate.shape) == ks
            assert tuple(m.leaves.shape) == (2, *ks)
            m.gate.copy_(torch.randn(ks, dtype=DTYPE) * 0.5)
            m.leaves.copy_(torch.randn(2, *ks, dtype=DTYPE))
        elif name == "conv":
            m.conv.bias.copy_(torch.randn(CHANNELS, dtype=DTYPE))
    if name == "stochastic":
        m.eval()
    return m, kernel, stride, global_pool


def gradcheck_module(m: nn.Module, x: torch.Tensor, **kwargs: object) -> None:
    """gradcheck of ``m(x, **kwargs)`` with respect to the input and every parameter of ``m`` (float64)."""
    named = [(n, p.detach().clone().requires_grad_(True)) for n, p in m.named_parameters()]
    names = [n for n, _ in named]
    params = [p for _, p in named]

    def f(inp: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        return functional_call(m, dict(zip(names, ps, strict=True)), (inp,), kwargs)

    assert gradcheck(f, (x.detach().clone().requires_grad_(True), *params), eps=1e-6, atol=1e-6, rtol=1e-4)


def distinct_positive(*shape: int) -> torch.Tensor:
    """Distinct values in [0.5, 1.5): no ties for max, far from the eps clamp of lp/GeM."""
    count = math.prod(shape)
    return (torch.randperm(count, dtype=DTYPE) / count + 0.5).reshape(shape)


# ----------------------------------------------------------------------------------------------------------------
# Spatial ops vs the naive reference.
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("window", WINDOWS, ids=WINDOW_IDS)
@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("name", SPATIAL_CASES)
def test_spatial_op_matches_naive_window_loop(name: str, dim: int, window: tuple[int, int | None] | str) -> None:
    torch.manual_seed(zlib.crc32(f"{name}-{dim}-{window}".encode()))
    shape = SHAPES[dim]
    m, kernel, stride, global_pool = make_spatial(name, dim, window, shape[2:])
    x = torch.randn(shape, dtype=DTYPE)
    with torch.no_grad():
        got = m(x)
        if name == "conv":
            want = naive_conv(x, m.conv.weight, m.conv.bias, kernel, stride, global_pool)
        else:
            want = naive_spatial(x, kernel, stride, global_pool, window_fn(name, m))
    assert got.shape == want.shape
    if global_pool:
        assert got.shape == shape[:2]
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("name", [n for n in SPATIAL_CASES if n != "lp-learn"] + ["spp"])
def test_spatial_op_float32_keeps_dtype(name: str, dim: int) -> None:
    options: dict[str, object] = {"channels": CHANNELS} if name in ("group-gem", "conv") else {}
    if name == "group-gem":
        options["groups"] = GROUPS
    m = create_pool(name, dim=dim, **options)
    x = torch.randn(SHAPES[dim])
    y = m(x)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()


def test_default_kernel_and_stride_are_two_like_maxpool() -> None:
    x = torch.randn(2, 3, 9, 7)
    torch.testing.assert_close(create_pool("max", dim=2)(x), nn.MaxPool2d(2)(x))
    torch.testing.assert_close(create_pool("max", dim=2, kernel_size=3)(x), nn.MaxPool2d(3)(x))
    x1 = torch.randn(2, 3, 11)
    torch.testing.assert_close(create_pool("avg", dim=1, kernel_size=3, stride=2)(x1), nn.AvgPool1d(3, 2)(x1))


def test_global_gated_pool_accepts_int_size_for_dim2() -> None:
    torch.manual_seed(1)
    m = create_pool("gated", dim=2, global_pool=True, size=5).to(DTYPE)
    assert tuple(m.gate.shape) == (5, 5)
    with torch.no_grad():
        m.gate.copy_(torch.randn(5, 5, dtype=DTYPE))
        x = torch.randn(2, 3, 5, 5, dtype=DTYPE)
        torch.testing.assert_close(m(x), naive_spatial(x, None, None, True, window_fn("gated", m)))


def test_learned_parameters_have_spec_shapes_and_initial_values() -> None:
    gem = create_pool("gem", dim=2)
    assert isinstance(gem.p, nn.Parameter) and gem.p.shape == (1,) and float(gem.p.detach()) == pytest.approx(3.0)
    gg = create_pool("group-gem", dim=2, channels=8, groups=4)
    assert isinstance(gg.p, nn.Parameter) and gg.p.shape == (4,)
    torch.testing.assert_close(gg.p.detach(), torch.full((4,), 3.0))
    mixed = create_pool("mixed", dim=1)
    assert isinstance(mixed.alpha, nn.Parameter) and mixed.alpha.numel() == 1 and float(mixed.alpha.detach()) == 0.0
    assert tuple(create_pool("gated", dim=2, kernel_size=3).gate.shape) == (3, 3)
    assert tuple(create_pool("gated", dim=1, kernel_size=3).gate.shape) == (3,)
    tree = create_pool("tree", dim=2, kernel_size=2)
    assert tuple(tree.gate.shape) == (2, 2) and tuple(tree.leaves.shape) == (2, 2, 2)
    conv = create_pool("conv", dim=1, channels=5, kernel_size=3, stride=2).conv
    assert isinstance(conv, nn.Conv1d)
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride) == (5, 5, (3,), (2,))
    weighted = WeightedLayers(3)
    torch.testing.assert_close(weighted.logits.detach(), torch.zeros(3))
    assert float(weighted.gamma.detach()) == 1.0
    assert not any(True for _ in LpPool(dim=2).parameters())
    assert MultiHeadAttentionPool(8).query.shape == (4, 2)
    assert MultiHeadAttentionPool(12, heads=3).query.shape == (3, 4)
    assert AttentionPool(8).query.shape == (8,)
    assert AttentionLayers(8).query.shape == (8,)


def test_create_pool_returns_the_spec_classes() -> None:
    classes = {"avg": AvgPool, "max": MaxPool, "lp": LpPool, "gem": GeM, "softpool": SoftPool, "mixed": MixedPool,
               "gated": GatedPool, "tree": TreePool, "stochastic": StochasticPool, "spp": SpatialPyramidPool}
    for dim in (1, 2):
        for name, cls in classes.items():
            assert isinstance(create_pool(name, dim=dim), cls), (name, dim)
        assert isinstance(create_pool("group-gem", dim=dim, channels=8), GroupGeM)
        assert isinstance(create_pool("conv", dim=dim, channels=3), ConvPool)
        assert set(classes) | {"group-gem", "conv"} <= set(pool_names(dim))
    tokens = {"mean": MeanTokens, "max": MaxTokens, "first": FirstToken, "last": LastToken}
    for name, cls in tokens.items():
        assert isinstance(create_pool(name, dim="tokens"), cls)
    assert set(tokens) | {"attention", "multihead"} <= set(pool_names("tokens"))
    assert isinstance(create_pool("mean", dim="layers"), MeanLayers)
    assert isinstance(create_pool("max", dim="layers"), MaxLayers)
    assert isinstance(create_pool("weighted", dim="layers", num_layers=3), WeightedLayers)
    assert {"mean", "max", "weighted", "attention"} <= set(pool_names("layers"))


# ----------------------------------------------------------------------------------------------------------------
# Stochastic pooling in training mode.
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("dim", "kernel", "stride"), [(1, 3, 2), (2, 2, 1), (2, 3, 2)])
def test_stochastic_training_output_is_one_of_the_windows_relu_values(dim: int, kernel: int, stride: int) -> None:
    torch.manual_seed(3)
    m = create_pool("stochastic", dim=dim, kernel_size=kernel, stride=stride).to(DTYPE)
    m.train()
    x = torch.randn(SHAPES[dim], dtype=DTYPE)
    x[0, 0] = -x[0, 0].abs()  # a whole channel <= 0: every window must give 0
    y = m(x)
    spatial = tuple(x.shape[2:])
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            for pos, window in _windows(spatial, kernel, stride, False):
                a = x[(n, c, *window)].reshape(-1).clamp(min=0)
                value = y[(n, c, *pos)]
                if a.sum() == 0:
                    assert value == 0
                else:
                    assert torch.isclose(a[a > 0], value, rtol=0, atol=1e-12).any(), (a, value)


@pytest.mark.parametrize(("dim", "window_values"), [(2, [[0.5, 1.0], [2.0, -1.0]]), (1, [3.0, -2.0, 1.0])])
def test_stochastic_training_picks_each_value_with_probability_proportional_to_it(
        dim: int, window_values: list) -> None:
    torch.manual_seed(4)
    copies = 20000
    window = torch.tensor(window_values, dtype=DTYPE)
    kernel = window.shape[0]
    x = window.expand(copies, 1, *window.shape).contiguous()
    m = create_pool("stochastic", dim=dim, kernel_size=kernel).to(DTYPE)
    m.train()
    y = m(x).reshape(-1)
    assert y.shape == (copies,)
    a = window.reshape(-1).clamp(min=0)
    for value in a.tolist():
        p = value / float(a.sum())
        freq = float((y == value).double().mean())
        if p == 0:
            assert freq == 0, f"value {value} has probability 0 but was drawn"
        else:
            se = math.sqrt(p * (1 - p) / copies)
            assert abs(freq - p) < 5 * se, (value, freq, p)
    # every draw is one of the positive values
    assert bool(torch.isin(y, a[a > 0]).all())


def test_stochastic_training_with_all_nonpositive_window_gives_zero() -> None:
    m = create_pool("stochastic", dim=2, kernel_size=2)
    m.train()
    x = -torch.rand(3, 2, 4, 4)
    x[0, 0, 0, 0] = 0.0
    y = m(x)
    assert torch.equal(y, torch.zeros(3, 2, 2, 2))


# ----------------------------------------------------------------------------------------------------------------
# Spatial pyramid pooling.
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("levels", [(1, 2, 4), (1, 3)])
@pytest.mark.parametrize(("dim", "size"), [(1, (9,)), (1, (5,)), (2, (7, 5)), (2, (6, 9))])
def test_spp_matches_naive_adaptive_bins(dim: int, size: tuple[int, ...], levels: tuple[int, ...], mode: str) -> None:
    torch.manual_seed(5)
    m = create_pool("spp", dim=dim, levels=levels, mode=mode)
    x = torch.randn(2, 3, *size, dtype=DTYPE)
    got = m(x)
    assert got.shape == (2, 3 * sum(level**dim for level in levels))
    torch.testing.assert_close(got, naive_spp(x, levels, mode), rtol=1e-9, atol=1e-10)


def test_spp_default_is_levels_1_2_4_max() -> None:
    torch.manual_seed(6)
    x = torch.randn(2, 3, 7, 5, dtype=DTYPE)
    torch.testing.assert_close(create_pool("spp", dim=2)(x), naive_spp(x, (1, 2, 4), "max"))


@pytest.mark.parametrize(("dim", "sizes"), [(2, [(7, 7), (13, 9), (32, 32)]), (1, [(9,), (20,), (40,)])])
def test_spp_output_length_is_the_same_for_every_input_size(dim: int, sizes: list[tuple[int, ...]]) -> None:
    m = create_pool("spp", dim=dim)
    expected = (2, 3 * sum(level**dim for level in (1, 2, 4)))
    for size in sizes:
        assert m(torch.randn(2, 3, *size)).shape == expected, size


# ----------------------------------------------------------------------------------------------------------------
# Gradients.
# ----------------------------------------------------------------------------------------------------------------

GRAD_CASES = ["gem", "group-gem", "lp-learn", "softpool", "mixed", "gated", "tree", "conv"]


@pytest.mark.parametrize("window", [(3, 2), (2, 1), "global"], ids=["k3s2-overlap", "k2s1-overlap", "global"])
@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("name", GRAD_CASES)
def test_learned_spatial_op_passes_gradcheck_for_input_and_parameters(
        name: str, dim: int, window: tuple[int, int] | str) -> None:
    torch.manual_seed(7)
    shape = (1, CHANNELS, 7) if dim == 1 else (1, CHANNELS, 5, 4)
    m, *_ = make_spatial(name, dim, window, shape[2:])
    if name != "softpool":  # SoftPool has no parameters in the spec: gradcheck on the input only
        assert any(True for _ in m.parameters()), f"{name} should have learnable parameters"
    gradcheck_module(m, distinct_positive(*shape))


def test_lp_with_learn_p_has_a_learnable_p_and_without_it_none() -> None:
    assert len(list(create_pool("lp", dim=2, learn_p=True).parameters())) == 1
    assert len(list(create_pool("lp", dim=2).parameters())) == 0


def _token_mask() -> torch.Tensor:
    return torch.tensor([[True, True, True, True, True],
                         [True, False, True, True, False],
                         [False, False, False, True, False]])


def test_attention_token_pools_pass_gradcheck_for_input_and_parameters() -> None:
    torch.manual_seed(8)
    mask = _token_mask()
    x = torch.randn(3, 5, 8, dtype=DTYPE)
    att = AttentionPool(8).to(DTYPE)
    with torch.no_grad():
        att.query.copy_(torch.randn(8, dtype=DTYPE))
    gradcheck_module(att, x, mask=mask)
    mh = MultiHeadAttentionPool(8, heads=2).to(DTYPE)
    with torch.no_grad():
        mh.query.copy_(torch.randn(2, 4, dtype=DTYPE))
    gradcheck_module(mh, x, mask=mask)


def test_learned_layer_pools_pass_gradcheck_for_input_and_parameters() -> None:
    torch.manual_seed(9)
    hidden = torch.randn(3, 2, 4, 6, dtype=DTYPE)
    weighted = WeightedLayers(3).to(DTYPE)
    with torch.no_grad():
        weighted.logits.copy_(torch.randn(3, dtype=DTYPE))
        weighted.gamma.fill_(1.7)
    gradcheck_module(weighted, hidden)
    att = AttentionLayers(6).to(DTYPE)
    with torch.no_grad():
        att.query.copy_(torch.randn(6, dtype=DTYPE))
    gradcheck_module(att, hidden)


# ----------------------------------------------------------------------------------------------------------------
# Token ops.
# ----------------------------------------------------------------------------------------------------------------

TOKEN_POOLS = ["mean", "max", "first", "last", "attention", "multihead"]
D = 8


def make_token_op(name: str) -> nn.Module:
    if name == "attention":
        m = AttentionPool(D)
        with torch.no_grad():
            m.query.copy_(torch.randn(D))
    elif name == "multihead":
        m = MultiHeadAttentionPool(D)  # heads=4 by default
        with torch.no_grad():
            m.query.copy_(torch.randn(m.query.shape))
            m.out.bias.copy_(torch.randn(D))
    else:
        m = create_pool(name, dim="tokens")
    return m.to(DTYPE)


@pytest.mark.parametrize("name", TOKEN_POOLS)
def test_token_op_matches_naive_loop_with_mask(name: str) -> None:
    torch.manual_seed(10)
    m = make_token_op(name)
    x = torch.randn(4, 6, D, dtype=DTYPE)
    mask = torch.tensor([[True] * 6,
                         [False, True, True, False, True, False],  # real tokens not at the start or the end
                         [True, True, True, False, False, False],
                         [False, False, False, False, True, False]])
    with torch.no_grad():
        torch.testing.assert_close(m(x, mask), naive_tokens(name, m, x, mask), rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(m(x), naive_tokens(name, m, x, None), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", TOKEN_POOLS)
def test_token_op_mask_none_equals_all_true_mask(name: str) -> None:
    torch.manual_seed(11)
    m = make_token_op(name)
    x = torch.randn(3, 5, D, dtype=DTYPE)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m(x, torch.ones(3, 5, dtype=torch.bool)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", TOKEN_POOLS)
def test_padded_tokens_never_change_the_output(name: str) -> None:
    torch.manual_seed(12)
    m = make_token_op(name)
    lengths = [5, 3, 1]
    x = torch.randn(3, 5, D, dtype=DTYPE)
    total = 9
    padded = torch.empty(3, total, D, dtype=DTYPE)
    pad_mask = torch.zeros(3, total, dtype=torch.bool)
    with torch.no_grad():
        for n, length in enumerate(lengths):
            # real tokens at random positions (in order), huge random values everywhere else
            where = torch.randperm(total)[:length].sort().values
            padded[n] = torch.randn(total, D, dtype=DTYPE) * 1e6
            padded[n, where] = x[n, :length]
            pad_mask[n, where] = True
        got = m(padded, pad_mask)
        for n, length in enumerate(lengths):
            alone = m(x[n:n + 1, :length])  # no padding at all, mask=None
            torch.testing.assert_close(got[n:n + 1], alone, rtol=1e-9, atol=1e-9)
        compact_mask = torch.arange(5)[None, :] < torch.tensor(lengths)[:, None]
        torch.testing.assert_close(got, m(x, compact_mask), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", TOKEN_POOLS)
def test_token_op_row_without_real_tokens_gives_zeros(name: str) -> None:
    torch.manual_seed(13)
    m = make_token_op(name)
    x = torch.randn(3, 4, D, dtype=DTYPE) * 100
    mask = torch.tensor([[True, False, True, True], [False] * 4, [False, False, False, True]])
    with torch.no_grad():
        y = m(x, mask)
    assert torch.isfinite(y).all()
    assert torch.equal(y[1], torch.zeros(D, dtype=DTYPE))
    assert (y[0] != 0).any() and (y[2] != 0).any()


@pytest.mark.parametrize("name", TOKEN_POOLS)
def test_token_op_wrong_rank_raises_value_error(name: str) -> None:
    m = make_token_op(name)
    with pytest.raises(ValueError):
        m(torch.randn(5, D, dtype=DTYPE))
    with pytest.raises(ValueError):
        m(torch.randn(2, 3, 5, D, dtype=DTYPE))


# ----------------------------------------------------------------------------------------------------------------
# Layer ops.
# ----------------------------------------------------------------------------------------------------------------

LAYER_POOLS = ["mean", "max", "weighted", "attention"]


def make_layer_op(name: str, num_layers: int, d: int) -> nn.Module:
    if name == "weighted":
        m = WeightedLayers(num_layers)
        with torch.no_grad():
            m.logits.copy_(torch.randn(num_layers))
            m.gamma.fill_(1.7)
    elif name == "attention":
        m = AttentionLayers(d)
        with torch.no_grad():
            m.query.copy_(torch.randn(d))
    else:
        m = create_pool(name, dim="layers")
    return m.to(DTYPE)


@pytest.mark.parametrize("name", LAYER_POOLS)
def test_layer_op_matches_naive_loop_for_list_and_stacked_inputs(name: str) -> None:
    torch.manual_seed(14)
    m = make_layer_op(name, 3, 6)
    hidden = [torch.randn(2, 4, 6, dtype=DTYPE) for _ in range(3)]
    with torch.no_grad():
        want = naive_layers(name, m, hidden)
        torch.testing.assert_close(m(hidden), want, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(m(tuple(hidden)), want, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(m(torch.stack(hidden)), want, rtol=1e-9, atol=1e-10)


# ----------------------------------------------------------------------------------------------------------------
# Bad input.
# ----------------------------------------------------------------------------------------------------------------


def test_unknown_name_raises_value_error_listing_known_names() -> None:
    with pytest.raises(ValueError) as info:
        create_pool("nope", dim=2)
    assert "gem" in str(info.value) and "softpool" in str(info.value)
    with pytest.raises(ValueError) as info:
        create_pool("nope", dim="tokens")
    assert "multihead" in str(info.value) and "first" in str(info.value)
    with pytest.raises(ValueError) as info:
        create_pool("nope", dim="layers")
    assert "weighted" in str(info.value)


ALL_SPATIAL = ["avg", "max", "lp", "gem", "group-gem", "softpool", "mixed", "gated", "tree", "stochastic", "conv",
               "spp"]


@pytest.mark.parametrize("name", ALL_SPATIAL)
def test_wrong_rank_input_raises_value_error_naming_the_expected_shape(name: str) -> None:
    options: dict[str, object] = {"channels": 4} if name in ("group-gem", "conv") else {}
    m2 = create_pool(name, dim=2, **options)
    with pytest.raises(ValueError) as info:
        m2(torch.randn(2, 4, 7))
    assert "N, C, H, W" in str(info.value) and "2, 4, 7" in str(info.value)
    m1 = create_pool(name, dim=1, **options)
    with pytest.raises(ValueError) as info:
        m1(torch.randn(2, 4, 7, 6))
    assert "N, C, L" in str(info.value) and "2, 4, 7, 6" in str(info.value)


def test_group_gem_with_channels_not_divisible_by_groups_raises_value_error() -> None:
    with pytest.raises(ValueError):
        create_pool("group-gem", dim=2, channels=6, groups=4)
    with pytest.raises(ValueError):
        GroupGeM(dim=1, channels=5, groups=2)


@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("name", ["gated", "tree", "conv"])
def test_window_shaped_filters_with_global_pool_need_size(name: str, dim: int) -> None:
    options: dict[str, object] = {"channels": 4} if name == "conv" else {}
    with pytest.raises(ValueError):
        create_pool(name, dim=dim, global_pool=True, **options)


# ----------------------------------------------------------------------------------------------------------------
# swap_pooling.
# ----------------------------------------------------------------------------------------------------------------


def test_swap_pooling_cnn1d_to_gem_replaces_both_pools_and_still_runs() -> None:
    torch.manual_seed(15)
    model = build_model("cnn1d", (1, 40), 10)
    x = torch.randn(3, 1, 40)
    assert model(x).shape == (3, 10)
    assert swap_pooling(model, "gem") == ["pool1", "pool2"]
    assert isinstance(model.pool1, GeM) and isinstance(model.pool2, GeM)
    assert model.pool1.p is not model.pool2.p
    assert model(x).shape == (3, 10)
    assert model.pool1(torch.rand(2, 32, 40)).shape == (2, 32, 20)  # kernel 2, stride 2 kept


def test_swap_pooling_cnn1d_to_conv_uses_the_conv_channels() -> None:
    torch.manual_seed(16)
    model = build_model("cnn1d", (1, 40), 10)
    assert swap_pooling(model, "conv") == ["pool1", "pool2"]
    for pool in (model.pool1, model.pool2):
        assert isinstance(pool, ConvPool) and isinstance(pool.conv, nn.Conv1d)
        assert (pool.conv.in_channels, pool.conv.out_channels) == (32, 32)
        assert pool.conv.kernel_size == (2,) and pool.conv.stride == (2,)
    assert model(torch.randn(3, 1, 40)).shape == (3, 10)
    small = build_model("cnn1d", (1, 40), 10, channels=8)
    swap_pooling(small, "conv")
    assert small.pool1.conv.in_channels == 8 and small.pool2.conv.out_channels == 8


def test_swap_pooling_to_max_and_avg_keeps_the_models_function() -> None:
    torch.manual_seed(17)
    model = build_model("cnn1d", (1, 40), 10)
    x = torch.randn(3, 1, 40)
    with torch.no_grad():
        before = model(x)
        assert swap_pooling(model, "max") == ["pool1", "pool2"]
        torch.testing.assert_close(model(x), before)
        # subnets pools are swapped too, keeping their kernel and stride
        assert swap_pooling(model, "avg") == ["pool1", "pool2"]
        assert isinstance(model.pool1, AvgPool)
        got = model(x)
        model.pool1, model.pool2 = nn.AvgPool1d(2), nn.AvgPool1d(2)
        torch.testing.assert_close(got, model(x))


def test_swap_pooling_conv2_model() -> None:
    torch.manual_seed(18)
    model = build_model("conv2", (1, 28, 28), 10)
    x = torch.randn(3, 1, 28, 28)
    assert swap_pooling(model, "gem") == ["pool1"]
    assert isinstance(model.pool1, GeM)
    assert model(x).shape == (3, 10)
    assert swap_pooling(model, "conv") == ["pool1"]
    assert isinstance(model.pool1.conv, nn.Conv2d)
    assert (model.pool1.conv.in_channels, model.pool1.conv.out_channels) == (64, 64)
    assert model.pool1.conv.kernel_size == (2, 2) and model.pool1.conv.stride == (2, 2)
    assert model(x).shape == (3, 10)


def test_swap_pooling_nested_model_keeps_kernel_stride_and_channels() -> None:
    torch.manual_seed(19)
    model = nn.Sequential(OrderedDict(
        features=nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.MaxPool2d(3, stride=2), nn.Conv2d(5, 6, 3),
                               nn.AvgPool2d(2)),
        flatten=nn.Flatten(),
    ))
    x = torch.randn(2, 3, 17, 15)
    with torch.no_grad():
        before = model(x)
        reference = nn.Sequential(*list(model.features)[:4], nn.MaxPool2d(2), nn.Flatten())
        want_max = reference(x)
        assert swap_pooling(model, "max") == ["features.2", "features.4"]
        assert model(x).shape == before.shape
        torch.testing.assert_close(model(x), want_max)
    swap_pooling(model, "conv")
    assert model.features[2].conv.in_channels == 5 and model.features[2].conv.kernel_size == (3, 3)
    assert model.features[2].conv.stride == (2, 2)
    assert model.features[4].conv.in_channels == 6 and model.features[4].conv.kernel_size == (2, 2)
    assert model(x).shape == before.shape


@pytest.mark.parametrize("name", ["gem", "lp", "softpool", "gated", "tree"])
def test_windows_that_tile_the_map_exactly_give_the_same_gradients_as_gradcheck(name: str) -> None:
    """When every element is in exactly one window, input gradients are written into an uninitialised tensor:
    every element must still be written."""
    torch.manual_seed(3)
    pool = create_pool(name, 2).double()
    x = torch.rand(2, 3, 8, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(pool, (x,))


def test_stochastic_gradient_reaches_one_element_per_window_on_an_exactly_tiled_map() -> None:
    torch.manual_seed(4)
    pool = create_pool("stochastic", 2)
    x = torch.rand(2, 3, 8, 6, requires_grad=True)
    out = pool(x)
    out.sum().backward()
    assert x.grad.sum().item() == (out > 0).sum().item()
    assert set(x.grad.unique().tolist()) <= {0.0, 1.0}


# ----------------------------------------------------------------------------------------------------------------
# Token ops: non-finite values in the padding.
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TOKEN_POOLS)
def test_nan_and_inf_in_the_padding_never_reach_the_output_or_the_gradient(name: str) -> None:
    """Padded positions holding NaN, +inf, -inf or huge values give the same output, and the same gradients with
    respect to the real tokens and the op's parameters, as zeros there; masking by multiplying with the mask
    would not (0 * NaN = 0 * inf = NaN)."""
    torch.manual_seed(14)
    m = make_token_op(name)
    mask = torch.tensor([[True] * 6,
                         [False, True, True, False, True, False],
                         [True, True, True, False, False, False],
                         [False, False, False, False, True, False],
                         [False] * 6])  # a row with no real token
    x = torch.randn(5, 6, D, dtype=DTYPE)
    poison = torch.tensor([math.nan, math.inf, -math.inf, 1e300, -1e300], dtype=DTYPE)
    padding = poison[torch.randint(len(poison), x.shape)]
    padding[1, 0] = math.nan  # whole padded tokens of NaN, of +inf and of -inf too
    padding[2, 3] = math.inf
    padding[4, 5] = -math.inf
    weights = torch.randn(5, D, dtype=DTYPE)

    def run(fill: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        real = x.clone().requires_grad_(True)
        y = m(torch.where(mask.unsqueeze(-1), real, fill), mask)
        grads = torch.autograd.grad((y * weights).sum(), [real, *m.parameters()])
        return y.detach(), list(grads)

    want, want_grads = run(torch.zeros_like(x))
    got, got_grads = run(padding)
    assert torch.isfinite(got).all()
    assert torch.equal(got, want)
    assert torch.equal(got[4], torch.zeros(D, dtype=DTYPE))
    for g, w in zip(got_grads, want_grads, strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-12)
    assert torch.equal(got_grads[0][~mask], torch.zeros_like(got_grads[0][~mask]))
