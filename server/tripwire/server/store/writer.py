"""Group commit: operations queued by concurrent callers share one transaction.

Every write of the server is a function of a `Tx`, queued here. The writer
takes everything queued so far, runs each operation in its own savepoint (so
a failing one rolls back alone, leaving nothing half-stored) and commits the
batch once. With `synchronous=FULL` that is one fsync for all the concurrent
callers instead of one each; each caller is answered only after that commit,
so an acknowledged write survives kill -9 (and power loss).

Everything runs on the event loop's thread, which owns the Python work anyway:
handing operations (or just the COMMIT) to another thread costs more CPU in
GIL and wake-up traffic than the WAL fsync it would hide (measured: ~110 us
per commit). What can take long, checkpointing the WAL into the database
file, is done on a helper thread with a connection of its own, so a commit
only ever appends to the WAL and syncs it.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_BATCH = 1024
# Checkpoint the WAL after about this many rows were written to it.
CHECKPOINT_ROWS = 2000


class Tx:
    """What an operation gets: the connection, and hooks run after the commit."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._after: list[Callable[[], None]] = []

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` once this operation is durable (before its caller resumes)."""
        self._after.append(callback)


Operation = Callable[[Tx], Any]


class Writer:
    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        checkpoint: Callable[[], None] | None = None,
    ) -> None:
        self._connect = connect
        self._checkpoint = checkpoint
        self._checkpointing: asyncio.Future[None] | None = None
        self._conn: sqlite3.Connection | None = None
        self._queue: deque[tuple[Operation, asyncio.Future[Any]]] = deque()
        self._wakeup = asyncio.Event()
        self._sync = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tripwire-store-sync")
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._checkpointed = 0  # conn.total_changes at the last checkpoint

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._conn = await loop.run_in_executor(self._sync, self._connect)
        if self._checkpoint is not None:
            self._conn.execute("PRAGMA wal_autocheckpoint = 0")
        self._task = asyncio.create_task(self._run(), name="tripwire-store-writer")

    async def stop(self) -> None:
        """Commit what is queued, then close the connection."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        if self._checkpointing is not None:
            await self._checkpointing
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.get_running_loop().run_in_executor(self._sync, conn.close)
        self._sync.shutdown(wait=True)

    def submit(self, operation: Callable[[Tx], T]) -> asyncio.Future[T]:
        if self._closing or self._task is None:
            raise RuntimeError("the store is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((operation, future))
        self._wakeup.set()
        return future

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            # One loop iteration's grace: requests already read from the network
            # queue their writes too, and share this commit.
            await asyncio.sleep(0)
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), MAX_BATCH))]
                await self._commit(batch)
            if self._closing:
                return

    def _start_checkpoint(self, conn: sqlite3.Connection) -> None:
        if self._checkpoint is None or self._checkpointing is not None:
            return
        self._checkpointed = conn.total_changes
        loop = asyncio.get_running_loop()
        self._checkpointing = loop.run_in_executor(self._sync, self._checkpoint)

        def done(future: asyncio.Future[None]) -> None:
            self._checkpointing = None
            if not future.cancelled() and future.exception() is not None:
                log.error("checkpoint failed", exc_info=future.exception())

        self._checkpointing.add_done_callback(done)

    async def _commit(self, batch: list[tuple[Operation, asyncio.Future[Any]]]) -> None:
        conn = self._conn
        assert conn is not None
        outcomes: list[tuple[Any, BaseException | None]] = []
        tx = Tx(conn)
        conn.execute("BEGIN IMMEDIATE")
        for operation, _ in batch:
            conn.execute("SAVEPOINT op")
            hooks = len(tx._after)
            try:
                result = operation(tx)
            except Exception as exc:  # handed to the caller
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                del tx._after[hooks:]
                outcomes.append((None, exc))
            else:
                conn.execute("RELEASE op")
                outcomes.append((result, None))
        try:
            conn.execute("COMMIT")
        except Exception as failure:
            log.exception("commit failed; the batch of %d operations is lost", len(batch))
            conn.rollback()
            outcomes = [(None, failure)] * len(batch)
            tx._after.clear()
        if conn.total_changes - self._checkpointed >= CHECKPOINT_ROWS:
            self._start_checkpoint(conn)
        for callback in tx._after:
            try:
                callback()
            except Exception:
                log.exception("after-commit hook failed")
        for (_, future), (result, error) in zip(batch, outcomes, strict=True):
            if future.cancelled():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)
