"""The dispatcher's hand-out order and cost, with fakes for the store and the workers."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from tripwire.server.dispatcher import Dispatcher, Session
from tripwire.server.models import Run, RunStatus

VERSIONS = 1000


class _Store:
    def claim(self, *args: Any) -> asyncio.Future[bool]:
        future = asyncio.get_running_loop().create_future()
        future.set_result(True)
        return future

    async def announce_queued(self, *args: Any, **kwargs: Any) -> None:
        return None


class _Index:
    def get(self, env: str, job_id: str) -> None:
        return None


class _Link:
    def __init__(self) -> None:
        self.started: list[str] = []

    def start_run(self, run: Run, event: Any) -> None:
        self.started.append(run.id)

    def stop_run(self, run_id: str, attempt: int, reason: str, *, ended: bool) -> None: ...


def _run(seq: int, version: str) -> Run:
    return Run("env", f"run{seq}", "job", version, "e", RunStatus.QUEUED, 0, 0, 0, seq=seq)


async def test_a_freed_slot_costs_one_pass_over_the_queues_however_many() -> None:
    dispatcher = Dispatcher(_Store(), _Index(), lambda: 0)  # type: ignore[arg-type]
    serves = frozenset(("job", f"v{i}") for i in range(VERSIONS))
    link = _Link()
    session = Session("s1", "env", "w1", serves, capacity=10, link=link)
    dispatcher.add_session(session)
    # Three queued runs per version, the oldest first in no version's order.
    runs = [_run(seq, f"v{(seq * 7) % VERSIONS}") for seq in range(1, 3 * VERSIONS + 1)]
    dispatcher.queued(runs, {})
    assert link.started == [f"run{seq}" for seq in range(1, 11)]  # the oldest ten
    ages = 0
    age = dispatcher._age

    def counted(key: Any) -> Any:
        nonlocal ages
        ages += 1
        return age(key)

    dispatcher._age = counted  # type: ignore[method-assign]
    for _ in range(5):  # five runs end, one after another: the next oldest go
        run_id, attempt = next(iter(session.running.items()))
        dispatcher.finished(run_id, attempt)
    await dispatcher.close()
    assert link.started[10:] == [f"run{seq}" for seq in range(11, 16)]
    assert ages <= 5 * (VERSIONS + 1)  # one look at each queue per freed slot


async def test_a_run_that_comes_back_goes_before_newer_runs_of_its_version() -> None:
    """A woken run, one due to retry, one requeued after a lease: the oldest queued
    run is handed out first, wherever it came from (the stored queue's order)."""
    dispatcher = Dispatcher(_Store(), _Index(), lambda: 0)  # type: ignore[arg-type]
    link = _Link()
    session = Session("s1", "env", "w1", frozenset({("job", "v")}), capacity=1, link=link)
    dispatcher.add_session(session)
    dispatcher.queued([_run(seq, "v") for seq in (1, 2, 3)], {})
    assert link.started == ["run1"]
    # run1 waits (its slot is free), run2 takes it, then run1's wait is over.
    dispatcher.finished("run1", 1)
    assert link.started == ["run1", "run2"]
    dispatcher.queued([replace(_run(1, "v"), attempt=1)], {})  # as the store has it
    # New runs (no seq yet: not read back from the store) come after all of them.
    new = Run("env", "run9", "job", "v", "e", RunStatus.QUEUED, 0, 0, 0)
    dispatcher.queued([new], {})
    for _ in range(3):
        run_id, attempt = next(iter(session.running.items()))
        dispatcher.finished(run_id, attempt)
    await dispatcher.close()
    assert link.started == ["run1", "run2", "run1", "run3", "run9"]


async def test_a_run_cancelled_while_queued_is_never_handed_out() -> None:
    dispatcher = Dispatcher(_Store(), _Index(), lambda: 0)  # type: ignore[arg-type]
    link = _Link()
    session = Session("s1", "env", "w1", frozenset({("job", "v")}), capacity=1, link=link)
    dispatcher.add_session(session)
    dispatcher.queued([_run(seq, "v") for seq in range(1, 201)], {})
    # Most of the queue ends while queued (the order's entries outnumber the runs).
    dispatcher.released([f"run{seq}" for seq in range(2, 200)], "cancelled")
    # One is queued again: its first entry in the order is stale, its new one counts.
    dispatcher.queued([replace(_run(5, "v"), attempt=1)], {})
    for _ in range(2):
        run_id, attempt = next(iter(session.running.items()))
        dispatcher.finished(run_id, attempt)
    await dispatcher.close()
    assert link.started == ["run1", "run5", "run200"]


async def test_a_new_run_goes_before_newer_stored_runs_of_another_job() -> None:
    """A new run has no seq here (it is not read back from the store): it is ranked by
    when it was created, not after every run read from the store, however newer."""
    dispatcher = Dispatcher(_Store(), _Index(), lambda: 0)  # type: ignore[arg-type]
    link = _Link()
    serves = frozenset({("a", "v"), ("b", "v")})
    session = Session("s1", "env", "w1", serves, capacity=1, link=link)
    dispatcher.add_session(session)
    busy = Run("env", "busy", "b", "v", "e", RunStatus.QUEUED, 0, 50, 50, seq=1)
    dispatcher.queued([busy], {})
    new = Run("env", "new", "b", "v", "e", RunStatus.QUEUED, 0, 100, 100)
    dispatcher.queued([new], {})
    stored = [
        Run("env", f"y{i}", "a", "v", "e", RunStatus.QUEUED, 0, 200, 200, seq=i) for i in (2, 3)
    ]
    dispatcher.queued(stored, {})
    for _ in range(3):
        run_id, attempt = next(iter(session.running.items()))
        dispatcher.finished(run_id, attempt)
    await dispatcher.close()
    assert link.started == ["busy", "new", "y2", "y3"]
