"""The dispatcher's hand-out order and cost, with fakes for the store and the workers."""

from __future__ import annotations

import asyncio
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
