"""The CPU experts kernel against an earlier version of itself, in one process, alternated call by call.

Builds ``src/subnets/experts/csrc/experts_cpu.cpp`` as it was at ``--against`` (a git commit; the kernel's
call signature must be the same as now) beside the current one, checks that the two give the same bits, and
times the fine-grained MoE (E=64, k=4, h=128, d=512, 4,096 tokens, SwiGLU) forward and forward+backward
through each, with the ideal (a dense SwiGLU FFN of the active parameters, in chunks of 1,024 tokens) in the
same rounds: in each round the three run back to back. Small kernel changes (a few percent) are invisible
across separate benchmark runs on a shared machine, whose speed drifts by more than that; alternating them
call by call shows them. Prints a table, writes ``benchmarks/results/moe_kernel_ab.json``.

    python benchmarks/moe_kernel_ab.py [--against COMMIT] [--rounds N] [--threads N]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from common import write_result
from moe_forward import DIM, TOKENS, DenseSwiGLU, seconds
from rich.console import Console
from rich.table import Table

from subnets.experts import MoE, cpu_kernel

ROOT = Path(__file__).resolve().parents[1]
SOURCE = "src/subnets/experts/csrc/experts_cpu.cpp"
CONFIG = {"num_experts": 64, "k": 4, "hidden": 128}
IDEAL_CHUNK = 1024
MODES = ("forward", "forward+backward")


def earlier_kernel(commit: str, folder: Path):
    """The kernel's source at ``commit``, compiled in ``folder``."""
    text = subprocess.run(["git", "show", f"{commit}:{SOURCE}"], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout
    source = folder / "experts_cpu_earlier.cpp"
    source.write_text(text)
    return cpu_kernel.compile_source(source, f"subnets_experts_cpu_{commit[:12]}", folder / "build")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="a22965b", help="the git commit whose kernel to compare against")
    parser.add_argument("--rounds", type=int, default=30, help="rounds per mode (default 30)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    commit = subprocess.run(["git", "rev-parse", "--short", args.against], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    current = cpu_kernel.kernel()
    implementation = cpu_kernel.implementation()
    if current is None:
        raise SystemExit(f"the current CPU experts kernel is not in use, nothing to compare: {implementation}")
    torch.manual_seed(0)
    x = torch.randn(TOKENS, DIM)
    moe = MoE(DIM, CONFIG["hidden"], CONFIG["num_experts"], CONFIG["k"], kind="swiglu")
    ideal = DenseSwiGLU(DIM, CONFIG["k"] * CONFIG["hidden"], IDEAL_CHUNK)
    with tempfile.TemporaryDirectory() as folder:
        earlier = earlier_kernel(commit, Path(folder))

        def through(kernel) -> Callable[[str], float]:
            def run(mode: str) -> float:
                with cpu_kernel.using(kernel):
                    return seconds(moe, x, mode)
            return run

        variants = {f"kernel at {commit}": through(earlier), "kernel now": through(current),
                    "ideal": lambda mode: seconds(ideal, x, mode)}
        with torch.no_grad(), cpu_kernel.using(earlier):
            before = moe(x)
        with torch.no_grad():
            now = moe(x)
        same_bits = torch.equal(before, now)
        results = {}
        for mode in MODES:
            times: dict[str, list[float]] = {name: [] for name in variants}
            for run in variants.values():  # warm-up
                run(mode)
            for _ in range(args.rounds):
                for name, run in variants.items():
                    times[name].append(run(mode))
            best = {name: min(t) * 1e3 for name, t in times.items()}
            median = {name: statistics.median(t) * 1e3 for name, t in times.items()}
            results[mode] = {"best_ms": best, "median_ms": median,
                             "fraction_of_ideal_best": {n: best["ideal"] / v for n, v in best.items() if n != "ideal"},
                             "fraction_of_ideal_median": {n: median["ideal"] / v for n, v in median.items()
                                                          if n != "ideal"}}
    path = write_result("moe_kernel_ab", {
        "date": datetime.date.today().isoformat(), "against": commit, "threads": torch.get_num_threads(),
        "rounds": args.rounds, "config": {**CONFIG, "dim": DIM, "tokens": TOKENS, "ideal_chunk": IDEAL_CHUNK},
        "experts_implementation": {"kernel now": implementation, f"kernel at {commit}": f"compiled kernel at {commit}"},
        "same_forward_bits": same_bits, "modes": results})
    console = Console(width=120)
    table = Table(title=f"E=64, k=4, h=128 MoE, {torch.get_num_threads()} threads, {args.rounds} alternated rounds: "
                        "ms (fraction of the ideal)")
    for column in ("mode", "variant", "best", "median"):
        table.add_column(column, justify="right")
    for mode, result in results.items():
        for name in variants:
            share = ("" if name == "ideal" else f" ({result['fraction_of_ideal_best'][name]:.1%})",
                     "" if name == "ideal" else f" ({result['fraction_of_ideal_median'][name]:.1%})")
            table.add_row(mode, name, f"{result['best_ms'][name]:.1f}{share[0]}",
                          f"{result['median_ms'][name]:.1f}{share[1]}")
    console.print(table)
    console.print(f"kernel now: {implementation}; same forward bits: {same_bits}; written to {path}", markup=False)


if __name__ == "__main__":
    main()
