"""The run store: one SQLite file (WAL) plus a folder of content-addressed tensor files.

Layout of a store folder::

    store.sqlite          runs and their finished steps
    artefacts/ab/abcd...  torch.save'd dicts of tensors, named by the SHA-256 of their bytes

A step is written in two stages: its tensor files first (each to a temporary name, then renamed), then
one transaction that inserts the step row naming them. A kill between the two leaves only unreferenced
files, never a step that points at missing data; a file that is later truncated or altered fails its hash
check when read, and the step is recomputed (and :meth:`Store.check` reports it).

Reads never write: they open the database read-only (``mode=ro``, or ``immutable=1`` when no writer is connected
or SQLite cannot create its shared-memory file), so ``list``, ``show`` and ``report --out`` work in a store the
user may only read, and leave no ``-wal``/``-shm`` files behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import sqlite3
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

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


SYSTEM_FOLDERS = (Path("/proc"), Path("/sys"))
"""Kernel file systems: a store can never live there (and creating one fails in odd ways)."""

# SQLite's primary result codes (an error's ``sqlite_errorcode`` may be extended: the low byte is the primary code).
_READONLY, _CORRUPT, _CANTOPEN, _NOTADB = 8, 11, 14, 26

T = TypeVar("T")


class StoreError(ValueError):
    """The store's path cannot hold a run store (a file, no permission, a system folder) or its database is not
    one; the message is one line naming the path and the problem."""


class UnknownRun(LookupError):
    """No run (or more than one) matches the id given."""


class RunBusy(RuntimeError):
    """The run is already being computed by another live process on this host."""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sqlite_code(error: sqlite3.Error) -> int | None:
    """The primary SQLite result code of ``error`` (None for errors raised by Python's module itself)."""
    code = getattr(error, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def _stamp(path: Path) -> tuple[int, int, int, int]:
    """What changes when a file is written: inode, size, modification and change times."""
    status = path.stat()
    return status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns


def _reason(error: OSError) -> str:
    """The system's words for ``error``, in lower case ("permission denied")."""
    return (error.strerror or str(error)).lower()


def _nearest_existing(path: Path, what: str) -> tuple[Path, os.stat_result]:
    """``path`` or its closest ancestor that exists, with its status; :class:`StoreError` when one cannot be
    looked at (a folder on the way without search permission)."""
    probe = Path(os.path.abspath(path))
    while True:
        try:
            return probe, probe.stat()
        except (FileNotFoundError, NotADirectoryError):
            if probe.parent == probe:
                raise StoreError(f"{what} {path}: no folder on its path exists") from None
            probe = probe.parent
        except OSError as error:
            raise StoreError(f"{what} {path}: cannot look at {probe} ({_reason(error)})") from None


def _why_not_writable(folder: Path) -> str:
    """Why this process may not write in ``folder``: a read-only file system or no permission."""
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    return "a read-only file system" if read_only else "no write permission"


def check_folder(folder: Path, what: str = "folder", write: bool = True) -> None:
    """Raise :class:`StoreError` unless ``folder`` is a folder this process may read (and, with ``write``, write
    in), or does not exist and (with ``write``) could be created. Only looks (``stat``, ``access``), so a command
    refuses a bad path before it writes anything."""
    given = Path(os.path.abspath(folder))
    resolved = Path(os.path.realpath(folder))
    for system in SYSTEM_FOLDERS:
        if resolved == system or system in resolved.parents:
            raise StoreError(f"{what} {folder} is inside {system}, a system folder; choose a folder of your own")
    existing, status = _nearest_existing(folder, what)
    if not stat.S_ISDIR(status.st_mode):
        kind = " (it is a file)" if stat.S_ISREG(status.st_mode) else ""
        if existing == given:
            raise StoreError(f"{what} {folder} is not a folder{kind}")
        raise StoreError(f"{what} {folder} is under {existing}, which is not a folder{kind}")
    if existing == given and not os.access(existing, os.R_OK | os.X_OK):
        raise StoreError(f"{what} {folder} is not readable (no read permission)")
    if write and not os.access(existing, os.W_OK | os.X_OK):
        if existing == given:
            raise StoreError(f"{what} {folder} is not writable ({_why_not_writable(existing)})")
        raise StoreError(f"{what} {folder} cannot be created: {existing} is not writable "
                         f"({_why_not_writable(existing)})")


def _file_sha256(path: Path) -> str:
    """The SHA-256 of the file's bytes, read in chunks (artefacts can be large)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


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
        self.empty_path = str(root) == ""  # Path("") would silently be the current folder
        self.root = Path(root)
        self.db_path = self.root / "store.sqlite"
        self.artefacts = self.root / "artefacts"

    def validate(self, write: bool = False) -> bool:
        """Check that the store's path can hold a run store (with ``write``: that it can be created and written
        there) and that a database found there is a run store; True when a run store (with its tables) exists.

        Raises :class:`StoreError` with one line naming the path and the problem. It only looks (``stat``,
        ``access``, a read-only open), so commands call it first and a bad path fails before anything is written.
        """
        if self.empty_path:
            raise StoreError("run store path is empty (--store ''); give a folder")
        check_folder(self.root, "run store", write)
        if write and self.artefacts.exists():
            check_folder(self.artefacts, "artefact folder", write)
        try:
            status = self.db_path.stat()
        except FileNotFoundError:
            return False
        except OSError as error:
            raise StoreError(f"cannot look at {self.db_path} ({_reason(error)})") from None
        if not stat.S_ISREG(status.st_mode):
            raise StoreError(f"{self.db_path} is not a subnets run store (it is not a file)")
        if not os.access(self.db_path, os.R_OK | (os.W_OK if write else 0)):
            raise StoreError(f"{self.db_path} is not {'writable' if write else 'readable'} (no permission)")
        if status.st_size == 0:  # SQLite's empty database: a writer was stopped before it wrote the tables
            return False
        tables = self._read(lambda db: {row[0] for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")})
        if tables and not {"runs", "steps"} <= tables:
            raise StoreError(f"{self.db_path} is not a subnets run store (it has no runs and steps tables)")
        return bool(tables)

    @contextmanager
    def _database_errors(self) -> Iterator[None]:
        """Turn SQLite's "file is not a database" and "malformed" errors into one :class:`StoreError` line."""
        try:
            yield
        except sqlite3.DatabaseError as error:
            if _sqlite_code(error) in (_NOTADB, _CORRUPT):
                raise StoreError(f"{self.db_path} is not a subnets run store ({error})") from None
            raise

    @contextmanager
    def _connect(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """A read-write connection: with ``write``, the store is created first (folder, WAL mode, tables); without,
        the database must exist (the run process reading its own steps)."""
        if write:
            self.artefacts.mkdir(parents=True, exist_ok=True)
        elif not self.db_path.is_file():  # connecting would create an empty database
            raise UnknownRun(f"no run store at {self.root} (run a recipe first, or pass --store)")
        connection = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)
        try:
            with self._database_errors():
                connection.execute("PRAGMA busy_timeout = 60000")
                if write:
                    connection.execute("PRAGMA journal_mode = WAL")
                    connection.executescript(SCHEMA)
                connection.row_factory = sqlite3.Row
                yield connection
        finally:
            connection.close()

    def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        """``query(connection)`` on a read-only connection, so reads work in a store the user may only read and
        create no files.

        SQLite's ``mode=ro`` creates the ``-wal`` and ``-shm`` files of a WAL database and leaves them behind, so
        with no ``-wal`` file (no writer connected; the last one moved everything into the main file) the file is
        opened ``immutable=1``, which creates nothing, and the answer is kept only if the file is unchanged and no
        writer appeared meanwhile. Otherwise ``mode=ro`` shares the writers' index and sees their latest commits;
        where it cannot create the ``-shm`` file (a read-only folder), ``immutable=1`` reads the main file.
        """
        if not self.db_path.is_file():
            raise UnknownRun(f"no run store at {self.root} (run a recipe first, or pass --store)")
        wal = Path(f"{self.db_path}-wal")
        with self._database_errors():
            if not wal.exists():
                before = _stamp(self.db_path)
                try:
                    result = self._query("immutable=1", query)
                except sqlite3.DatabaseError:
                    if _stamp(self.db_path) == before and not wal.exists():
                        raise
                else:
                    if _stamp(self.db_path) == before and not wal.exists():
                        return result
            try:
                return self._query("mode=ro", query)
            except sqlite3.OperationalError as error:
                if _sqlite_code(error) not in (_READONLY, _CANTOPEN):
                    raise
            return self._query("immutable=1", query)

    def _query(self, parameters: str, query: Callable[[sqlite3.Connection], T]) -> T:
        """``query`` on a connection opened through a URI with ``parameters`` (``mode=ro``, ``immutable=1``)."""
        uri = f"{self.db_path.absolute().as_uri()}?{parameters}"
        connection = sqlite3.connect(uri, uri=True, timeout=60, isolation_level=None)
        try:
            connection.row_factory = sqlite3.Row
            return query(connection)
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
        run would train every step twice; :class:`StoreError` when the store cannot be written.
        """
        self.validate(write=True)
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
        """Every run, oldest first, with its number of finished steps (none where no store exists yet)."""
        if not self.validate():
            return []
        rows = self._read(lambda db: db.execute("SELECT r.*, (SELECT COUNT(*) FROM steps s WHERE s.run_id = r.id) "
                                                "AS n_steps FROM runs r ORDER BY created, id").fetchall())
        return [{**self._row_to_run(r), "steps": r["n_steps"]} for r in rows]

    def run(self, run_id: str) -> dict[str, Any]:
        """The run whose id is ``run_id`` or starts with it (a unique prefix, taken literally: ``%`` and ``_`` are
        characters, not patterns)."""
        if not self.validate():
            raise UnknownRun(f"no run store at {self.root} (run a recipe first, or pass --store)")
        if not run_id:
            raise UnknownRun(f"empty run id; `subnets list` shows the runs in {self.root}")
        rows = self._read(lambda db: db.execute("SELECT * FROM runs WHERE substr(id, 1, ?) = ?",
                                                (len(run_id), run_id)).fetchall())
        if not rows:
            raise UnknownRun(f"unknown run '{run_id}'; `subnets list` shows the runs in {self.root}")
        exact = [r for r in rows if r["id"] == run_id]
        if len(rows) > 1 and not exact:
            raise UnknownRun(f"run id '{run_id}' is ambiguous: matches {', '.join(r['id'] for r in rows)}")
        return self._row_to_run(exact[0] if exact else rows[0])

    def results(self, run_id: str) -> list[dict[str, Any]]:
        """The JSON results of the run's finished steps, in key order."""
        rows = self._read(lambda db: db.execute("SELECT result FROM steps WHERE run_id = ? ORDER BY key",
                                                (run_id,)).fetchall())
        return [json.loads(r["result"]) for r in rows]

    def log_lines(self, run_id: str) -> list[str]:
        """The run's log, oldest first."""
        rows = self._read(lambda db: db.execute("SELECT at, message FROM log WHERE run_id = ? ORDER BY rowid",
                                                (run_id,)).fetchall())
        return [f"{r['at']} {r['message']}" for r in rows]

    def stored_steps(self, run_id: str) -> int:
        """How many steps of the run are stored (a resumed run skips them, unless an artefact fails its check)."""
        return self._read(lambda db: db.execute("SELECT COUNT(*) FROM steps WHERE run_id = ?",
                                                (run_id,)).fetchone()[0])

    def check(self, run_id: str) -> list[str]:
        """One line per artefact of the run's steps that is missing or whose bytes fail their hash; empty when all
        are sound. Reading the run would not notice (its results are JSON in the database); the next run of its
        recipe recomputes those steps."""
        rows = self._read(lambda db: db.execute("SELECT key, artefacts FROM steps WHERE run_id = ? ORDER BY key",
                                                (run_id,)).fetchall())
        problems, checked = [], {}
        for row in rows:
            for group, digest in json.loads(row["artefacts"]).items():
                if digest not in checked:
                    checked[digest] = self._artefact_problem(digest)
                if checked[digest] is not None:
                    problems.append(f"{row['key']}: artefact '{group}' ({digest[:12]}) is {checked[digest]}")
        return problems

    def steps(self, run_id: str, echo: Callable[[str], None] | None = None) -> RunSteps:
        """The :class:`~subnets.steps.StepStore` of one run; ``echo`` (e.g. a progress object's ``log``) also shows
        the lines the user must see as they happen (see :meth:`RunSteps.say`)."""
        return RunSteps(self, run_id, echo)

    # artefacts ------------------------------------------------------------------------------------

    def write_tensors(self, tensors: Tensors) -> str:
        """Save a dict of tensors under the SHA-256 of its bytes; returns the hash. A file already there is kept
        only if its bytes pass the hash: one damaged in place (same size) is written again."""
        buffer = io.BytesIO()
        import torch

        torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, buffer)
        data = buffer.getvalue()
        digest = _sha256(data)
        path = self._artefact_path(digest)
        if self._artefact_problem(digest) is None:
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

    def _artefact_problem(self, digest: str) -> str | None:
        """What is wrong with the artefact file of ``digest`` (``missing``, ``corrupt``: its bytes fail the hash,
        or ``unreadable``), or None when it is sound."""
        try:
            actual = _file_sha256(self._artefact_path(digest))
        except FileNotFoundError:
            return "missing"
        except OSError as error:
            return f"unreadable ({_reason(error)})"
        return None if actual == digest else "corrupt"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class RunSteps:
    """The steps of one run in a :class:`Store` (implements :class:`subnets.steps.StepStore`)."""

    def __init__(self, store: Store, run_id: str, echo: Callable[[str], None] | None = None) -> None:
        self.store, self.run_id, self.echo = store, run_id, echo

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
                self.say(f"{key}: artefact '{group}' ({digest[:12]}) is missing or corrupt; recomputing")
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

    def say(self, message: str) -> None:
        """Log ``message`` and show it through ``echo`` (when set): for what the user should see as it happens, a
        run resuming or a step recomputed, which :meth:`log` keeps only in the run's log."""
        self.log(message)
        if self.echo is not None:
            self.echo(message)

    def _append_log(self, db: sqlite3.Connection, message: str) -> None:
        """Add ``message`` to the run's log inside the open transaction ``db``."""
        db.execute("INSERT INTO log VALUES (?,?,?)", (self.run_id, _now(), message))
