"""Group commit: operations share one transaction, yet fail alone."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from tripwire.server.errors import Unavailable
from tripwire.server.store.writer import Committer, Tx, Writer, passing


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY)")
    return conn


@pytest.fixture
async def writer(tmp_path: Path) -> AsyncIterator[Writer]:
    w = Writer(lambda: connect(tmp_path / "db"))
    await w.start()
    yield w
    await w.stop()


def insert(key: str) -> Callable[[Tx], str]:
    def op(tx: Tx) -> str:
        tx.conn.execute("INSERT INTO t VALUES (?)", (key,))
        return key

    return op


def keys(tmp_path: Path) -> set[str]:
    return {r[0] for r in sqlite3.connect(tmp_path / "db").execute("SELECT k FROM t")}


async def test_concurrent_operations_all_commit(writer: Writer, tmp_path: Path) -> None:
    results = await asyncio.gather(*(writer.submit(insert(str(i))) for i in range(200)))
    assert sorted(results) == sorted(str(i) for i in range(200))
    assert len(keys(tmp_path)) == 200


async def test_a_failing_operation_rolls_back_alone(writer: Writer, tmp_path: Path) -> None:
    def half_then_fail(tx: Tx) -> None:
        tx.conn.execute("INSERT INTO t VALUES ('half')")
        raise ValueError("no")

    hooks: list[str] = []

    def with_hook(tx: Tx) -> None:
        tx.after_commit(lambda: hooks.append("bad"))
        raise ValueError("hook must not run")

    outcomes = await asyncio.gather(
        writer.submit(insert("a")),
        writer.submit(half_then_fail),
        writer.submit(with_hook),
        writer.submit(insert("b")),
        return_exceptions=True,
    )
    assert outcomes[0] == "a" and outcomes[3] == "b"
    assert isinstance(outcomes[1], ValueError) and isinstance(outcomes[2], ValueError)
    assert keys(tmp_path) == {"a", "b"}
    assert hooks == []


async def test_operations_see_earlier_ones_of_the_same_batch(writer: Writer) -> None:
    def count(tx: Tx) -> int:
        return int(tx.conn.execute("SELECT COUNT(*) FROM t").fetchone()[0])

    *_, seen = await asyncio.gather(
        writer.submit(insert("x")), writer.submit(insert("y")), writer.submit(count)
    )
    assert seen == 2


async def test_after_commit_hooks_run_before_the_caller_resumes(writer: Writer) -> None:
    seen: list[str] = []

    def op(tx: Tx) -> None:
        tx.after_commit(lambda: seen.append("hook"))

    await writer.submit(op)
    assert seen == ["hook"]


async def test_stop_commits_what_is_queued(tmp_path: Path) -> None:
    w = Writer(lambda: connect(tmp_path / "db"))
    await w.start()
    pending = [w.submit(insert(str(i))) for i in range(10)]
    await w.stop()
    assert [f.result() for f in pending] == [str(i) for i in range(10)]
    with pytest.raises(RuntimeError):
        w.submit(insert("late"))


async def test_a_batch_sqlite_rolled_back_fails_whole_and_the_writer_goes_on(
    writer: Writer, tmp_path: Path
) -> None:
    def rolls_back(tx: Tx) -> None:
        # What SQLite does by itself on SQLITE_FULL or an I/O error.
        tx.conn.execute("ROLLBACK")

    outcomes = await asyncio.gather(
        writer.submit(insert("lost")), writer.submit(rolls_back), return_exceptions=True
    )
    assert all(isinstance(o, Exception) for o in outcomes)
    assert await writer.submit(insert("after")) == "after"
    assert keys(tmp_path) == {"after"}


async def test_a_batch_sqlite_rolled_back_on_a_full_disk_tells_every_caller_so(
    writer: Writer, tmp_path: Path
) -> None:
    small = sqlite3.connect(":memory:")
    small.execute("CREATE TABLE big (b BLOB)")
    small.execute("PRAGMA max_page_count = 2")
    with pytest.raises(sqlite3.OperationalError) as full:
        small.execute("INSERT INTO big VALUES (zeroblob(100000))")
    small.close()
    assert full.value.sqlite_errorcode == sqlite3.SQLITE_FULL

    def fills_the_disk(tx: Tx) -> None:
        tx.conn.execute("INSERT INTO t VALUES ('lost too')")
        # What SQLite may do by itself when a statement finds the disk full.
        tx.conn.execute("ROLLBACK")
        raise full.value

    outcomes = await asyncio.gather(
        writer.submit(insert("lost")),
        writer.submit(fills_the_disk),
        writer.submit(insert("never run")),
        return_exceptions=True,
    )
    for outcome in outcomes:
        assert isinstance(outcome, Unavailable)
        assert "database or disk is full" in outcome.message
        assert "nothing was stored" in outcome.message
    assert await writer.submit(insert("after")) == "after"
    assert keys(tmp_path) == {"after"}


async def test_a_lone_failing_operation_stores_nothing(writer: Writer, tmp_path: Path) -> None:
    hooks: list[str] = []

    def half_then_fail(tx: Tx) -> None:
        tx.conn.execute("INSERT INTO t VALUES ('half')")
        tx.after_commit(lambda: hooks.append("bad"))
        raise ValueError("no")

    with pytest.raises(ValueError):
        await writer.submit(half_then_fail)
    assert keys(tmp_path) == set()
    assert hooks == []
    assert await writer.submit(insert("next")) == "next"
    assert keys(tmp_path) == {"next"}


async def test_a_lone_operation_sqlite_rolled_back_fails(writer: Writer, tmp_path: Path) -> None:
    def rolls_back(tx: Tx) -> str:
        tx.conn.execute("INSERT INTO t VALUES ('lost')")
        tx.conn.execute("ROLLBACK")
        return "claimed success"

    with pytest.raises(sqlite3.OperationalError):
        await writer.submit(rolls_back)
    assert keys(tmp_path) == set()
    assert await writer.submit(insert("after")) == "after"


async def test_a_lone_operation_failing_after_sqlite_rolled_back_gets_its_own_error(
    writer: Writer, tmp_path: Path
) -> None:
    def rolled_back_then_fails(tx: Tx) -> None:
        tx.conn.execute("INSERT INTO t VALUES ('lost')")
        tx.conn.execute("ROLLBACK")
        raise ValueError("disk trouble, as the operation saw it")

    with pytest.raises(ValueError, match="disk trouble"):
        await writer.submit(rolled_back_then_fails)
    assert await writer.submit(insert("after")) == "after"
    assert keys(tmp_path) == {"after"}


async def test_the_commit_thread_hands_back_results_and_errors() -> None:
    committer = Committer()
    try:
        assert await committer.run(lambda x: x * 2, 21) == 42
        with pytest.raises(ZeroDivisionError):
            await committer.run(lambda: 1 / 0)
    finally:
        committer.close()


async def test_a_failed_start_leaves_no_commit_thread(tmp_path: Path) -> None:
    def broken() -> sqlite3.Connection:
        raise sqlite3.OperationalError("unable to open database file")

    def committers() -> int:
        return sum(t.name == "tripwire-store-sync" for t in threading.enumerate())

    before = committers()
    w = Writer(broken)
    with pytest.raises(sqlite3.OperationalError):
        await w.start()
    assert committers() == before


async def test_in_memory_changes_are_undone_with_their_rolled_back_writes(
    writer: Writer, tmp_path: Path
) -> None:
    state: list[str] = []

    def change(name: str, fail: bool = False) -> Callable[[Tx], str]:
        def op(tx: Tx) -> str:
            tx.conn.execute("INSERT INTO t VALUES (?)", (name,))
            state.append(name)  # seen at once by the operations after this one
            tx.on_rollback(lambda: state.remove(name))
            if fail:
                raise ValueError(name)
            return list(state)[-1]

        return op

    def sees(tx: Tx) -> list[str]:
        return list(state)

    outcomes = await asyncio.gather(
        writer.submit(change("a")),
        writer.submit(change("b", fail=True)),
        writer.submit(sees),
        writer.submit(change("c")),
        return_exceptions=True,
    )
    assert outcomes[2] == ["a"] and isinstance(outcomes[1], ValueError)
    assert state == ["a", "c"] and keys(tmp_path) == {"a", "c"}

    with pytest.raises(ValueError):  # a lone operation: the whole transaction
        await writer.submit(change("d", fail=True))
    assert state == ["a", "c"]

    def sqlite_rolled_back(tx: Tx) -> None:
        tx.conn.execute("ROLLBACK")  # the commit fails: everything in the batch is undone

    outcomes = await asyncio.gather(
        writer.submit(change("e")), writer.submit(sqlite_rolled_back), return_exceptions=True
    )
    assert all(isinstance(o, Exception) for o in outcomes)
    assert state == ["a", "c"] and keys(tmp_path) == {"a", "c"}


def test_a_database_failure_that_passes_is_unavailable_and_any_other_is_left_as_it_is() -> None:
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("SELECT * FROM nowhere")
    except sqlite3.OperationalError as exc:
        missing = exc
    assert passing(missing, "take writes") is missing  # a bug: internal
    raised = sqlite3.OperationalError("disk I/O error")  # by Python code: no code at all
    assert passing(raised, "be read") is raised
    locked = sqlite3.OperationalError("database is locked")
    locked.sqlite_errorcode = sqlite3.SQLITE_BUSY  # type: ignore[attr-defined]
    unavailable = passing(locked, "take writes")
    assert isinstance(unavailable, Unavailable) and unavailable.__cause__ is locked
    assert unavailable.message == (
        "the database cannot take writes now (database is locked); nothing was stored: try again"
    )
    assert passing(locked, "be read").message == (  # type: ignore[attr-defined]
        "the database cannot be read now (database is locked): try again"
    )
    conn.close()
