"""The worker's daemon thread pool: results, errors, a bound, threads written off, shutdown."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

import pytest
from tripwire.client.worker import DaemonPool

from ..conftest import eventually


def test_results_errors_and_daemon_threads() -> None:
    pool = DaemonPool(2, "test-pool")
    try:
        assert pool.submit(lambda x: x + 1, 41).result(timeout=5) == 42
        with pytest.raises(ZeroDivisionError):
            pool.submit(lambda: 1 / 0).result(timeout=5)
        names = {t.name: t.daemon for t in threading.enumerate() if t.name.startswith("test-pool")}
        assert names and all(names.values())
    finally:
        pool.shutdown(wait=True)


def test_never_more_threads_than_its_size_and_shutdown_cancels_what_waits() -> None:
    pool = DaemonPool(2, "bounded-pool")
    release = threading.Event()
    busy = [pool.submit(release.wait, 5) for _ in range(2)]
    waiting = [pool.submit(lambda: "late") for _ in range(3)]
    assert sum(t.name.startswith("bounded-pool") for t in threading.enumerate()) == 2
    pool.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in waiting)
    release.set()
    assert all(f.result(timeout=5) is True for f in busy)
    pool.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        pool.submit(lambda: None)


async def test_a_function_left_running_by_a_stopped_run_does_not_hold_a_place() -> None:
    pool = DaemonPool(1, "written-off-pool")
    release = threading.Event()
    try:
        loop = asyncio.get_running_loop()
        started = threading.Event()

        def never_returns_in_time() -> bool:
            started.set()
            return release.wait(10)

        stuck = loop.run_in_executor(pool, never_returns_in_time)
        assert await asyncio.to_thread(started.wait, 5)  # running, not only queued
        queued = loop.run_in_executor(pool, lambda: "next run")  # waits for the one thread
        assert _running(pool) == 1
        stuck.cancel()  # its run was stopped; the function keeps running
        assert await asyncio.wait_for(queued, 5) == "next run"
        assert _running(pool) == 2
        assert await asyncio.wait_for(loop.run_in_executor(pool, lambda: 7), 5) == 7
        release.set()  # the function returns at last: its thread ends
        await eventually(_one_left(pool))
        assert await asyncio.wait_for(loop.run_in_executor(pool, lambda: 8), 5) == 8
        assert _running(pool) == 1
    finally:
        release.set()
        pool.shutdown(wait=True)
    assert _running(pool) == 0


def _running(pool: DaemonPool) -> int:
    return sum(t.name.startswith("written-off-pool") for t in threading.enumerate())


def _one_left(pool: DaemonPool) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return _running(pool) == 1

    return check
