"""A server that cannot start says why in one line (the entry point prints it)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
from tripwire.server.__main__ import main
from tripwire.server.store import sqlite as sqlite_store
from tripwire.server.store.schema import MIGRATIONS

from ..conftest import StartServer


async def test_an_address_in_use_is_an_os_error_naming_it(
    start_server: StartServer, tmp_path: Path
) -> None:
    first = await start_server()
    with pytest.raises(OSError, match=rf"could not bind {first.address} \(in use"):
        await start_server(address=first.address, db_path=str(tmp_path / "other.db"))


async def test_a_database_that_cannot_be_opened_is_an_os_error_naming_it(
    start_server: StartServer, tmp_path: Path
) -> None:
    path = str(tmp_path / "missing" / "tripwire.db")
    with pytest.raises(OSError, match=r"cannot open the database .*missing"):
        await start_server(db_path=path)


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ("missing/tripwire.db", r"its directory '.*missing' does not exist"),
        ("a-file/tripwire.db", r"'.*a-file' is not a directory"),
        ("a-directory", r"it is a directory"),
    ],
)
async def test_a_database_path_that_cannot_be_opened_says_what_is_wrong_with_it(
    start_server: StartServer, tmp_path: Path, where: str, reason: str
) -> None:
    (tmp_path / "a-file").write_text("")
    (tmp_path / "a-directory").mkdir()
    with pytest.raises(OSError, match=rf"cannot open the database .*: .* \({reason}\)$"):
        await start_server(db_path=str(tmp_path / where))


async def test_a_write_lock_held_past_the_wait_is_named_as_the_cause(
    start_server: StartServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "tripwire.db"
    outsider = sqlite3.connect(path, isolation_level=None)
    outsider.execute("PRAGMA journal_mode = WAL")
    outsider.execute("BEGIN IMMEDIATE")  # an operator's sqlite3 shell, mid-transaction
    connect = sqlite_store._connect

    def impatient(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)
        conn.execute("PRAGMA busy_timeout = 50")  # not SQLite's 30 s
        return conn

    monkeypatch.setattr(sqlite_store, "_connect", impatient)
    try:
        with pytest.raises(OSError) as raised:
            await start_server(db_path=str(path))
    finally:
        outsider.close()
    assert str(raised.value).endswith(
        "database is locked (another process held its write lock for 30 s: an sqlite3 "
        "shell, a backup?)"
    )


async def test_a_database_a_newer_server_has_migrated_is_refused_untouched(
    start_server: StartServer, tmp_path: Path
) -> None:
    path = tmp_path / "newer.db"
    first = await start_server(db_path=str(path))
    await first.stop(grace=0.1)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(OSError, match=r"cannot open the database .*newer than the \d+ this"):
        await start_server(db_path=str(path))
    conn = sqlite3.connect(path, isolation_level=None)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) + 1
    conn.close()


def test_the_entry_point_prints_the_reason_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "setswitchinterval", lambda interval: None)  # the server's tuning
    db = str(tmp_path / "missing" / "tripwire.db")
    assert main(["--address", "127.0.0.1:0", "--db", db]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tripwire serve: cannot open the database") and "Traceback" not in err


async def test_a_database_another_server_holds_is_refused_and_left_alone(
    start_server: StartServer, tmp_path: Path
) -> None:
    path = str(tmp_path / "shared.db")
    first = await start_server(db_path=path)
    held = r"cannot open the database .*in use by another tripwire server \(pid \d+\)"
    with pytest.raises(OSError, match=held):  # before it could touch anything
        await start_server(db_path=path)
    await first.stop(grace=0.1)
    second = await start_server(db_path=path)  # released with the first
    await second.stop(grace=0.1)


async def test_a_file_uri_db_starts(start_server: StartServer, tmp_path: Path) -> None:
    # SQLite opens file: URIs (config.py refuses file::memory: for that reason).
    server = await start_server(db_path=f"file:{tmp_path}/uri.db")
    await server.stop(grace=0.1)


async def test_a_uri_and_a_path_to_one_file_are_one_database(
    start_server: StartServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    first = await start_server(db_path="shared.db")
    try:
        with pytest.raises(OSError, match="in use by another tripwire server"):
            second = await start_server(db_path="file:shared.db")
            await second.stop(grace=0.1)
    finally:
        await first.stop(grace=0.1)


async def test_a_symlink_to_the_db_is_the_same_database(
    start_server: StartServer, tmp_path: Path
) -> None:
    real = tmp_path / "real.db"
    first = await start_server(db_path=str(real))
    os.symlink(real, tmp_path / "link.db")
    try:
        with pytest.raises(OSError, match="in use by another tripwire server"):
            second = await start_server(db_path=str(tmp_path / "link.db"))
            await second.stop(grace=0.1)
    finally:
        await first.stop(grace=0.1)


async def test_databases_no_other_process_can_open_take_no_lock(
    start_server: StartServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    first = await start_server(db_path="file:a?mode=memory&cache=shared")
    second = await start_server(db_path="file:b?mode=memory&cache=shared")
    await second.stop(grace=0.1)
    await first.stop(grace=0.1)
    # Not "<cwd>.lock" beside the working directory, shared by every such server.
    beside = tmp_path.parent / f"{tmp_path.name}.lock"
    assert not await asyncio.to_thread(beside.exists)
    assert not await asyncio.to_thread(lambda: list(tmp_path.glob("*.lock")))
