"""Group commit: operations queued by concurrent callers share one transaction.

Every write of the server is a function of a `Tx`, queued here. The writer
takes everything queued so far, runs each operation in its own savepoint (so
a failing one rolls back alone, leaving nothing half-stored; a lone operation
needs none) and commits the batch once. With `synchronous=FULL` that is one
fsync for all the concurrent callers instead of one each; each caller is
answered only after that commit, so an acknowledged write survives kill -9
(and power loss).

Operations run on the event loop's thread, which owns the Python work anyway;
only the COMMIT (the fsync) runs on a helper thread, so the loop keeps serving
(and queueing the next batch) while the disk syncs. Running the operations on
a thread of their own would make the two threads trade the GIL at every
SQLite call.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_BATCH = 1024
# Writes nobody waits on (claims, run results, logs) ride along with the next
# batch, or are committed after this long at the latest.
# Longer than the gap between a steady load's calls (2 ms at 500 events/s), so that
# a claim or a result rides with the next event's commit instead of making one
# of its own: at 500 events/s, 10 ms instead of 2 took the server's CPU per event
# down about a tenth and the dispatch latency's p50 by ~0.2 ms.
LAZY_SECONDS = 0.010
# How long a batch waits for a write lock another process holds before it fails.
BUSY_SECONDS = 30.0
# Database failures that pass: a lock another process held too long, a full disk.
_PASSING = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_FULL})


def passing(exc: BaseException, doing: str) -> BaseException:
    """`exc` as the store's callers see it: a database failure that passes is the
    domain's Unavailable (the call may be tried again), naming the cause; any
    other error is left as it is (an internal one)."""
    if not isinstance(exc, sqlite3.OperationalError):
        return exc
    code = getattr(exc, "sqlite_errorcode", None) or 0  # None when raised by Python code
    if code & 0xFF not in _PASSING:  # the primary code
        return exc
    log.warning("the database cannot %s now: %s", doing, exc)
    if doing == "take writes":
        message = f"the database cannot take writes now ({exc}); nothing was stored: try again"
    else:
        message = f"the database cannot {doing} now ({exc}): try again"
    unavailable = Unavailable(message)
    unavailable.__cause__ = exc
    return unavailable


class Tx:
    """What an operation gets: the connection, and hooks run after the commit."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._after: list[Callable[[], None]] = []
        self._undo: list[Callable[[], None]] = []

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` once this operation is durable (before its caller resumes)."""
        self._after.append(callback)

    def on_rollback(self, callback: Callable[[], None]) -> None:
        """Run `callback` if this operation's writes are rolled back: it undoes an
        in-memory change the operation made at once, so that the operations after
        it in the same transaction see it (as they see its rows)."""
        self._undo.append(callback)

    def _mark(self) -> tuple[int, int]:
        return len(self._after), len(self._undo)

    def _roll_back_to(self, mark: tuple[int, int]) -> None:
        hooks, undo = mark
        del self._after[hooks:]
        while len(self._undo) > undo:
            callback = self._undo.pop()
            try:
                callback()
            except Exception:
                log.exception("undoing an in-memory change failed")


Operation = Callable[[Tx], Any]


class Committer:
    """The helper thread that runs COMMIT (and so the fsync) off the event loop.

    Leaner than `run_in_executor`: one queue in, one `call_soon_threadsafe` out,
    which matters when every batch makes the trip."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[
            tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]] | None
        ] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="tripwire-store-sync", daemon=True)
        self._thread.start()

    def run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put((fn, args, future))
        return future

    def close(self, *, wait: bool = True) -> None:
        """End the thread once the jobs queued are done; `wait`: until then."""
        self._jobs.put(None)
        if wait:
            self._thread.join()

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args, future = job
            try:
                outcome: tuple[Any, BaseException | None] = (fn(*args), None)
            except BaseException as exc:
                outcome = (None, exc)
            try:
                future.get_loop().call_soon_threadsafe(_settle, future, *outcome)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Writer:
    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._conn: sqlite3.Connection | None = None
        self._queue: deque[tuple[Operation, asyncio.Future[Any]]] = deque()
        self._wakeup = asyncio.Event()
        self._sync = Committer()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._lazy_timer: asyncio.TimerHandle | None = None
        # Shutdown: the loop time past which no batch waits for another process's
        # write lock (None: BUSY_SECONDS each).
        self._give_up_at: float | None = None

    async def start(self) -> None:
        connecting = self._sync.run(self._connect)
        try:
            self._conn = await connecting
        except asyncio.CancelledError:
            # Given up (Ctrl-C at start) while SQLite may be waiting out its busy
            # timeout for a lock another process holds: the thread ends once
            # SQLite does, not waited for.
            self._sync.close(wait=False)
            raise
        except BaseException:
            self._sync.close()
            raise
        self._task = asyncio.create_task(self._run(), name="tripwire-store-writer")

    async def stop(self) -> None:
        """Commit what is queued, then close the connection."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await self._sync.run(conn.close)
        self._sync.close()

    def wait_at_most(self, seconds: float) -> None:
        """Shutdown: from now on, a batch waits for another process's write lock
        `seconds` more at most, all batches together (0: each tries once), so that
        stopping ends in time; a batch that cannot begin fails as usual."""
        until = asyncio.get_running_loop().time() + max(seconds, 0.0)
        self._give_up_at = until if self._give_up_at is None else min(self._give_up_at, until)

    async def _begin(self, conn: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, without blocking the loop while another process (an
        operator's sqlite3 shell, a backup) holds the write lock: the connection
        does not wait (busy_timeout 0); this does, asynchronously, up to
        BUSY_SECONDS (or until `wait_at_most` says), and the loop serves everything
        else meanwhile."""
        loop = asyncio.get_running_loop()
        deadline, pause = loop.time() + BUSY_SECONDS, 0.001
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                busy = (exc.sqlite_errorcode or 0) & 0xFF == sqlite3.SQLITE_BUSY
                give_up = deadline if self._give_up_at is None else min(deadline, self._give_up_at)
                if not busy or loop.time() >= give_up:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.1)

    @staticmethod
    def _apply(
        tx: Tx, batch: list[tuple[Operation, asyncio.Future[Any]]]
    ) -> list[tuple[Any, BaseException | None]]:
        """Run each operation in its own savepoint, inside one transaction begun
        already. A lone operation needs none: if it fails, the whole transaction
        is rolled back."""
        conn = tx.conn
        if len(batch) == 1:
            try:
                return [(batch[0][0](tx), None)]
            except Exception as exc:  # handed to the caller
                if conn.in_transaction:  # SQLite may have rolled back by itself
                    conn.execute("ROLLBACK")
                tx._roll_back_to((0, 0))
                return [(None, exc)]
        outcomes: list[tuple[Any, BaseException | None]] = []
        for operation, _ in batch:
            conn.execute("SAVEPOINT op")
            mark = tx._mark()
            try:
                result = operation(tx)
            except Exception as exc:  # handed to the caller
                if not conn.in_transaction:
                    # SQLite rolled the whole transaction back (a full disk, an I/O
                    # error): the batch fails, every caller told this cause.
                    raise
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                tx._roll_back_to(mark)
                outcomes.append((None, exc))
            else:
                conn.execute("RELEASE op")
                outcomes.append((result, None))
        return outcomes

    def submit(self, operation: Callable[[Tx], T], *, lazy: bool = False) -> asyncio.Future[T]:
        """Queue `operation`; the future resolves once it is committed. A lazy one
        does not start a commit of its own unless nothing else does within
        LAZY_SECONDS; it still runs in order with everything queued around it."""
        if self._closing or self._task is None or self._task.done():
            raise RuntimeError("the store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.append((operation, future))
        if not lazy:
            self._wakeup.set()
        elif self._lazy_timer is None:
            self._lazy_timer = loop.call_later(LAZY_SECONDS, self._wakeup.set)
        return future

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._lazy_timer is not None:
                self._lazy_timer.cancel()
                self._lazy_timer = None
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), MAX_BATCH))]
                await self._commit(batch)
            if self._closing:
                return

    async def _commit(self, batch: list[tuple[Operation, asyncio.Future[Any]]]) -> None:
        conn = self._conn
        assert conn is not None
        tx = Tx(conn)
        try:
            await self._begin(conn)
            outcomes = self._apply(tx, batch)
            if len(batch) > 1 or outcomes[0][1] is None:  # a lone failure rolled back
                await self._sync.run(conn.execute, "COMMIT")
        except Exception as failure:
            # Disk full, I/O error, a lock we could not get: SQLite may already have
            # rolled the transaction back. Nothing of the batch is stored; say so to
            # every caller and keep serving.
            log.exception("commit failed; the batch of %d operations is lost", len(batch))
            if conn.in_transaction:
                conn.rollback()
            outcomes = [(None, failure)] * len(batch)
            tx._roll_back_to((0, 0))
        for callback in tx._after:
            try:
                callback()
            except Exception:
                log.exception("after-commit hook failed")
        for (_, future), (result, error) in zip(batch, outcomes, strict=True):
            if future.cancelled():
                continue
            if error is not None:
                future.set_exception(passing(error, "take writes"))
            else:
                future.set_result(result)
