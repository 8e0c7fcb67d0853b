"""The run store: one SQLite file (WAL) plus a folder of content-addressed tensor files.

Layout of a store folder::

    store.sqlite          runs and their finished steps
    artefacts/ab/abcd...  torch.save'd dicts of tensors, named by the SHA-256 of their bytes

A step is written in two stages: its tensor files first (each to a temporary name, then renamed), then
one transaction that inserts the step row naming them. A kill between the two leaves only unreferenced
files, never a step that points at missing data; a file that is later truncated or altered fails its hash
check when read, and the step is recomputed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from subnets.steps import Tensors

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL, recipe TEXT NOT NULL,
    status TEXT NOT NULL, error TEXT, device TEXT, host TEXT, pid INTEGER,
    data_source TEXT, created TEXT NOT NULL, updated TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL REFERENCES runs(id), key TEXT NOT NULL, result TEXT NOT NULL,
    artefacts TEXT NOT NULL, created TEXT NOT NULL, PRIMARY KEY (run_id, key)
);
CREATE TABLE IF NOT EXISTS log (
    run_id TEXT NOT NULL, at TEXT NOT NULL, message TEXT NOT NULL
);
"""


class UnknownRun(LookupError):
    """No run (or more than one) matches the id given."""


class RunBusy(RuntimeError):
    """The run is already being computed by another live process on this host."""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    """A run store in folder ``root`` (created on first write, never by a read)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.db_path = self.root / "store.sqlite"
        self.artefacts = self.root / "artefacts"

    @contextmanager
    def _connect(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        if write:
            self.artefacts.mkdir(parents=True, exist_ok=True)
        elif not self.db_path.exists():
            raise UnknownRun(f"no run store at {self.root} (run a recipe first, or pass --store)")
        connection = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)
        try:
            connection.execute("PRAGMA busy_timeout = 60000")
            if write:
                connection.execute("PRAGMA journal_mode = WAL")
                connection.executescript(SCHEMA)
            connection.row_factory = sqlite3.Row
            yield connection
        finally:
            connection.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect(write=True) as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    # runs -----------------------------------------------------------------------------------------

    def start_run(self, run_id: str, kind: str, name: str, recipe: dict[str, Any], device: str,
                  data_source: dict[str, Any] | None = None) -> bool:
        """Create the run or mark an existing one running again; True when it already existed.

        Raises :class:`RunBusy` when another live process on this host is running it: two processes on one
        run would train every step twice.
        """
        now = _now()
        with self._transaction() as db:
            row = db.execute("SELECT status, host, pid FROM runs WHERE id = ?", (run_id,)).fetchone()
            exists = row is not None
            owner = row[2] if exists and row[0] == "running" and row[1] == socket.gethostname() else None
            if owner not in (None, os.getpid()) and _pid_alive(owner):
                raise RunBusy(f"run {run_id} is already running in process {row[2]}; wait for it or stop it")
            if exists:
                db.execute("UPDATE runs SET status='running', error=NULL, device=?, host=?, pid=?, updated=?, "
                           "data_source=? WHERE id=?",
                           (device, socket.gethostname(), os.getpid(), now, json.dumps(data_source), run_id))
            else:
                db.execute("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                           (run_id, kind, name, json.dumps(recipe, sort_keys=True), "running", None, device,
                            socket.gethostname(), os.getpid(), json.dumps(data_source), now, now))
        return exists

    def finish_run(self, run_id: str, status: str, error: str | None = None) -> None:
        """Record the run's end: ``done``, ``failed`` (with the error) or ``partial`` (interrupted)."""
        with self._transaction() as db:
            db.execute("UPDATE runs SET status=?, error=?, pid=NULL, updated=? WHERE id=?",
                       (status, error, _now(), run_id))

    def _row_to_run(self, row: sqlite3.Row) -> dict[str, Any]:
        status = row["status"]
        if status == "running" and row["host"] == socket.gethostname() and not _pid_alive(row["pid"] or -1):
            status = "partial"
        return {"id": row["id"], "kind": row["kind"], "name": row["name"], "status": status,
                "recipe": json.loads(row["recipe"]), "error": row["error"], "device": row["device"],
                "data_source": json.loads(row["data_source"]) if row["data_source"] else None,
                "created": row["created"], "updated": row["updated"]}

    def runs(self) -> list[dict[str, Any]]:
        """Every run, oldest first, with its number of finished steps."""
        if not self.db_path.exists():
            return []
        with self._connect() as db:
            rows = db.execute("SELECT r.*, (SELECT COUNT(*) FROM steps s WHERE s.run_id = r.id) AS n_steps "
                              "FROM runs r ORDER BY created, id").fetchall()
        return [{**self._row_to_run(r), "steps": r["n_steps"]} for r in rows]

    def run(self, run_id: str) -> dict[str, Any]:
        """The run whose id is ``run_id`` or starts with it (unique prefix)."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM runs WHERE id LIKE ? || '%'", (run_id,)).fetchall()
        if not rows:
            raise UnknownRun(f"unknown run '{run_id}'; `subnets list` shows the runs in {self.root}")
        exact = [r for r in rows if r["id"] == run_id]
        if len(rows) > 1 and not exact:
            raise UnknownRun(f"run id '{run_id}' is ambiguous: matches {', '.join(r['id'] for r in rows)}")
        return self._row_to_run(exact[0] if exact else rows[0])

    def results(self, run_id: str) -> list[dict[str, Any]]:
        """The JSON results of the run's finished steps, in key order."""
        with self._connect() as db:
            rows = db.execute("SELECT result FROM steps WHERE run_id = ? ORDER BY key", (run_id,)).fetchall()
        return [json.loads(r["result"]) for r in rows]

    def log_lines(self, run_id: str) -> list[str]:
        """The run's log, oldest first."""
        with self._connect() as db:
            rows = db.execute("SELECT at, message FROM log WHERE run_id = ? ORDER BY rowid", (run_id,)).fetchall()
        return [f"{r['at']} {r['message']}" for r in rows]

    def steps(self, run_id: str) -> RunSteps:
        """The :class:`~subnets.steps.StepStore` of one run."""
        return RunSteps(self, run_id)

    # artefacts ------------------------------------------------------------------------------------

    def write_tensors(self, tensors: Tensors) -> str:
        """Save a dict of tensors under the SHA-256 of its bytes; returns the hash."""
        buffer = io.BytesIO()
        import torch

        torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, buffer)
        data = buffer.getvalue()
        digest = _sha256(data)
        path = self._artefact_path(digest)
        if path.exists() and path.stat().st_size == len(data):
            return digest
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return digest

    def read_tensors(self, digest: str) -> Tensors | None:
        """The tensors saved under ``digest``, or None if the file is missing or its bytes fail the hash."""
        path = self._artefact_path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if _sha256(data) != digest:
            return None
        import torch

        return torch.load(io.BytesIO(data), weights_only=True)

    def _artefact_path(self, digest: str) -> Path:
        return self.artefacts / digest[:2] / f"{digest}.pt"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class RunSteps:
    """The steps of one run in a :class:`Store` (implements :class:`subnets.steps.StepStore`)."""

    def __init__(self, store: Store, run_id: str) -> None:
        self.store, self.run_id = store, run_id

    def get_step(self, key: str) -> tuple[dict[str, Any], dict[str, Tensors]] | None:
        with self.store._connect() as db:
            row = db.execute("SELECT result, artefacts FROM steps WHERE run_id = ? AND key = ?",
                             (self.run_id, key)).fetchone()
        if row is None:
            return None
        tensors = {}
        for group, digest in json.loads(row["artefacts"]).items():
            loaded = self.store.read_tensors(digest)
            if loaded is None:
                self.log(f"{key}: artefact '{group}' ({digest[:12]}) is missing or corrupt; recomputing")
                return None
            tensors[group] = loaded
        return json.loads(row["result"]), tensors

    def put_step(self, key: str, result: dict[str, Any], tensors: dict[str, Tensors] | None = None,
                 log: str | None = None) -> None:
        digests = {group: self.store.write_tensors(t) for group, t in (tensors or {}).items()}
        with self.store._transaction() as db:
            db.execute("INSERT OR REPLACE INTO steps VALUES (?,?,?,?,?)",
                       (self.run_id, key, json.dumps(result), json.dumps(digests), _now()))
            db.execute("UPDATE runs SET updated = ? WHERE id = ?", (_now(), self.run_id))
            if log is not None:
                self._append_log(db, log)

    def log(self, message: str) -> None:
        with self.store._transaction() as db:
            self._append_log(db, message)

    def _append_log(self, db: sqlite3.Connection, message: str) -> None:
        """Add ``message`` to the run's log inside the open transaction ``db``."""
        db.execute("INSERT INTO log VALUES (?,?,?)", (self.run_id, _now(), message))
