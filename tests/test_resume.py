"""A real `subnets run` process killed (SIGKILL, SIGTERM) mid-run: the store stays sound and the run resumes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from subnets.runs.store import RunBusy, Store


def _subnets(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "subnets", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _finished_steps(store: Path) -> int:
    if not (store / "store.sqlite").exists():
        return 0
    with sqlite3.connect(store / "store.sqlite", timeout=30) as db:
        try:
            return db.execute("SELECT COUNT(*) FROM steps").fetchone()[0]
        except sqlite3.OperationalError:  # the schema is not written yet
            return 0


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process is gone
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _gone(pids: list[int], within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{p}").exists() and "(Z)" not in _state(p) for p in pids):
            return True
        time.sleep(0.1)
    return False


def _state(pid: int) -> str:
    try:
        return "(" + Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] + ")"
    except OSError:
        return "(gone)"


@pytest.mark.parametrize(("workers", "stop"), [(1, signal.SIGKILL), (2, signal.SIGKILL), (2, signal.SIGTERM)])
def test_killed_mid_run_then_resume_matches_an_uninterrupted_run(tiny_recipe, tmp_path, workers: int,
                                                                  stop: signal.Signals) -> None:
    """Killed with its workers busy, a run resumes to the numbers of a clean one-process run; its workers die with
    it (Linux kills them when their parent dies; one still starting up notices when it is ready)."""
    recipe = str(tiny_recipe(levels=2, length="400it", eval_every="100it"))
    killed_store, clean_store = tmp_path / "killed", tmp_path / "clean"
    flags = ("--workers", str(workers))

    process = _subnets("run", recipe, "--store", str(killed_store), "--quiet", *flags)
    deadline = time.monotonic() + 240
    while _finished_steps(killed_store) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    children = _children(process.pid)
    process.send_signal(stop)
    process.wait()
    assert len(children) >= (workers if workers > 1 else 0)
    # An orphan exits within a second when idle or at its next evaluation; a worker still starting (importing torch,
    # receiving the data) on a loaded machine takes longer to get there.
    assert _gone(children, within=30), [(p, _state(p)) for p in children]

    store = Store(killed_store)
    [run] = store.runs()
    assert run["status"] == "partial" and 2 <= run["steps"] < 7
    with sqlite3.connect(killed_store / "store.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    resumed = _subnets("run", recipe, "--store", str(killed_store), "--quiet", *flags)
    clean = _subnets("run", recipe, "--store", str(clean_store), "--quiet")
    for p in (resumed, clean):
        assert p.wait(timeout=300) == 0, p.stderr.read()

    log = store.log_lines(run["id"])
    assert any("resuming lottery run" in line for line in log)
    trained = sum("test acc" in line for line in log)
    assert 7 <= trained <= 7 + workers  # every step once; at most the steps in progress when killed twice

    def rows(path: Path) -> list[dict]:
        out = subprocess.run([sys.executable, "-m", "subnets", "show", run["id"], "--store", str(path), "--json"],
                             capture_output=True, text=True, check=True).stdout
        timings = ("seconds", "eval_seconds")
        return [{k: v for k, v in r.items() if k not in timings} for r in json.loads(out)["levels"]]

    assert Store(killed_store).run(run["id"])["status"] == "done"
    assert rows(killed_store) == rows(clean_store)


def test_a_run_busy_in_a_live_process_is_refused_and_a_dead_ones_resumed(tmp_path) -> None:
    store = Store(tmp_path / "store")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        store.start_run("r1", "lottery", "busy", {}, "cpu")
        with sqlite3.connect(store.db_path) as db:
            db.execute("UPDATE runs SET pid = ? WHERE id = 'r1'", (other.pid,))
        with pytest.raises(RunBusy, match=f"already running in process {other.pid}"):
            store.start_run("r1", "lottery", "busy", {}, "cpu")
    finally:
        other.kill()
        other.wait()
    assert store.run("r1")["status"] == "partial"  # its process is gone
    assert store.start_run("r1", "lottery", "busy", {}, "cpu") is True


def test_a_step_and_its_log_line_are_stored_together_or_not_at_all(tmp_path: Path) -> None:
    """A killed run must not keep a step without its line (the kill-and-resume test counts the lines): both
    go in one transaction, so a failure while writing the line leaves neither."""
    store = Store(tmp_path / "store")
    store.start_run("r1", "lottery", "tiny", {}, "cpu")
    steps = store.steps("r1")
    steps.put_step("a", {"x": 1}, log="a: done")
    with pytest.raises(sqlite3.Error):
        steps.put_step("b", {"x": 2}, log=object())  # sqlite cannot bind it: the line's insert fails
    assert steps.get_step("a") == ({"x": 1}, {}) and steps.get_step("b") is None
    assert [line.split(" ", 1)[1] for line in store.log_lines("r1")] == ["a: done"]
