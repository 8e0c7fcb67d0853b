"""Spatial pooling on CPU: forward+backward time and peak memory of every 2D op in subnets.pooling against max pooling.

Each op of ``pool_names(2)`` except "spp" (whose output is a different thing) runs on one float32 input of
shape (64, 64, 56, 56) that requires grad, and is measured against a baseline doing the same job:

- local, kernel 2 and stride 2: avg, max, lp, gem, group-gem, softpool, mixed, gated, tree, stochastic (training
  mode) and conv, against ``F.max_pool2d(x, 2, 2)``;
- global (``global_pool=True``): every op that builds without ``size=`` (gated, tree and conv need it and are
  left out), against ``F.adaptive_max_pool2d(x, 1)``.

Time: ``module(x).backward(g)`` with a fixed random ``g`` of the output's shape, one warm-up call per op, then the
median over rounds in which every op (and every timm reference) runs twice in a row, the second call timed (so that
the allocator's state is the op's own, as in a training loop, not its predecessor's), in an order rotated each round
so that machine noise hits all alike. Memory: each op in a fresh process (this file with a hidden flag) allocates
the input and ``g`` and runs forward+backward twice; the first pass is a warm-up (it starts thread pools and faults
in their arenas and code pages, some 35 MiB that stay); the op's peak extra memory is the rise of the process's
resident high-water mark (``VmHWM``, reset first through ``/proc/self/clear_refs``) over the second.
glibc's mmap threshold is fixed at 64 KiB in the child so that freed tensors go back to the system instead of
serving the second pass. ``ru_maxrss`` is not used: a child inherits its parent's peak through exec, which hides
the op's. The bytes each op keeps for backward (distinct storages saved by autograd, the input's excepted) are
listed as well. ``--quick`` measures all ops one after the other in a single child process (same method;
with the fixed threshold it agrees with a process per op) to save the children's start-up.
Goal: every op within 3x of its baseline's time and peak memory.

timm, when importable (``pip install --no-deps timm``; an optional benchmark dependency, not the package's),
gives the references for the ops that compute exactly the same thing, checked on the input before timing:
``create_pool2d("avg"/"max", 2, 2, padding=0)`` for local avg/max, and ``SelectAdaptivePool2d``
"avg"/"max"/"avgmax" and their "fast" variants for global avg, max and mixed (at its initial alpha = 0,
``0.5 max + 0.5 avg``); the ratio is ours over timm's fastest variant, goal: not slower. Without timm the
benchmark says why and runs on.

Writes ``benchmarks/results/pooling_ops.json``; ``--quick`` (a smoke test on a smaller input, 3 rounds) writes
nothing, so as not to overwrite the full run's result.

    python benchmarks/pooling_ops.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import datetime
import gc
import hashlib
import importlib.metadata
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F
from common import write_result
from rich.console import Console
from rich.table import Table
from torch import nn

from subnets.pooling import create_pool, pool_names
from subnets.pooling.factory import NEEDS_CHANNELS

SHAPE, QUICK_SHAPE = (64, 64, 56, 56), (8, 32, 28, 28)
ROUNDS, QUICK_ROUNDS = 11, 3
KERNEL = STRIDE = 2
GOAL_RATIO = 3.0  # time and memory, against max pooling
MMAP_THRESHOLD = 64 * 1024  # bytes
LEFT_OUT = {"spp": "a pyramid of adaptive pools to fixed grids: not a windowed pool comparable with max pooling"}
BASELINES = {"local": "F.max_pool2d(x, 2, 2)", "global": "F.adaptive_max_pool2d(x, 1)"}
# Ours -> timm's modules computing the same thing (checked on the input before timing).
TIMM_EQUIVALENTS = {
    # create_pool2d's default padding="" pads by 1: padding=0 is ours (floor mode, no padding)
    "local avg": {"create_pool2d('avg', 2, 2, padding=0)": lambda timm: timm.create_pool2d("avg", KERNEL, STRIDE,
                                                                                           padding=0)},
    "local max": {"create_pool2d('max', 2, 2, padding=0)": lambda timm: timm.create_pool2d("max", KERNEL, STRIDE,
                                                                                           padding=0)},
    **{f"global {op}": {f"SelectAdaptivePool2d('{kind}')": (
        lambda timm, kind=kind: timm.SelectAdaptivePool2d(pool_type=kind, flatten=True))
        for kind in (theirs, f"fast{theirs}")}
       for op, theirs in (("avg", "avg"), ("max", "max"), ("mixed", "avgmax"))},
}


class Function(nn.Module):
    """A function of the input as a module (the baselines)."""

    def __init__(self, function: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.function = function

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(x)


def ours(name: str, scope: str, channels: int) -> nn.Module:
    """Our op ``name``, local (kernel 2, stride 2) or global, in training mode."""
    options = {"channels": channels} if name in NEEDS_CHANNELS else {}
    if scope == "global":
        options["global_pool"] = True
    else:
        options.update(kernel_size=KERNEL, stride=STRIDE)
    return create_pool(name, 2, **options).train()


def builders(channels: int) -> tuple[dict[str, Callable[[], nn.Module]], dict[str, str]]:
    """Every measured op's constructor, by key ("local F.max_pool2d", "local avg", "global gem", ...; the
    baselines first), and the ops left out with the reason."""
    built: dict[str, Callable[[], nn.Module]] = {
        f"local {BASELINES['local']}": lambda: Function(lambda x: F.max_pool2d(x, KERNEL, STRIDE)),
        f"global {BASELINES['global']}": lambda: Function(lambda x: F.adaptive_max_pool2d(x, 1).flatten(1))}
    left_out = dict(LEFT_OUT)
    for scope in ("local", "global"):
        for name in pool_names(2):
            if name in LEFT_OUT:
                continue
            try:
                ours(name, scope, channels)
            except ValueError as error:
                left_out[f"{scope} {name}"] = str(error)
                continue
            built[f"{scope} {name}"] = lambda name=name, scope=scope: ours(name, scope, channels)
    return built, left_out


def pooling_source() -> str:
    """A digest of the subnets.pooling source files imported, to tell that they did not change during a run."""
    digest = hashlib.sha256()
    files = {m.__file__ for name, m in sys.modules.items()
             if name.split(".")[:2] == ["subnets", "pooling"] and getattr(m, "__file__", None)}
    for file in sorted(files):
        digest.update(Path(file).name.encode() + b"\0" + Path(file).read_bytes())
    return digest.hexdigest()[:16]


def load_timm() -> tuple[object | None, dict]:
    """timm's layers module (None when it cannot be imported) and what to record about it."""
    try:
        version = importlib.metadata.version("timm")
    except importlib.metadata.PackageNotFoundError:
        return None, {"available": False, "version": None, "why": "not installed (pip install --no-deps timm)"}
    try:
        import timm.layers
    except Exception as error:  # an optional reference: whatever stops its import, say so and run on
        return None, {"available": False, "version": version, "why": f"import timm.layers: {type(error).__name__}: "
                      f"{error}"}
    return timm.layers, {"available": True, "version": version}


def fresh_grads(module: nn.Module, x: torch.Tensor) -> None:
    x.grad = None
    for p in module.parameters():
        p.grad = None


def seconds(module: nn.Module, x: torch.Tensor, g: torch.Tensor) -> float:
    """Wall-clock seconds of one forward and the backward of ``(output * g).sum()``."""
    fresh_grads(module, x)
    start = time.perf_counter()
    module(x).backward(g)
    return time.perf_counter() - start


def saved_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages that a forward of ``module`` saves for backward, the input's excepted."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    storages.pop(x.untyped_storage().data_ptr(), None)
    return sum(storages.values())


def median_times(modules: dict[str, nn.Module], x: torch.Tensor, grads: dict[str, torch.Tensor],
                 rounds: int) -> dict[str, float]:
    """Median seconds per module over ``rounds`` round-robin rounds (after one warm-up call each)."""
    names = list(modules)
    for name in names:
        seconds(modules[name], x, grads[name])
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            # The untimed call first leaves the allocator as this op left it, not as the op before did: glibc
            # serves freed blocks again, so otherwise an op's time depended on its predecessor (max pooling
            # measured 1.2x faster as the baseline than the same call elsewhere in the round).
            seconds(modules[name], x, grads[name])
            times[name].append(seconds(modules[name], x, grads[name]))
    return {name: statistics.median(t) for name, t in times.items()}


# --- peak memory, one fresh process per op ---------------------------------------------------------------

def high_water_kib(reset: bool = False) -> int:
    """The process's resident high-water mark in KiB (``VmHWM``; ``reset``: first lower it to the current
    resident size). Without /proc, ``ru_maxrss``, which a child may inherit from its parent."""
    try:
        if reset:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return maxrss // 1024 if sys.platform == "darwin" else maxrss


def memory_child(keys: list[str], shape: tuple[int, ...], threads: int) -> None:
    """In a fresh process: print, for each op in ``keys`` in turn, the peak extra MiB of one forward+backward
    on ``shape``, and the digest of the pooling source imported (a JSON object)."""
    source = pooling_source()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    built = builders(shape[1])[0]
    x = torch.randn(shape, requires_grad=True)
    peaks = {}
    for key in keys:
        module = built[key]()
        with torch.no_grad():
            g = torch.randn(module(x).shape)
        for _ in range(2):  # the first pass is the warm-up (thread pools, their arenas, code pages)
            fresh_grads(module, x)
            gc.collect()
            before = high_water_kib(reset=True)
            module(x).backward(g)
            after = high_water_kib()
        peaks[key] = (after - before) / 1024
        del module, g
    print(json.dumps({"source": source, "peaks": peaks}))


def peak_mib(keys: list[str], shape: tuple[int, ...], threads: int) -> dict:
    """Run ``memory_child`` in a fresh process, with glibc's mmap threshold fixed low so that every tensor is
    its own mapping, returned to the system when freed (the default threshold rises after the warm-up's frees,
    and glibc would then serve the measured pass from memory it kept)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-child", json.dumps(keys),
               "--shape", ",".join(map(str, shape)), "--threads", str(threads)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode:
        raise RuntimeError(f"memory measurement of {keys} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the benchmark ----------------------------------------------------------------------------------------

def run(shape: tuple[int, ...], rounds: int, timm_layers: object | None,
        fresh_process_per_op: bool) -> tuple[list[dict], dict, dict, dict, str]:
    source = pooling_source()
    torch.manual_seed(0)
    built, left_out = builders(shape[1])
    modules = {key: build() for key, build in built.items()}
    x = torch.randn(shape, requires_grad=True)
    with torch.no_grad():
        outputs = {key: module(x) for key, module in modules.items()}
    out_grads = {s: torch.randn(s) for s in {tuple(o.shape) for o in outputs.values()}}
    grads = {key: out_grads[tuple(o.shape)] for key, o in outputs.items()}

    timm_checks: dict[str, dict] = {}
    if timm_layers is not None:
        for key, equivalents in TIMM_EQUIVALENTS.items():
            for label, make in equivalents.items():
                module = make(timm_layers)
                with torch.no_grad():
                    theirs = module(x)
                same = theirs.shape == outputs[key].shape and torch.allclose(theirs, outputs[key], rtol=1e-5,
                                                                              atol=1e-6)
                difference = (theirs - outputs[key]).abs().max().item() if theirs.shape == outputs[key].shape \
                    else None
                timm_checks[f"timm {label} for {key}"] = {"ours": key, "timm": label, "same_output": same,
                                                           "max_abs_difference": difference}
                if same:
                    modules[f"timm {label} for {key}"] = module
                    grads[f"timm {label} for {key}"] = grads[key]
    del outputs

    saved = {key: saved_bytes(modules[key], x) / 2**20 for key in built}
    start = time.perf_counter()
    times = median_times(modules, x, grads, rounds)
    phases = {"timing": time.perf_counter() - start}
    start = time.perf_counter()
    groups = [[key] for key in built] if fresh_process_per_op else [list(built)]
    peaks: dict[str, float] = {}
    with ThreadPoolExecutor(max_workers=2) as pool:  # memory is per process: two at a time is as exact
        for measured in pool.map(lambda keys: peak_mib(keys, shape, torch.get_num_threads()), groups):
            peaks.update(measured["peaks"])
            if measured["source"] != source:
                raise RuntimeError("src/subnets/pooling changed during the run (a memory child imported other "
                                   "source than the timed one): rerun when it is stable")
    phases["memory"] = time.perf_counter() - start
    if pooling_source() != source:
        raise RuntimeError("src/subnets/pooling changed during the run: rerun when it is stable")

    rows = []
    for key in built:
        scope, name = key.split(" ", 1)
        base = f"{scope} {BASELINES[scope]}"
        time_ratio, memory_ratio = times[key] / times[base], peaks[key] / peaks[base]
        row = {"op": name, "scope": scope, "baseline": BASELINES[scope], "is_baseline": key == base,
               "time_ms": 1000 * times[key], "time_ratio_vs_max": time_ratio, "peak_mib": peaks[key],
               "memory_ratio_vs_max": memory_ratio, "saved_for_backward_mib": saved[key],
               "pass_time": time_ratio <= GOAL_RATIO, "pass_memory": memory_ratio <= GOAL_RATIO}
        row["pass"] = row["pass_time"] and row["pass_memory"]
        if scope == "global":  # also against the one baseline, F.max_pool2d(x, 2, 2) on the same input
            local = f"local {BASELINES['local']}"
            row["time_ratio_vs_max_pool2d"] = times[key] / times[local]
            row["memory_ratio_vs_max_pool2d"] = peaks[key] / peaks[local]
        compared = {c["timm"]: 1000 * times[t] for t, c in timm_checks.items() if c["ours"] == key and c["same_output"]}
        if compared:
            fastest = min(compared, key=compared.get)
            row["timm"] = {"time_ms": compared, "fastest": fastest,
                           "ratio_vs_timm": 1000 * times[key] / compared[fastest],
                           "pass_not_slower_than_timm": 1000 * times[key] <= compared[fastest]}
        rows.append(row)
    return rows, left_out, timm_checks, phases, source


def expected_baseline_mib(shape: tuple[int, ...]) -> dict[str, float]:
    """What max pooling's forward+backward must allocate: the output (float32), its int64 indices and the
    input's gradient."""
    n, c, h, w = shape
    local = n * c * (h // KERNEL) * (w // KERNEL)
    return {"local": (local * 4 + local * 8 + n * c * h * w * 4) / 2**20,
            "global": (n * c * 4 + n * c * 8 + n * c * h * w * 4) / 2**20}


def measure(shape: tuple[int, ...], rounds: int, timm_layers: object | None, timm_info: dict,
            fresh_process_per_op: bool) -> dict:
    """Run the benchmark; the result to write."""
    start = time.perf_counter()
    rows, left_out, timm_checks, phases, source = run(shape, rounds, timm_layers, fresh_process_per_op)
    expected = expected_baseline_mib(shape)
    measured = {r["scope"]: r["peak_mib"] for r in rows if r["is_baseline"]}
    sanity = {scope: {"measured_mib": measured[scope], "expected_mib": expected[scope],
                      "plausible": 0.8 <= measured[scope] / expected[scope] <= 1.5} for scope in expected}
    failing = [f"{r['scope']} {r['op']}" for r in rows if not r["pass"]]
    failing_vs_max_pool2d = [f"{r['scope']} {r['op']}" for r in rows if max(
        r.get("time_ratio_vs_max_pool2d", r["time_ratio_vs_max"]),
        r.get("memory_ratio_vs_max_pool2d", r["memory_ratio_vs_max"])) > GOAL_RATIO]
    slower_than_timm = [f"{r['scope']} {r['op']}" for r in rows
                        if "timm" in r and not r["timm"]["pass_not_slower_than_timm"]]
    processes = "one fresh process per op" if fresh_process_per_op else "one process for all ops"
    return {
        "date": datetime.date.today().isoformat(), "pooling_source_sha256": source,
        "threads": torch.get_num_threads(), "shape": list(shape),
        "dtype": "float32", "kernel_size": KERNEL, "stride": STRIDE, "rounds": rounds, "warmup_calls": 1,
        "statistic": "median", "baselines": BASELINES, "goal_ratio_vs_max": GOAL_RATIO,
        "memory_method": "rise of VmHWM (reset via /proc/self/clear_refs) over one forward+backward after a "
                         f"warm-up one, input and output gradient allocated before, MALLOC_MMAP_THRESHOLD_="
                         f"{MMAP_THRESHOLD}, {processes}",
        "baseline_memory_check": sanity, "left_out": left_out,
        "timm": {**timm_info, "checks": timm_checks}, "seconds": {"total": time.perf_counter() - start, **phases},
        "all_pass": not failing, "failing": failing,
        "all_pass_vs_max_pool2d": not failing_vs_max_pool2d, "failing_vs_max_pool2d": failing_vs_max_pool2d,
        "all_not_slower_than_timm": None if not timm_info["available"] else not slower_than_timm,
        "ops": rows}


def show(result: dict, path: Path | None) -> None:
    """Print the result as a table and a few lines."""
    console = Console(width=150)
    timm = result["timm"]
    table = Table(title=f"Pooling forward+backward, input {tuple(result['shape'])} float32, kernel {KERNEL} stride "
                        f"{STRIDE}, {result['threads']} threads, median of {result['rounds']} rounds")
    for column in ("scope", "op", "time ms", "time / max", "peak MiB", "mem / max", "saved MiB",
                   f"within {GOAL_RATIO:g}x", "timm ms (fastest)", "ours / timm"):
        table.add_column(column, justify="right", no_wrap=column in ("scope", "op", f"within {GOAL_RATIO:g}x"))
    for r in result["ops"]:
        verdict = "baseline" if r["is_baseline"] else "ok" if r["pass"] else \
            "FAIL " + " ".join(k for k in ("time", "memory") if not r[f"pass_{k}"])
        timm_cells = ("n/a", "n/a")
        if "timm" in r:
            t = r["timm"]
            timm_cells = (f"{t['time_ms'][t['fastest']]:.1f}",
                          f"{t['ratio_vs_timm']:.2f}" + (" ok" if t["pass_not_slower_than_timm"] else " slower"))
        elif not timm["available"] and f"{r['scope']} {r['op']}" in TIMM_EQUIVALENTS:
            timm_cells = ("missing", "missing")
        table.add_row(r["scope"], r["op"], f"{r['time_ms']:.1f}", f"{r['time_ratio_vs_max']:.2f}",
                      f"{r['peak_mib']:.1f}", f"{r['memory_ratio_vs_max']:.2f}", f"{r['saved_for_backward_mib']:.1f}",
                      verdict, *timm_cells)
    console.print(table)
    for scope, check in result["baseline_memory_check"].items():
        console.print(f"{scope} baseline peak {check['measured_mib']:.1f} MiB, expected ~{check['expected_mib']:.1f} "
                      f"(output + int64 indices + input grad): {'plausible' if check['plausible'] else 'IMPLAUSIBLE'}")
    if timm["available"]:
        console.print(f"timm {timm['version']}: " + "; ".join(
            f"{c['timm']} vs ours {c['ours']}: {'same output' if c['same_output'] else 'DIFFERENT, not timed'}"
            for c in timm["checks"].values()), markup=False)
        for r in result["ops"]:
            if "timm" in r:
                console.print(f"{r['scope']} {r['op']}: ours {r['time_ms']:.1f} ms, timm " + ", ".join(
                    f"{label} {ms:.1f} ms" for label, ms in r["timm"]["time_ms"].items()), markup=False)
    else:
        console.print(f"timm not compared (version {timm['version']}): {timm['why']}", markup=False)
    console.print("left out: " + "; ".join(f"{k}: {v}" for k, v in result["left_out"].items()), markup=False)
    failing = result["failing"]
    console.print(f"all within {GOAL_RATIO:g}x of their baseline (global ops: of global max pooling): {not failing}"
                  + (f" (failing: {', '.join(failing)})" if failing else ""))
    against_local = result["failing_vs_max_pool2d"]
    console.print(f"all within {GOAL_RATIO:g}x of F.max_pool2d(x, 2, 2): {not against_local}"
                  + (f" (failing: {', '.join(against_local)})" if against_local else ""))
    seconds = result["seconds"]
    console.print(f"{seconds['total']:.0f} s (timing {seconds['timing']:.0f} s, memory {seconds['memory']:.0f} s); "
                  + (f"written to {path}" if path else "--quick: nothing written"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller input, 3 rounds, one memory process, nothing written (a smoke test)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)  # JSON list of op keys
    parser.add_argument("--shape", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        shape = tuple(int(s) for s in args.shape.split(","))
        memory_child(json.loads(args.memory_child), shape, torch.get_num_threads())
        return
    shape, rounds = (QUICK_SHAPE, QUICK_ROUNDS) if args.quick else (SHAPE, ROUNDS)
    result = measure(shape, rounds, *load_timm(), fresh_process_per_op=not args.quick)
    path = None if args.quick else write_result("pooling_ops", result)
    show(result, path)


if __name__ == "__main__":
    main()
