"""How `subnets` fails: bad inputs, kills, corruption and contention, each tried through the real command line.

1. Bad inputs (recipe fields, flags, recipe files, store paths, run ids): each must be one ``error:`` line on stderr
   with the expected exit code (2 for usage errors), and must leave the store exactly as it was (no file created,
   changed or removed).
2. ``kill -9`` at random moments of a multi-unit lottery run with ``--workers 2``; every trial resumed must end with
   the units of an uninterrupted run, and no worker may outlive its parent.
3. A stored artefact corrupted in place (same size): the rerun says so, recomputes it, and ends with the same units.
4. Two different runs against one store at once, and the same run started twice at once (the second is refused).

Writes ``benchmarks/results/reliability.json`` and ``docs/reliability.md`` (every figure there comes from this run).

    python benchmarks/reliability.py [--quick] [--trials N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parents[1]
SUBNETS = [sys.executable, "-m", "subnets"]
RECIPE = """kind = "lottery"
name = "reliability"
seeds = {seeds}

[data]
name = "mnist"

[model]
name = "lenet300_100"

[train]
optimizer = "adam"
lr = 1.2e-3
batch_size = 60
length = "{length}"
eval_every = "{eval_every}"

[prune]
levels = {levels}
rates = {{ fc = 0.2, output = 0.1 }}
"""
TIMINGS = ("seconds", "eval_seconds")


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` -> SHA-256 of its bytes (empty when the folder does not exist)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _subnets(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*SUBNETS, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def _bad_inputs(work: Path) -> list[dict[str, Any]]:
    """(what, command arguments, expected exit code) for every bad input tried; run them and check each."""
    recipe = work / "tiny.toml"
    recipe.write_text(RECIPE.format(seeds="[0]", length="60it", eval_every="30it", levels=1))
    store = work / "store"
    _subnets("run", str(recipe), "--store", str(store), "--quiet")  # a real store, to check it stays unchanged
    run_id = json.loads(_subnets("list", "--store", str(store), "--json").stdout)[0]["id"]
    a_file = work / "a-file"
    a_file.write_text("not a folder")
    not_db = work / "not-a-db"
    not_db.mkdir()
    (not_db / "store.sqlite").write_bytes(os.urandom(4096))
    (work / "latin1.toml").write_bytes(b'kind = "lottery"\nname = "caf\xe9"\n')
    (work / "malformed.toml").write_text("kind = lottery = 3\n")
    cores = str((os.cpu_count() or 1) + 1)
    r, s = str(recipe), ["--store", str(store), "--quiet"]
    fields = [
        ("train.lr=inf", 2), ("train.lr=1e309", 2), ("train.lr=-1", 2), ("train.lr=abc", 2),
        ("train.weight_decay=nan", 2), ("train.batch_size=0", 2), ("train.batch_size=60000", 2),
        ("train.length=-5it", 2), ("train.length=100000000000000000000it", 2), ("train.warmup=60it", 2),
        ("train.eval_every=0it", 2), ("train.optimizer=rmsprop", 2), ("train.momentum=0.9", 2),
        ("train.nesterov=true", 2), ("seeds=[]", 2), ("seeds=[1,1]", 2), ("seeds=[-1]", 2), ("model.name=vgg", 2),
        ("model.name=nowhere.module:factory", 2), ("data.name=cifar", 2), ("data.name=wine", 2),
        ("data.options.size=3", 2), ("data.options.x=inf", 2), ("model.options.hidden=[3]", 2),
        ("model.options.hidden=[300, nan]", 2), ("prune.levels=-1", 2), ("prune.rates.fc=1.5", 2),
        ("prune.rewind=100it", 2), ("kind=nope", 2), ("colour=3", 2), ('name=""', 2), ("novalue", 2),
        ("train.lr.x=1", 2),
    ]
    cases = [(f"--set {f}", ["run", r, "--set", f, *s], code) for f, code in fields]
    cases += [
        ("recipe not UTF-8", ["run", str(work / "latin1.toml"), *s], 2),
        ("recipe malformed TOML", ["run", str(work / "malformed.toml"), *s], 2),
        ("recipe missing", ["run", str(work / "missing.toml"), *s], 2),
        ("recipe is a folder", ["run", str(work), *s], 2),
        ("--threads 0", ["run", r, "--threads", "0", *s], 2),
        (f"--threads {cores} (cores + 1)", ["run", r, "--threads", cores, *s], 2),
        ("--workers 0", ["run", r, "--workers", "0", *s], 2),
        (f"--workers {cores} (cores + 1)", ["run", r, "--workers", cores, *s], 2),
        ("--population 0", ["run", r, "--population", "0", *s], 2),
        ("--sparse-below 2", ["run", r, "--sparse-below", "2", *s], 2),
        ("--device tpu", ["run", r, "--device", "tpu", *s], 2),
        ("--workers 2 --population 2", ["run", r, "--workers", "2", "--population", "2", *s], 2),
        ("pooling --population 2 (not honoured)",
         ["run", str(ROOT / "recipes" / "pooling-mnist1d.toml"), "--population", "2", *s], 2),
        ("--store ''", ["run", r, "--store", "", "--quiet"], 2),
        ("--store FILE", ["run", r, "--store", str(a_file), "--quiet"], 2),
        ("--store under a file", ["run", r, "--store", str(a_file / "store"), "--quiet"], 2),
        ("--store /proc/subnets", ["run", r, "--store", "/proc/subnets", "--quiet"], 2),
        ("list --store FILE", ["list", "--store", str(a_file)], 2),
        ("list on a corrupted store.sqlite", ["list", "--store", str(not_db)], 2),
        ("show on a corrupted store.sqlite", ["show", "abc", "--store", str(not_db)], 2),
        ("show '%'", ["show", "%", "--store", str(store)], 2),
        ("show '_'", ["show", "_", "--store", str(store)], 2),
        ("show unknown id", ["show", "zzzz", "--store", str(store)], 2),
        ("report --out under a file", ["report", run_id, "--store", str(store), "--out", str(a_file / "r")], 2),
        ("unknown command", ["frobnicate"], 2),
        ("unknown flag", ["run", r, "--frobnicate", *s], 2),
    ]
    watched = [store, a_file, not_db]
    results = []
    for what, args, code in cases:
        before = {str(p): _snapshot(p) if p.is_dir() else p.read_bytes() for p in watched}
        cwd_before = sorted(os.listdir(work))
        done = _subnets(*args, cwd=work)
        after = {str(p): _snapshot(p) if p.is_dir() else p.read_bytes() for p in watched}
        one_line = done.stderr.startswith("error:") and done.stderr.count("\n") == 1
        untouched = before == after and sorted(os.listdir(work)) == cwd_before
        results.append({"input": what, "exit": done.returncode, "expected_exit": code, "one_line": one_line,
                        "untouched": untouched, "stderr": done.stderr.strip()[-300:],
                        "ok": done.returncode == code and one_line and untouched})
    return results


def _units(store: Path, run_id: str) -> list[dict[str, Any]]:
    view = json.loads(_subnets("show", run_id, "--store", str(store), "--json").stdout)
    return [{k: v for k, v in u.items() if k not in TIMINGS} for u in view["units"]]


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _kills(work: Path, trials: int, seed: int) -> dict[str, Any]:
    """Kill -9 a ``--workers 2`` run at random moments ``trials`` times, resuming each time; compare with a clean
    one-process run."""
    recipe = work / "kills.toml"
    recipe.write_text(RECIPE.format(seeds="[0, 1]", length="300it", eval_every="100it", levels=2))
    clean_store, store = work / "clean", work / "killed"
    started = time.perf_counter()
    _subnets("run", str(recipe), "--store", str(clean_store), "--quiet")
    clean_seconds = time.perf_counter() - started
    run_id = json.loads(_subnets("list", "--store", str(clean_store), "--json").stdout)[0]["id"]
    rng = random.Random(seed)
    record = []
    for trial in range(trials):
        delay = rng.uniform(2.0, max(3.0, clean_seconds))
        process = subprocess.Popen([*SUBNETS, "run", str(recipe), "--store", str(store), "--quiet", "--workers", "2"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + delay
        children: set[int] = set()
        while time.monotonic() < deadline and process.poll() is None:
            children |= set(_children(process.pid))
            time.sleep(0.05)
        finished = process.poll() is not None
        process.send_signal(signal.SIGKILL)
        process.wait()
        time.sleep(2.0)
        orphans = [p for p in children if _alive(p)]
        record.append({"trial": trial, "killed_after_s": round(delay, 2), "finished_before_kill": finished,
                       "workers_seen": len(children), "orphans_after_2s": len(orphans)})
        for pid in orphans:
            os.kill(pid, signal.SIGKILL)
    resumed = _subnets("run", str(recipe), "--store", str(store), "--quiet", "--workers", "2")
    same = resumed.returncode == 0 and _units(store, run_id) == _units(clean_store, run_id)
    return {"trials": record, "resumed_exit": resumed.returncode, "same_units_as_clean_run": same,
            "orphans": sum(t["orphans_after_2s"] for t in record), "clean_run_seconds": round(clean_seconds, 1)}


def _corruption(work: Path) -> dict[str, Any]:
    recipe = work / "corrupt.toml"
    recipe.write_text(RECIPE.format(seeds="[0]", length="60it", eval_every="30it", levels=1))
    store = work / "corrupt-store"
    _subnets("run", str(recipe), "--store", str(store), "--quiet")
    run_id = json.loads(_subnets("list", "--store", str(store), "--json").stdout)[0]["id"]
    before = _units(store, run_id)
    victim = sorted((store / "artefacts").rglob("*.pt"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    shown = _subnets("show", run_id, "--store", str(store))
    rerun = _subnets("run", str(recipe), "--store", str(store))
    repaired = hashlib.sha256(victim.read_bytes()).hexdigest() == victim.stem
    return {"show_warns": "corrupt" in shown.stderr, "rerun_says_so": "corrupt" in rerun.stdout + rerun.stderr,
            "rerun_exit": rerun.returncode, "file_repaired": repaired, "same_units": _units(store, run_id) == before}


def _contention(work: Path) -> dict[str, Any]:
    store = work / "shared"
    recipes = []
    for i in range(2):
        path = work / f"concurrent{i}.toml"
        path.write_text(RECIPE.format(seeds=f"[{i}]", length="120it", eval_every="60it", levels=1))
        recipes.append(path)
    both = [subprocess.Popen([*SUBNETS, "run", str(p), "--store", str(store), "--quiet", "--threads", "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for p in recipes]
    codes = [p.wait(timeout=600) for p in both]
    runs = json.loads(_subnets("list", "--store", str(store), "--json").stdout)
    twice = [subprocess.Popen([*SUBNETS, "run", str(recipes[0]), "--store", str(work / "twice"), "--quiet",
                               "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outcomes = [(p.wait(timeout=600), p.stderr.read()) for p in twice]
    return {"two_runs_exit": codes, "two_runs_done": sorted(r["status"] for r in runs) == ["done", "done"],
            "same_run_twice_exits": sorted(code for code, _ in outcomes),
            "same_run_twice_refusal": next((err.strip() for code, err in outcomes if code != 0), None)}


def _markdown(result: dict[str, Any]) -> str:
    bad = result["bad_inputs"]
    passed = sum(r["ok"] for r in bad)
    lines = [
        "# Reliability", "",
        "Every figure on this page comes from `python benchmarks/reliability.py` "
        f"(`benchmarks/results/reliability.json`, {result['date']}), which drives the real command line.", "",
        "## Bad inputs", "",
        f"{len(bad)} bad inputs tried; **{passed} of {len(bad)}** gave one `error:` line, the expected exit code and "
        "left the store (and the working folder) exactly as it was.", "",
        "| input | exit (expected) | one line | store untouched | message |", "|---|---|---|---|---|",
    ]
    for r in bad:
        message = r["stderr"].replace("|", "\\|").replace("\n", " ⏎ ")[:160]
        lines.append(f"| `{r['input']}` | {r['exit']} ({r['expected_exit']}) | {'yes' if r['one_line'] else 'NO'} | "
                     f"{'yes' if r['untouched'] else 'NO'} | {message} |")
    kills = result["kills"]
    lines += ["", "## Killed runs", "",
              f"A lottery run of 6 units (2 seeds, 2 levels, 300 iterations each; {kills['clean_run_seconds']} s in "
              f"one process) was started with `--workers 2` and killed with SIGKILL {len(kills['trials'])} times "
              "at random moments, then run to the end: the units "
              f"{'equal' if kills['same_units_as_clean_run'] else 'DIFFER FROM'} those of an uninterrupted "
              f"one-process run; {kills['orphans']} worker processes outlived their parent by 2 s.", ""]
    corruption = result["corruption"]
    lines += ["## A corrupted artefact", "",
              "One stored tensor file had a byte flipped in place (same size). "
              f"`show` warned: {'yes' if corruption['show_warns'] else 'no'}; the rerun said so: "
              f"{'yes' if corruption['rerun_says_so'] else 'no'}, repaired the file: "
              f"{'yes' if corruption['file_repaired'] else 'no'}, and ended with the same units: "
              f"{'yes' if corruption['same_units'] else 'no'}.", ""]
    contention = result["contention"]
    lines += ["## Contention", "",
              f"Two different runs against one store at once: exit codes {contention['two_runs_exit']}, both done: "
              f"{'yes' if contention['two_runs_done'] else 'no'}. The same run started twice at once: exit codes "
              f"{contention['same_run_twice_exits']}; the refusal: `{contention['same_run_twice_refusal']}`.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 kill trials and no document")
    parser.add_argument("--trials", type=int, default=10, help="kill -9 trials (default 10)")
    args = parser.parse_args()
    trials = 2 if args.quick else args.trials
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        result = {"date": time.strftime("%Y-%m-%d"), "bad_inputs": _bad_inputs(work),
                  "kills": _kills(work, trials, seed=0), "corruption": _corruption(work),
                  "contention": _contention(work)}
    bad = result["bad_inputs"]
    for r in bad:
        verdict = "ok " if r["ok"] else "BAD"
        print(f"{verdict} exit {r['exit']} ({r['expected_exit']}) {r['input']}: {r['stderr'][:100]}")
    print(f"bad inputs: {sum(r['ok'] for r in bad)} of {len(bad)} handled; kills: {result['kills']}; "
          f"corruption: {result['corruption']}; contention: {result['contention']}")
    if not args.quick:
        sys.path.insert(0, str(Path(__file__).parent))
        from common import write_result

        print(f"wrote {write_result('reliability', result)}")
        doc = ROOT / "docs" / "reliability.md"
        doc.write_text(_markdown(result) + "\n")
        print(f"wrote {doc}")


if __name__ == "__main__":
    main()
