"""How fast the ``subnets`` command answers: ``--help``, usage errors (a bad flag, a bad recipe field or name, a flag
the kind does not honour), ``list`` and ``show`` (of a lottery run and of a pooling run), against ``python -c pass``
and ``python -c "import torch"``, each a fresh process.

Every command runs ``--repeats`` times, alternating with the two baselines; the table gives the median wall time of
each and its ratio to the baselines' medians. The goal (issue 15): every command under 1 s on this machine.
Writes ``benchmarks/results/cli_start.json``.

    python benchmarks/cli_start.py [--quick]
"""

from __future__ import annotations

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
SUBNETS = [sys.executable, "-m", "subnets"]
GOAL_SECONDS = 1.0


def _seconds(command: list[str], expect: int) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != expect:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}, expected {expect}: {done.stderr}")
    return elapsed


def _stored_runs(store: Path) -> dict[str, str]:
    """A tiny lottery run and a tiny pooling run in ``store``; their ids by kind."""
    lottery = store / "lottery.toml"
    lottery.write_text((ROOT / "recipes" / "lth-mnist-lenet300-quick.toml").read_text())
    runs = {}
    for kind, recipe, overrides in (
        ("lottery", lottery, ["prune.levels=1", "train.length=30it", "train.eval_every=30it"]),
        ("pooling", ROOT / "recipes" / "pooling-mnist1d.toml",
         ["seeds=[0,1]", 'pools=["max","avg"]', "train.length=30it", "train.eval_every=30it"]),
    ):
        command = [*SUBNETS, "run", str(recipe), "--store", str(store / "runs"), "--quiet", "--device", "cpu"]
        for override in overrides:
            command += ["--set", override]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        runs[kind] = done.stdout.split()[1]
    return runs


def main() -> None:
    args = parse_args(__doc__)
    repeats = 3 if args.quick else 15
    with tempfile.TemporaryDirectory() as folder:
        store = Path(folder)
        runs = _stored_runs(store)
        where = ["--store", str(store / "runs")]
        commands = {
            "python -c pass": ([sys.executable, "-c", "pass"], 0),
            "python -c 'import torch'": ([sys.executable, "-c", "import torch"], 0),
            "subnets --help": ([*SUBNETS, "--help"], 0),
            "subnets run (usage error)": ([*SUBNETS, "run", "r.toml", "--workers", "0"], 2),
            "subnets run lottery --set train.lr=abc (recipe field)": (
                [*SUBNETS, "run", str(ROOT / "recipes" / "lth-mnist-lenet300-quick.toml"), "--set", "train.lr=abc",
                 *where], 2),
            "subnets run boosting-tabular --set tables=[\"nope\"] (name)": (
                [*SUBNETS, "run", str(ROOT / "recipes" / "boosting-tabular.toml"), "--set", 'tables=["nope"]',
                 *where], 2),
            "subnets run pooling --population 2 (not honoured)": (
                [*SUBNETS, "run", str(ROOT / "recipes" / "pooling-mnist1d.toml"), "--population", "2", *where], 2),
            "subnets list": ([*SUBNETS, "list", *where], 0),
            "subnets show (lottery run)": ([*SUBNETS, "show", runs["lottery"], *where], 0),
            "subnets show --json (lottery run)": ([*SUBNETS, "show", runs["lottery"], "--json", *where], 0),
            "subnets show (pooling run)": ([*SUBNETS, "show", runs["pooling"], *where], 0),
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(repeats):
            for name, (command, code) in commands.items():
                times[name].append(_seconds(command, code))
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    bare, torch_import = medians["python -c pass"], medians["python -c 'import torch'"]
    table = Table(title=f"subnets CLI start-up, median of {repeats} fresh processes (goal: under {GOAL_SECONDS} s)")
    for column in ("command", "median s", "min s", "x python -c pass", "x import torch", "goal"):
        table.add_column(column, justify="left" if column == "command" else "right")
    results = []
    for name, median in medians.items():
        baseline = name.startswith("python")
        met = None if baseline else median < GOAL_SECONDS
        results.append({"command": name, "median_s": median, "min_s": min(times[name]), "seconds": times[name],
                        "ratio_to_python": median / bare, "ratio_to_import_torch": median / torch_import,
                        "goal_met": met})
        table.add_row(name, f"{median:.3f}", f"{min(times[name]):.3f}", f"{median / bare:.1f}",
                      f"{median / torch_import:.2f}", "" if met is None else ("yes" if met else "NO"))
    Console().print(table)
    path = write_result("cli_start", {"repeats": repeats, "goal_seconds": GOAL_SECONDS, "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
