"""The worker's daemon thread pool: results, errors, a bound, and shutdown."""

from __future__ import annotations

import threading

import pytest
from tripwire.client.worker import DaemonPool


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
