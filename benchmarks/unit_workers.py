"""Does ``--workers`` pay for kinds whose units are independent? A ``pooling`` and a ``moe`` recipe (shortened), each
run three ways from the CLI in fresh stores: one process with torch's default threads, one process with one
thread, and ``--workers 2`` (one thread each). Wall time per way, the speed-up of the workers over each
single-process way, and whether the workers' units equal the one-thread process's bit for bit (they should: each
worker trains with one thread).

Each way runs ``--repeats`` times, alternating; the table gives the minimum and median wall time.
Writes ``benchmarks/results/unit_workers.json``.

    python benchmarks/unit_workers.py [--quick]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import parse_args, write_result
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).parents[1]
RECIPES = {
    "pooling": ("pooling-mnist1d.toml", ['pools=["max","avg","gem","softpool"]', "seeds=[0,1]",
                                         "train.length=600it", "train.eval_every=200it"]),
    "moe": ("moe-mnist.toml", ['variants=["dense-active","switch-micro","loss-free","balanced"]', "seeds=[0]",
                               "train.length=600it", "train.eval_every=200it"]),
}
WAYS = {"one process, default threads": [], "one process, 1 thread": ["--threads", "1"],
        "--workers 2 (1 thread each)": ["--workers", "2", "--threads", "2"]}


def _run(recipe: str, overrides: list[str], flags: list[str], store: Path) -> tuple[float, list[dict]]:
    command = [sys.executable, "-m", "subnets", "run", str(ROOT / "recipes" / recipe), "--store", str(store),
               "--quiet", "--device", "cpu", *flags]
    for override in overrides:
        command += ["--set", override]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}: {done.stderr}")
    shown = subprocess.run([sys.executable, "-m", "subnets", "show", done.stdout.split()[1], "--store", str(store),
                            "--json"], capture_output=True, text=True, check=True)
    units = [{k: v for k, v in u.items() if not k.endswith("seconds")} for u in json.loads(shown.stdout)["units"]]
    return seconds, units


def main() -> None:
    args = parse_args(__doc__)
    repeats = 1 if args.quick else 2
    results = []
    table = Table(title=f"--workers 2 against one process, wall time of a whole run (best / median of {repeats})")
    for column in ("kind", "way", "best s", "median s", "workers speed-up", "same units as 1 thread"):
        table.add_column(column, justify="left" if column in ("kind", "way") else "right")
    for kind, (recipe, overrides) in RECIPES.items():
        if args.quick:
            overrides = [*overrides, "train.length=60it", "train.eval_every=30it"]
        times: dict[str, list[float]] = {way: [] for way in WAYS}
        units: dict[str, list[dict]] = {}
        for _ in range(repeats):
            for way, flags in WAYS.items():
                with tempfile.TemporaryDirectory() as store:
                    seconds, units[way] = _run(recipe, overrides, flags, Path(store))
                times[way].append(seconds)
        same = units["--workers 2 (1 thread each)"] == units["one process, 1 thread"]
        workers = min(times["--workers 2 (1 thread each)"])
        for way in WAYS:
            best, median = min(times[way]), statistics.median(times[way])
            speedup = best / workers
            results.append({"kind": kind, "way": way, "seconds": times[way], "best_s": best, "median_s": median,
                            "workers_speedup_over_this": speedup, "units": len(units[way]),
                            "same_units_as_one_thread": same})
            table.add_row(kind, way, f"{best:.1f}", f"{median:.1f}",
                          "" if way.startswith("--workers") else f"{speedup:.2f}x",
                          ("yes" if same else "NO") if way.startswith("--workers") else "")
    Console().print(table)
    print(f"wrote {write_result('unit_workers', {'repeats': repeats, 'recipes': RECIPES, 'results': results})}")


if __name__ == "__main__":
    main()
