"""The compiled CPU experts kernel: the same bits as the Python loop, its top-k and dispatch, its switch,
the fallback when it cannot be built, and its reuse of gradient buffers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from subnets.experts import MoE, cpu_kernel
from subnets.experts.layer import CHUNK, Experts, dispatch
from subnets.experts.routing import top_k


@pytest.fixture
def compiled(monkeypatch: pytest.MonkeyPatch):
    """The kernel, which must build on a machine that runs these tests."""
    monkeypatch.delenv(cpu_kernel.SWITCH, raising=False)
    module = cpu_kernel.kernel()
    assert module is not None, "the CPU experts kernel did not build (see the warning)"
    return module


def _run(experts: Experts, tokens: torch.Tensor, counts: list[int], index: torch.Tensor,
         weights: torch.Tensor | None, probe: torch.Tensor) -> list[torch.Tensor]:
    x = tokens.clone().requires_grad_(True)
    w = None if weights is None else weights.clone().requires_grad_(True)
    out = experts(x, counts, index=index, weights=w)
    inputs = [x, *experts.parameters()] + ([] if w is None else [w])
    return [out, *torch.autograd.grad((out * probe).sum(), inputs)]


@pytest.fixture(params=[1, 3])
def threads(request: pytest.FixtureRequest):
    """Runs a test with torch set to 1 and to 3 threads (one worker, and several)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("kind, activation", [("mlp", "gelu"), ("mlp", "relu"), ("swiglu", "gelu")])
@pytest.mark.parametrize("weighted", [True, False])
def test_the_kernel_and_the_python_loop_give_the_same_bits(kind: str, activation: str, weighted: bool, threads: int,
                                                           compiled, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outputs and every gradient, bit for bit, with one thread and several: an expert with more pairs than
    one run holds (so it runs in several and accumulates its weight gradients), an expert without pairs
    (zero gradients), tokens read by several pairs and tokens by none, wider outputs than hidden units and
    the reverse."""
    torch.manual_seed(0)
    for hidden, out_dim in ((8, 12), (20, 6)):
        experts = Experts(5, 12, hidden, kind, activation, out_dim=out_dim)
        counts = [CHUNK + 300, 0, 7, 40, 1]
        index = torch.randint(0, 900, (sum(counts),))  # some of the 1000 rows are never read
        tokens, probe = torch.randn(1000, 12), torch.randn(1000, out_dim)
        weights = torch.rand(sum(counts)) if weighted else None
        results = {}
        for path in ("compiled", "python"):
            monkeypatch.setenv(cpu_kernel.SWITCH, path)
            results[path] = _run(experts, tokens, counts, index, weights, probe)
        for kernel, loop in zip(results["compiled"], results["python"], strict=True):
            assert torch.equal(kernel, loop)
        assert torch.equal(results["compiled"][0][900:], torch.zeros(100, out_dim))  # rows no pair reads
        assert not results["compiled"][2][1].any()  # w_in's gradient of the expert without pairs


@pytest.mark.parametrize("path", ["compiled", "python"])
def test_results_do_not_depend_on_the_number_of_threads(path: str, compiled, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outputs and every gradient, bit for bit, at 1, 2 and 3 threads, for output rows that are 16-byte aligned
    and rows that are not (where MKL's product rounds by where it writes), with many small experts so that
    the worker adding as it goes and the others meet at different experts from call to call."""
    monkeypatch.setenv(cpu_kernel.SWITCH, path)
    torch.manual_seed(1)
    before = torch.get_num_threads()
    for out_dim in (16, 6):
        experts = Experts(24, 12, 20, "swiglu", out_dim=out_dim)
        counts = [int(c) for c in torch.randint(0, 40, (24,))]
        index = torch.randint(0, 300, (sum(counts),))
        tokens, probe, weights = torch.randn(300, 12), torch.randn(300, out_dim), torch.rand(sum(counts))
        results = []
        try:
            for threads in (1, 2, 3, 3):
                torch.set_num_threads(threads)
                results.append(_run(experts, tokens, counts, index, weights, probe))
        finally:
            torch.set_num_threads(before)
        for other in results[1:]:
            for a, b in zip(results[0], other, strict=True):
                assert torch.equal(a, b)


def test_the_kernel_runs_the_moe_without_the_python_loop(compiled, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the kernel the Python loop's workers are never called; switched off, they are."""
    from subnets.experts import layer

    calls = []
    original = layer._WORKERS.run
    monkeypatch.setattr(layer._WORKERS, "run", lambda *args: calls.append(1) or original(*args))
    moe = MoE(8, 16, num_experts=4, k=2)
    moe(torch.randn(30, 8)).sum().backward()
    assert calls == []
    monkeypatch.setenv(cpu_kernel.SWITCH, "python")
    moe(torch.randn(30, 8)).sum().backward()
    assert calls == [1, 1]


def test_top_k_picks_the_largest_first_and_breaks_ties_by_the_lower_index(compiled) -> None:
    """As torch.topk on numbers; NaN counts as -inf (torch ranks it above every number), and no index comes twice."""
    torch.manual_seed(1)
    scores, bias = torch.rand(500, 24), torch.randn(24) * 0.1
    for k in (1, 3, 24):
        assert torch.equal(top_k(scores, k), torch.topk(scores, k, dim=-1).indices)
        assert torch.equal(top_k(scores, k, bias), torch.topk(scores + bias, k, dim=-1).indices)
    tied = torch.tensor([[0.5, 0.9, 0.5, 0.9, 0.1]])
    assert top_k(tied, 3).tolist() == [[1, 3, 0]]
    inf = float("inf")
    odd = torch.tensor([[float("nan"), 0.2, 0.1, -inf, 0.3], [-inf, -inf, -inf, -inf, -inf]])
    assert top_k(odd, 5).tolist() == [[4, 1, 2, 0, 3], [0, 1, 2, 3, 4]]  # NaN as -inf; each index once
    with pytest.raises(RuntimeError, match="k must be between 1 and 5"):
        compiled.top_k(tied, None, 6)


@pytest.mark.parametrize("capacity", [None, 0, 3, 40])
def test_dispatch_matches_the_torch_path(capacity: int | None, compiled, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pairs sorted by expert in token order, per-expert counts and the kept mask, with null experts (ids 6
    and 7) never kept and each expert keeping its first ``capacity`` pairs."""
    torch.manual_seed(2)
    experts = torch.stack([torch.randperm(8)[:3] for _ in range(60)])
    results = {}
    for path in ("compiled", "python"):
        monkeypatch.setenv(cpu_kernel.SWITCH, path)
        results[path] = dispatch(experts, 6, 8, capacity)
    (order, counts, kept), (loop_order, loop_counts, loop_kept) = results["compiled"], results["python"]
    assert torch.equal(order, loop_order) and counts == loop_counts and torch.equal(kept, loop_kept)
    flat = experts.reshape(-1)
    assert (flat[order].diff() >= 0).all() and not kept[experts >= 6].any()
    assert counts == [min(int((flat == e).sum()), 10 ** 9 if capacity is None else capacity) for e in range(6)]


def test_the_switch_names_its_bad_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cpu_kernel.SWITCH, "fast")
    with pytest.raises(ValueError, match="SUBNETS_EXPERTS_KERNEL must be 'python' or 'compiled', got 'fast'"):
        MoE(8, 16, num_experts=4, k=2)(torch.randn(5, 8))
    monkeypatch.setenv(cpu_kernel.SWITCH, "python")
    assert cpu_kernel.kernel() is None


def test_a_kernel_that_does_not_build_warns_once_and_the_python_loop_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "experts_cpu.cpp"
    broken.write_text("#error this kernel does not build\n")
    monkeypatch.setattr(cpu_kernel, "SOURCE", broken)
    monkeypatch.setattr(cpu_kernel, "_loaded", {})
    monkeypatch.setenv("SUBNETS_KERNELS", str(tmp_path / "kernels"))
    monkeypatch.delenv(cpu_kernel.SWITCH, raising=False)
    torch.manual_seed(3)
    moe = MoE(8, 16, num_experts=4, k=2)
    x = torch.randn(20, 8)
    with pytest.warns(RuntimeWarning, match="CPU experts kernel could not be built"):
        out = moe(x)
    assert cpu_kernel.kernel() is None  # remembered: no second attempt, no second warning
    monkeypatch.setenv(cpu_kernel.SWITCH, "python")
    assert torch.equal(out, moe(x))


def test_large_weight_gradients_reuse_their_memory_step_after_step(compiled) -> None:
    """Once a step's gradients are set to None, the next step's come back from the pool, not from fresh
    pages to fault in: a tensor allocated in between does not get that memory, the next gradient does, and
    it holds the right values."""
    torch.manual_seed(4)
    moe = MoE(256, 64, num_experts=48, k=2, kind="swiglu")  # w_in's gradient: 48 * 256 * 128 * 4 B = 6 MB
    x = torch.randn(64, 256)
    moe(x).sum().backward()
    first = moe.experts.w_in.grad.data_ptr()
    moe.zero_grad(set_to_none=True)
    between = torch.empty_like(moe.experts.w_in)  # the allocator would hand out memory just given back to it
    moe(x).sum().backward()
    assert moe.experts.w_in.grad.data_ptr() == first != between.data_ptr()
    expected = torch.autograd.grad(moe(x).sum(), moe.experts.w_in)[0]
    assert torch.equal(moe.experts.w_in.grad, expected)


def test_a_first_call_in_inference_mode_leaves_later_training_calls_working(
        threads: int, compiled, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scratch memory kept from call to call is made outside inference mode, so a model first run under
    ``torch.inference_mode()`` can then be trained; outputs are the same either way, through either path."""
    from subnets.experts import layer

    torch.manual_seed(5)
    moe = MoE(16, 24, num_experts=8, k=2, kind="swiglu")
    x = torch.randn(300, 16)
    for path in ("compiled", "python"):
        monkeypatch.setenv(cpu_kernel.SWITCH, path)
        monkeypatch.setattr(layer, "_WORKSPACE", layer._Workspace())  # as in a fresh process
        with torch.inference_mode():
            inferred = moe(x)
        trained = moe(x.clone().requires_grad_(True))
        trained.sum().backward()
        assert torch.equal(inferred, trained.detach())


def test_using_swaps_the_kernel_inside_the_block_only(compiled) -> None:
    """A benchmark's earlier build of the kernel serves the experts inside ``using`` and the kernel is back
    after it, also when the block raises."""
    stand_in = object()
    with cpu_kernel.using(stand_in):
        assert cpu_kernel.kernel() is stand_in
    assert cpu_kernel.kernel() is compiled
    with pytest.raises(KeyError), cpu_kernel.using(stand_in):
        raise KeyError("inside")
    assert cpu_kernel.kernel() is compiled


COMPILER_OUTPUT = ("Error building extension 'subnets_experts_cpu': [1/2] c++ -MMD -MF experts_cpu.o.d -O3 -c "
                   "experts_cpu.cpp -o experts_cpu.o\nFAILED: experts_cpu.o\n"
                   "experts_cpu.cpp:12:5: error: 'at::frobnicate' has not been declared\n"
                   "   12 |     at::frobnicate(x);\n      |     ^~~~~~~~~~\n"
                   "experts_cpu.cpp:40:1: note: in expansion of macro 'SOMETHING'\n"
                   "ninja: build stopped: subcommand failed.\n")


@pytest.fixture
def failed_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A build that fails with a compiler's multi-line output (without compiling anything), in a fresh kernel
    state; the real kernel's state comes back afterwards (``monkeypatch`` restores ``_loaded`` and the builder)."""
    def fail(source: Path, name: str, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        raise RuntimeError(COMPILER_OUTPUT)

    monkeypatch.setattr(cpu_kernel, "compile_source", fail)
    monkeypatch.setattr(cpu_kernel, "_loaded", {})
    monkeypatch.setenv("SUBNETS_KERNELS", str(tmp_path / "kernels"))
    monkeypatch.delenv(cpu_kernel.SWITCH, raising=False)
    return tmp_path


def _log_named_in(message: str) -> Path:
    """The log file a build warning names (``... is in <path>. Set ...``)."""
    named = message.split("full output is in ", 1)[1].split(". Set ", 1)[0]
    return Path(named)


def test_a_failed_build_keeps_the_full_compiler_output_in_a_log_named_by_the_one_warning(
        failed_build: Path) -> None:
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        moe = MoE(8, 16, num_experts=4, k=2)
        out = moe(torch.randn(20, 8))
        assert cpu_kernel.kernel() is None  # remembered: no second attempt
    assert out.shape == (20, 8)
    built = [w for w in caught if "CPU experts kernel could not be built" in str(w.message)]
    assert len(built) == 1 and built[0].category is RuntimeWarning
    message = str(built[0].message)
    assert "error: 'at::frobnicate' has not been declared" in message  # the compiler's error, not ninja's last line
    log = _log_named_in(message)
    assert log.is_file() and log.parent == cpu_kernel.build_directory()
    assert log.name.startswith("build-") and log.suffix == ".log"
    assert COMPILER_OUTPUT.strip() in log.read_text()  # every line, in order
    description = cpu_kernel.implementation()
    assert description.startswith("python loop (") and str(log) in description
    assert description != cpu_kernel.COMPILED


def test_the_build_warning_can_be_filtered(failed_build: Path) -> None:
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", message="subnets: the CPU experts kernel could not be built",
                                category=RuntimeWarning)
        assert cpu_kernel.kernel() is None
    assert caught == []
    assert cpu_kernel.implementation().startswith("python loop (the kernel did not build")


def test_the_log_goes_to_the_temporary_folder_when_the_kernel_folder_cannot_be_written(
        failed_build: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = failed_build / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("SUBNETS_KERNELS", str(blocker))  # the kernel folder would be below a file: mkdir fails
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(failed_build / "tmp"))
    with pytest.warns(RuntimeWarning, match="could not be built") as caught:
        assert cpu_kernel.kernel() is None
    log = _log_named_in(str(caught[0].message))
    assert log.parent == failed_build / "tmp" / "subnets-kernels"
    assert "NotADirectoryError" in log.read_text() and str(blocker) in log.read_text()


def test_implementation_names_what_runs(monkeypatch: pytest.MonkeyPatch, compiled) -> None:
    assert cpu_kernel.implementation() == cpu_kernel.COMPILED == "compiled kernel"
    assert cpu_kernel.implementation("cuda").startswith("python loop (the kernel is CPU-only")
    monkeypatch.setenv(cpu_kernel.SWITCH, "python")
    assert cpu_kernel.implementation() == f"python loop ({cpu_kernel.SWITCH}=python)"


def test_after_a_simulated_failure_the_real_kernel_is_back(compiled) -> None:
    """Runs after the failure tests: their state did not leak (the kernel module is the real one)."""
    assert cpu_kernel.kernel() is compiled and hasattr(compiled, "top_k")
    assert cpu_kernel.implementation() == cpu_kernel.COMPILED


def test_each_moe_unit_records_the_implementation_that_ran_its_experts(tmp_path: Path, compiled) -> None:
    """The ``moe`` experiment's MoE units say which implementation ran (here the kernel); dense units do not."""
    import json

    from cli_invoke import invoke, run_recipe

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "moe-mnist.toml"
    store = tmp_path / "runs"
    code, stdout, stderr = run_recipe(recipe, store, ["seeds=[0]", "train.length=10it", "train.eval_every=10it",
                                                      "train.batch_size=64", 'variants=["dense-active","none"]'])
    assert code == 0, stderr
    view = json.loads(invoke("show", stdout.split()[1], "--store", str(store), "--json")[1])
    units = {u["variant"]: u for u in view["units"]}
    assert units["none"]["experts_implementation"] == cpu_kernel.COMPILED
    assert "experts_implementation" not in units["dense-active"]
