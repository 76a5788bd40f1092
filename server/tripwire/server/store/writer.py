"""Group commit: one writer thread, one transaction per batch of queued operations.

Every write of the server is a function of a `Tx`, queued here. The writer
takes everything queued so far, runs each operation in its own savepoint (so
a failing one rolls back alone, leaving nothing half-stored) and commits the
batch once. With `synchronous=FULL` that is one fsync for all the concurrent
callers, instead of one each; each caller is answered only after that commit,
so an acknowledged write survives kill -9 (and power loss).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_BATCH = 1024


class Tx:
    """What an operation gets: the connection, and hooks run after the commit."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._after: list[Callable[[], None]] = []

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` on the writer thread once this operation is durable."""
        self._after.append(callback)


Operation = Callable[[Tx], Any]
_Item = tuple[Operation, "asyncio.Future[Any]", asyncio.AbstractEventLoop]


class Writer:
    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="tripwire-store-writer", daemon=True)
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure

    def stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def submit(self, operation: Callable[[Tx], T]) -> asyncio.Future[T]:
        if not self._thread.is_alive():
            raise RuntimeError("the store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put((operation, future, loop))
        return future

    def _run(self) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:
            self._failure = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                batch = [item]
                stopping = False
                while len(batch) < MAX_BATCH:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        stopping = True
                        break
                    batch.append(more)
                self._commit(conn, batch)
                if stopping:
                    return
        finally:
            conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: list[_Item]) -> None:
        outcomes: list[tuple[Any, BaseException | None]] = []
        tx = Tx(conn)
        conn.execute("BEGIN IMMEDIATE")
        for operation, _, _ in batch:
            conn.execute("SAVEPOINT op")
            hooks = len(tx._after)
            try:
                result = operation(tx)
            except BaseException as exc:  # handed to the caller
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                del tx._after[hooks:]
                outcomes.append((None, exc))
            else:
                conn.execute("RELEASE op")
                outcomes.append((result, None))
        try:
            conn.execute("COMMIT")
        except BaseException as failure:
            log.exception("commit failed; the batch of %d operations is lost", len(batch))
            conn.rollback()
            outcomes = [(None, failure)] * len(batch)
            tx._after.clear()
        for callback in tx._after:
            try:
                callback()
            except Exception:
                log.exception("after-commit hook failed")
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, Any]]] = {}
        for (_, future, loop), (result, error) in zip(batch, outcomes, strict=True):
            by_loop.setdefault(loop, []).append((future, result, error))
        for loop, answers in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, answers)
            except RuntimeError:  # the caller's loop is gone
                pass


def _resolve(answers: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, exc in answers:
        if future.cancelled():
            continue
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
