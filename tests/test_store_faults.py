"""Faults of the run store: bad ``--store`` paths, a corrupt database, read-only stores, ids that look like SQL
patterns, corrupt artefacts. Each is one ``error:`` line (or one ``warning:`` line) and never a traceback."""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch
from cli_invoke import invoke
from conftest import TINY_RECIPE

from subnets.runs.store import Store, StoreError

VERBS = ("run", "list", "show", "report")
AS_ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def finished_store(tmp_path_factory) -> Path:
    """A store holding one finished tiny lottery run (one step, three artefacts); copy it before changing it."""
    folder = tmp_path_factory.mktemp("finished")
    recipe = folder / "tiny.toml"
    recipe.write_text(TINY_RECIPE.format(name="tiny", seeds="[0]", length="30it", eval_every="30it", levels=0,
                                         rewind="0it"))
    code, stdout, stderr = invoke("run", str(recipe), "--store", str(folder / "store"), "--quiet", "--device", "cpu")
    assert code == 0, stderr
    return folder / "store"


@pytest.fixture
def store_copy(finished_store, tmp_path) -> tuple[Path, str]:
    """A private copy of :func:`finished_store` and the id of its run."""
    store = tmp_path / "copy"
    shutil.copytree(finished_store, store)
    [run] = Store(store).runs()
    return store, run["id"]


def _verb_args(verb: str, store: str, recipe: Path) -> list[str]:
    """``subnets VERB`` against ``store`` (a run that would train if the store were sound)."""
    if verb == "run":
        return ["run", str(recipe), "--store", store, "--quiet", "--device", "cpu"]
    return [verb, *(["abc"] if verb in ("show", "report") else []), "--store", store]


def _snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folders`` with its size and mtime: what a command that writes nothing leaves alone."""
    found = {}
    for folder in folders:
        for path in [folder, *folder.rglob("*")]:
            status = path.lstat()
            found[str(path)] = (status.st_size, status.st_mtime_ns)
    return found


def _one_error_line(code: int, stderr: str, *needles: str) -> None:
    assert code == 2, stderr
    assert stderr.startswith("error:") and stderr.count("\n") == 1, stderr
    assert all(needle in stderr for needle in needles), stderr


# 1. bad --store paths ---------------------------------------------------------------------------------------------


def _bad_store(case: str, tmp_path: Path) -> tuple[str, str]:
    """A bad ``--store`` value of kind ``case`` and a word its error must contain."""
    if case == "empty":
        return "", "empty"
    if case == "file":
        (tmp_path / "a-file").write_text("not a folder")
        return str(tmp_path / "a-file"), "not a folder"
    if case == "under-file":
        (tmp_path / "a-file").write_text("not a folder")
        return str(tmp_path / "a-file" / "runs"), "not a folder"
    return f"/{case}/subnets-test-store", "system folder"


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("case", ["empty", "file", "under-file", "sys", "proc"])
def test_a_bad_store_path_is_one_line_naming_it_and_writes_nothing(tiny_recipe, tmp_path, monkeypatch, case: str,
                                                                   verb: str) -> None:
    recipe = tiny_recipe()
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    store, problem = _bad_store(case, tmp_path)
    before = _snapshot(tmp_path)
    code, _, stderr = invoke(*_verb_args(verb, store, recipe))
    _one_error_line(code, stderr, problem, store or "''")
    assert _snapshot(tmp_path) == before


@pytest.mark.skipif(AS_ROOT, reason="root ignores folder permissions")
def test_an_unwritable_folder_is_refused_by_run_and_read_by_the_rest(tiny_recipe, tmp_path) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        for store in (folder, folder / "runs"):
            code, _, stderr = invoke(*_verb_args("run", str(store), tiny_recipe()))
            _one_error_line(code, stderr, str(folder), "not writable")
        code, stdout, _ = invoke("list", "--store", str(folder))
        assert code == 0 and "no runs yet" in stdout
        for verb in ("show", "report"):
            code, _, stderr = invoke(verb, "abc", "--store", str(folder))
            _one_error_line(code, stderr, "no run store", str(folder))
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o700)


@pytest.mark.skipif(AS_ROOT, reason="root ignores folder permissions")
@pytest.mark.parametrize("verb", VERBS)
def test_an_unreadable_folder_is_one_line(tiny_recipe, tmp_path, verb: str) -> None:
    folder = tmp_path / "closed"
    folder.mkdir()
    folder.chmod(0)
    try:
        code, _, stderr = invoke(*_verb_args(verb, str(folder), tiny_recipe()))
        _one_error_line(code, stderr, str(folder))
    finally:
        folder.chmod(0o700)


def test_a_report_folder_that_cannot_be_written_is_one_line(store_copy, tmp_path) -> None:
    store, run_id = store_copy
    (tmp_path / "a-file").write_text("")
    code, _, stderr = invoke("report", run_id, "--store", str(store), "--out", str(tmp_path / "a-file" / "rep"))
    _one_error_line(code, stderr, str(tmp_path / "a-file"), "not a folder")


def test_store_validate_raises_store_error(tmp_path) -> None:
    (tmp_path / "f").write_text("")
    for root in ("", tmp_path / "f", tmp_path / "f" / "x"):
        for write in (False, True):
            with pytest.raises(StoreError):
                Store(root).validate(write=write)
    assert Store(tmp_path / "new").validate(write=True) is False and not (tmp_path / "new").exists()


# 2. a corrupt database --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("content", ["random", "text"])
def test_a_corrupt_database_is_one_line_for_every_command(tiny_recipe, tmp_path, content: str, verb: str) -> None:
    store = tmp_path / "store"
    store.mkdir()
    data = random.Random(0).randbytes(4096) if content == "random" else b"these are my notes, not a database\n" * 9
    (store / "store.sqlite").write_bytes(data)
    recipe = tiny_recipe()
    before = _snapshot(tmp_path)
    code, _, stderr = invoke(*_verb_args(verb, str(store), recipe))
    _one_error_line(code, stderr, str(store / "store.sqlite"), "is not a subnets run store (file is not a database)")
    assert _snapshot(tmp_path) == before


# 3. reads never write ---------------------------------------------------------------------------------------------


def test_reads_create_no_files_and_change_nothing(store_copy) -> None:
    store, run_id = store_copy
    for leftover in ("store.sqlite-wal", "store.sqlite-shm"):
        (store / leftover).unlink(missing_ok=True)
    before = _snapshot(store)
    for args in (["list"], ["list", "--json"], ["show", run_id], ["show", run_id, "--json"],
                 ["report", run_id, "--out", str(store.parent / "elsewhere")]):
        code, _, stderr = invoke(*args, "--store", str(store))
        assert code == 0, stderr
    assert _snapshot(store) == before


def test_reads_open_the_database_read_only(store_copy, monkeypatch) -> None:
    store, run_id = store_copy
    opened: list[tuple[object, dict]] = []
    connect = sqlite3.connect

    def spy(database, *args, **kwargs):
        opened.append((database, kwargs))
        return connect(database, *args, **kwargs)

    monkeypatch.setattr("subnets.runs.store.sqlite3.connect", spy)
    reader = Store(store)
    assert [r["id"] for r in reader.runs()] == [run_id]
    assert reader.run(run_id)["status"] == "done" and reader.results(run_id) and reader.log_lines(run_id)
    assert reader.check(run_id) == []
    assert opened and all(kwargs.get("uri") and ("mode=ro" in str(database) or "immutable=1" in str(database))
                          for database, kwargs in opened), opened


def test_reads_see_a_live_writers_uncheckpointed_rows(store_copy) -> None:
    """With a writer connected (a -wal file), a read goes through the shared WAL index and sees its commits."""
    store, run_id = store_copy
    writer = sqlite3.connect(store / "store.sqlite", isolation_level=None)
    try:
        writer.execute("PRAGMA wal_autocheckpoint = 0")
        writer.execute("UPDATE runs SET name = 'renamed' WHERE id = ?", (run_id,))
        assert (store / "store.sqlite-wal").exists()
        assert Store(store).run(run_id)["name"] == "renamed"
    finally:
        writer.close()


@pytest.mark.skipif(AS_ROOT, reason="root ignores folder permissions")
def test_reads_work_in_a_read_only_store(store_copy) -> None:
    store, run_id = store_copy
    paths = [store, *store.rglob("*")]
    for path in reversed(paths):
        path.chmod(0o500 if path.is_dir() else 0o400)
    try:
        for args in (["list"], ["show", run_id, "--json"], ["report", run_id, "--out", str(store.parent / "r")]):
            code, _, stderr = invoke(*args, "--store", str(store))
            assert code == 0, stderr
        code, _, stderr = invoke("report", run_id, "--store", str(store))
        _one_error_line(code, stderr, str(store), "not writable")
    finally:
        for path in paths:
            path.chmod(0o700 if path.is_dir() else 0o600)


# 4. ids are literal prefixes ----------------------------------------------------------------------------------------


def test_show_takes_ids_as_literal_prefixes_not_sql_patterns(store_copy) -> None:
    store, run_id = store_copy
    for pattern in ("%", "_", f"_{run_id[1:3]}", f"{run_id[:2]}%", f"{run_id[:2]}_"):
        for verb in ("show", "report"):
            code, _, stderr = invoke(verb, pattern, "--store", str(store))
            _one_error_line(code, stderr, f"unknown run '{pattern}'")
    code, stdout, _ = invoke("show", run_id[:3], "--store", str(store), "--json")
    assert code == 0 and json.loads(stdout)["id"] == run_id
    with pytest.raises(LookupError, match="empty"):
        Store(store).run("")


# 5. a corrupt artefact of unchanged size is repaired ------------------------------------------------------------------


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_writing_tensors_again_repairs_a_corrupt_file_of_the_same_size(tmp_path) -> None:
    store = Store(tmp_path / "store")
    tensors = {"w": torch.arange(64, dtype=torch.float32)}
    digest = store.write_tensors(tensors)
    [path] = (tmp_path / "store" / "artefacts").rglob("*.pt")
    _flip_a_byte(path)
    assert store.read_tensors(digest) is None
    assert store.write_tensors(tensors) == digest
    assert torch.equal(store.read_tensors(digest)["w"], tensors["w"])


# 6. corrupt artefacts and resuming are said on the console ----------------------------------------------------------


def test_a_resumed_run_says_so_and_names_a_corrupt_artefact_on_the_console(tiny_recipe, tmp_path) -> None:
    store = tmp_path / "store"
    recipe = str(tiny_recipe(levels=0, length="30it", eval_every="30it"))
    code, stdout, stderr = invoke("run", recipe, "--store", str(store), "--quiet", "--device", "cpu")
    assert code == 0 and stderr == "", stderr
    run_id = stdout.split()[1]
    _flip_a_byte(sorted((store / "artefacts").rglob("*.pt"))[0])

    code, stdout, stderr = invoke("run", recipe, "--store", str(store), "--device", "cpu")
    console = stdout + stderr
    assert code == 0, console
    assert "is missing or corrupt; recomputing" in console
    assert f"resuming lottery run {run_id}" in console and "1 step already stored" in console
    assert Store(store).check(run_id) == []

    code, stdout, stderr = invoke("run", recipe, "--store", str(store), "--quiet", "--device", "cpu")
    assert code == 0 and stderr == "" and stdout.count("\n") == 1, stdout + stderr


# 7. show and report notice corruption -------------------------------------------------------------------------------


def test_check_names_missing_and_corrupt_artefacts(store_copy) -> None:
    store, run_id = store_copy
    files = sorted((store / "artefacts").rglob("*.pt"))
    assert Store(store).check(run_id) == []
    _flip_a_byte(files[0])
    files[1].unlink()
    problems = Store(store).check(run_id)
    assert len(problems) == 2
    assert any(files[0].stem[:12] in p and "corrupt" in p for p in problems), problems
    assert any(files[1].stem[:12] in p and "missing" in p for p in problems), problems


def test_show_and_report_warn_about_a_corrupt_artefact(store_copy, tmp_path) -> None:
    store, run_id = store_copy
    _flip_a_byte(sorted((store / "artefacts").rglob("*.pt"))[0])
    warning = (f"warning: 1 artefact of run {run_id} is missing or corrupt; run the recipe again to recompute it\n")
    code, stdout, stderr = invoke("show", run_id, "--store", str(store), "--json")
    assert code == 0 and stderr == warning and json.loads(stdout)["id"] == run_id
    code, stdout, stderr = invoke("show", run_id, "--store", str(store))
    assert code == 0 and stderr == warning and run_id in stdout
    code, stdout, stderr = invoke("report", run_id, "--store", str(store), "--out", str(tmp_path / "rep"))
    assert code == 0 and stderr == warning and (tmp_path / "rep" / "index.html").is_file()
