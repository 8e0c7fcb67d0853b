"""Where a fine-grained MoE's time goes on CPU: its expert products alone, run three ways, against the ideal.

Explains the gap that ``benchmarks/moe_forward.py`` measures between the MoE and the ideal (the fastest dense FFN
with the active parameters, chunked or not) at E=64, k=4, h=128, d=512, 4,096 tokens. The same routing
(a fresh ``subnets.experts.MoE(kind="swiglu")``'s) gives every expert its token rows; then, forward only:

- ``products, one expert at a time``: each expert's two SwiGLU products on its rows, experts one after
  another, every product split across torch's threads (how the Hugging Face eager loop runs them);
- ``products, experts in workers``: the same products, experts spread over worker threads with one torch
  thread each (how ``subnets.experts``' Python loop runs them; its compiled CPU kernel runs them the same
  way on OpenMP threads);
- ``products, padded bmm``: all experts in one batched product each, every expert padded to the largest
  count (a grouped GEMM without a grouped kernel);
- ``ideal products``: the dense FFN's products in chunks of 1,024 tokens (the same arithmetic, weights in
  cache);
- ``MoE forward``: the whole layer (routing, gathers, products, combine) through the compiled CPU kernel,
  and ``MoE forward, Python loop`` through the Python loop (``SUBNETS_EXPERTS_KERNEL=python``). The JSON
  records what ``MoE forward`` really ran (``experts_implementation``): the Python loop too when the kernel
  did not build.

The products read already-gathered rows, so the gap between the first three and the ideal is what the
expert weights cost (50 MB read once per call against the ideal's 3 MB reused from cache) and how the
products scale across threads. Prints a table, writes ``benchmarks/results/moe_products.json``.

    python benchmarks/moe_products.py [--quick] [--threads 1,2]
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import parse_args, write_result
from rich.console import Console
from rich.table import Table

from subnets.experts import MoE, cpu_kernel
from subnets.experts.layer import _WORKERS

DIM, TOKENS, EXPERTS, K, HIDDEN, IDEAL_CHUNK = 512, 4096, 64, 4, 128, 1024


def swiglu(x: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor) -> torch.Tensor:
    """``(silu(x Wg) * x Wu) W2`` with ``w_in = [Wg | Wu]``."""
    gate, up = (x @ w_in).chunk(2, dim=-1)
    return (F.silu(gate) * up) @ w_out


def best_ms(run: Callable[[], object], rounds: int) -> float:
    """Fastest of ``rounds`` timed calls after one warm-up, in milliseconds."""
    run()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return 1e3 * best


def variants() -> tuple[dict[str, Callable[[], object]], float]:
    """The timed variants and the products' floating-point operations."""
    torch.manual_seed(0)
    tokens = torch.randn(TOKENS, DIM)
    moe = MoE(DIM, HIDDEN, EXPERTS, K, kind="swiglu")
    w_in, w_out = moe.experts.w_in.detach(), moe.experts.w_out.detach()
    with torch.no_grad():
        routing = moe.router(tokens)
    flat = routing.experts.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=EXPERTS).tolist()
    rows = [tokens[order[start:start + count] // K] for start, count in
            zip(torch.tensor([0, *counts]).cumsum(0).tolist(), counts, strict=False)]
    largest = max(counts)
    padded = torch.zeros(EXPERTS, largest, DIM)
    for e, x in enumerate(rows):
        padded[e, : len(x)] = x
    ideal_in, ideal_out = torch.randn(DIM, 2 * K * HIDDEN) / DIM ** 0.5, torch.randn(K * HIDDEN, DIM) / HIDDEN ** 0.5
    busy = [e for e in range(EXPERTS) if counts[e]]

    def one_at_a_time() -> None:
        for e in busy:
            swiglu(rows[e], w_in[e], w_out[e])

    def in_workers() -> None:
        _WORKERS.run(lambda e, _: swiglu(rows[e], w_in[e], w_out[e]), sorted(busy, key=lambda e: -counts[e]),
                     tokens.device, lambda: None)

    def padded_bmm() -> None:
        gate, up = torch.bmm(padded, w_in).chunk(2, dim=-1)
        torch.bmm(F.silu(gate) * up, w_out)

    def ideal() -> None:
        for part in tokens.split(IDEAL_CHUNK):
            swiglu(part, ideal_in, ideal_out)

    def layer() -> None:
        with torch.no_grad():
            moe(tokens)

    def layer_python_loop() -> None:
        previous = os.environ.get(cpu_kernel.SWITCH)
        os.environ[cpu_kernel.SWITCH] = "python"
        try:
            layer()
        finally:
            os.environ.pop(cpu_kernel.SWITCH)
            if previous is not None:
                os.environ[cpu_kernel.SWITCH] = previous

    flops = 2.0 * TOKENS * K * (DIM * 2 * HIDDEN + HIDDEN * DIM)
    return {"products, one expert at a time": one_at_a_time, "products, experts in workers": in_workers,
            "products, padded bmm": padded_bmm, "ideal products": ideal, "MoE forward": layer,
            "MoE forward, Python loop": layer_python_loop}, flops


def main() -> None:
    args = parse_args(__doc__)
    rounds = 3 if args.quick else 10
    default = torch.get_num_threads()
    implementation = cpu_kernel.implementation()  # builds the kernel now, not inside the first timing
    loop = f"python loop ({cpu_kernel.SWITCH}=python)"  # what layer_python_loop runs
    results = []
    with torch.no_grad():
        for threads in args.threads:
            torch.set_num_threads(threads)
            runs, flops = variants()
            best = dict.fromkeys(runs, float("inf"))
            for _ in range(rounds):  # interleaved, so drifts hit every variant alike
                for name, run in runs.items():
                    best[name] = min(best[name], best_ms(run, 1))
            results.append({"threads": threads, "ms": best,
                            "gflops_per_s": {name: flops / (1e6 * ms) for name, ms in best.items()}})
    torch.set_num_threads(default)
    path = write_result("moe_products", {
        "date": datetime.date.today().isoformat(), "config": {"dim": DIM, "tokens": TOKENS, "experts": EXPERTS,
                                                             "k": K, "hidden": HIDDEN, "ideal_chunk": IDEAL_CHUNK},
        "rounds": rounds, "experts_implementation": {"MoE forward": implementation, "MoE forward, Python loop": loop},
        "results": results})
    table = Table(title=f"Fine-grained MoE products (E={EXPERTS}, k={K}, h={HIDDEN}, d={DIM}, {TOKENS} tokens), "
                        "forward: ms (GFLOP/s of the products' arithmetic)")
    table.add_column("variant")
    for r in results:
        table.add_column(f"{r['threads']} thread(s)", justify="right")
    for name in results[0]["ms"]:
        table.add_row(name, *(f"{r['ms'][name]:.1f} ({r['gflops_per_s'][name]:.0f})" for r in results))
    Console(width=140).print(table)
    print(f"MoE forward ran the {implementation}")
    if implementation != cpu_kernel.COMPILED:
        print("the compiled CPU kernel did not run: 'MoE forward' is the Python loop as well")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
