"""Retention: events finished longer ago than --retention-days go, with their
runs, tasks and logs; nothing pending or still running does."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import grpc
import pytest
from tripwire.server.app import Server
from tripwire.server.retention import DAY_MS, purge_pass
from tripwire.server.store import retention as store_retention
from tripwire.v1 import event_service_pb2 as ev
from tripwire.v1 import job_service_pb2 as jb
from tripwire.v1 import run_service_pb2 as rn

from ..conftest import FakeClock, StartServer, Stubs, eventually, make_stubs
from .helpers import event_job, js, req
from .raw_worker import RawWorker, job


@pytest.fixture
async def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def server(start_server: StartServer, clock: FakeClock) -> Server:
    return await start_server(clock=clock)


@pytest.fixture
async def conn(server: Server) -> AsyncIterator[Stubs]:
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield make_stubs(channel)


async def send(stubs: Stubs, event_id: str, name: str, **options: object) -> dict:
    body = {"event": {"id": event_id, "name": name, "payload": {"n": 1}}, "options": options}
    return js((await stubs.events.SendEvent(req(ev.SendEventRequest, body))).event)


async def found(call: Awaitable[Any]) -> bool:
    """True if the Get call answers, False if it is NOT_FOUND."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
        return False
    return True


async def exists(stubs: Stubs, event_id: str) -> bool:
    return await found(stubs.events.GetEvent(ev.GetEventRequest(id=event_id)))


async def run_exists(stubs: Stubs, run_id: str) -> bool:
    return await found(stubs.runs.GetRun(rn.GetRunRequest(id=run_id)))


def rows_of(db: Path, table: str, run_id: str) -> int:
    with sqlite3.connect(db) as conn:
        return int(
            conn.execute(f"SELECT COUNT(*) FROM {table} WHERE run_id = ?", (run_id,)).fetchone()[0]
        )


async def finished_run(stubs: Stubs, worker: RawWorker, event_id: str) -> str:
    """An event of `done`, its run carried through a task and a log line to SUCCESS."""
    event = await send(stubs, event_id, "done")
    run = (await worker.run_request())["run"]
    assert run["id"] == event["runs"][0]["id"]
    started = await worker.task(run, "step")
    await worker.complete(run, started["task"]["id"], output={"ok": True})
    log = {"runId": run["id"], "attempt": 1, "seq": 1, "message": "did it"}
    worker.send({"log": {**log, "level": "LOG_LEVEL_INFO"}})
    worker.result(run, output={"ok": True})

    async def succeeded() -> bool:
        got = js(await stubs.runs.GetRun(rn.GetRunRequest(id=run["id"])))
        return got["run"]["status"] == "RUN_STATUS_SUCCESS" and bool(got.get("logs"))

    await eventually(succeeded)
    return str(run["id"])


async def test_what_finished_before_the_cutoff_goes_and_the_rest_stays(
    server: Server, conn: Stubs, clock: FakeClock, tmp_path: Path
) -> None:
    db = tmp_path / "tripwire.db"
    worker = RawWorker(conn.workers)
    await worker.connect([job("on-done", ["done"])])
    for body in (event_job("idle", ["queued"]), event_job("cancelled", ["cancel-me"])):
        await conn.jobs.RegisterJob(req(jb.RegisterJobRequest, body))
    try:
        succeeded = await finished_run(conn, worker, "old-success")
    finally:
        await worker.close()
    cancelled_run = (await send(conn, "old-cancelled-run", "cancel-me"))["runs"][0]["id"]
    await conn.runs.CancelRun(rn.CancelRunRequest(id=cancelled_run))
    await send(conn, "old-no-runs", "nobody.listens")
    await send(conn, "old-cancelled-event", "later", deliverAfter=3600)
    await conn.events.CancelEvent(ev.CancelEventRequest(id="old-cancelled-event"))
    await send(conn, "old-pending", "later", deliverAfter=30 * 86_400)
    queued_run = (await send(conn, "old-queued", "queued"))["runs"][0]["id"]
    ended_lately = (await send(conn, "old-ended-lately", "cancel-me"))["runs"][0]["id"]

    clock.advance(2 * 86_400)
    await conn.runs.CancelRun(rn.CancelRunRequest(id=ended_lately))
    await send(conn, "new-no-runs", "nobody.listens")
    # Two events examined per step: the pass goes on past steps that delete nothing.
    done = await purge_pass(server.store, clock() - DAY_MS, step=2)

    assert (done.events, done.runs) == (4, 2)
    for gone in ("old-success", "old-cancelled-run", "old-no-runs", "old-cancelled-event"):
        assert not await exists(conn, gone), gone
    assert not await run_exists(conn, succeeded)
    assert not await run_exists(conn, cancelled_run)
    assert rows_of(db, "tasks", succeeded) == 0 and rows_of(db, "logs", succeeded) == 0
    for kept in ("old-pending", "old-queued", "old-ended-lately", "new-no-runs"):
        assert await exists(conn, kept), kept
    queued = js(await conn.runs.GetRun(rn.GetRunRequest(id=queued_run)))["run"]
    assert queued["status"] == "RUN_STATUS_QUEUED"
    assert await run_exists(conn, ended_lately)

    # Its id is forgotten: sent again, it is a new event, with a new run.
    again = await send(conn, "old-cancelled-run", "cancel-me")
    assert not again.get("deduplicated") and again["runs"][0]["id"] != cancelled_run
    # A second pass finds nothing more to delete.
    assert await purge_pass(server.store, clock() - DAY_MS) == type(done)(0, 0)


async def test_a_server_with_retention_purges_at_start(
    start_server: StartServer, clock: FakeClock
) -> None:
    first = await start_server(clock=clock)
    async with grpc.aio.insecure_channel(first.address) as channel:
        await send(make_stubs(channel), "old", "nobody.listens")
    await first.stop(grace=0.5)

    clock.advance(3 * 86_400)
    second = await start_server(clock=clock, retention_days=2.0)
    async with grpc.aio.insecure_channel(second.address) as channel:
        stubs = make_stubs(channel)
        await send(stubs, "new", "nobody.listens")

        async def purged() -> bool:
            return not await exists(stubs, "old")

        await eventually(purged)
        assert await exists(stubs, "new")


async def test_a_step_deletes_few_events_when_their_runs_hold_many_rows(
    server: Server, conn: Stubs, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = RawWorker(conn.workers)
    await worker.connect([job("on-done", ["done"])])
    try:
        ids = [await finished_run(conn, worker, f"e{i}") for i in range(3)]
    finally:
        await worker.close()
    # Each event weighs 4 rows (itself, its run, a task, a log line): at most 6 a step.
    monkeypatch.setattr(store_retention, "PURGE_ROWS", 6)
    steps: list[int] = []
    purge = server.store.purge

    async def counted(*args: Any, **kwargs: Any) -> Any:
        done = await purge(*args, **kwargs)
        steps.append(done.events)
        return done

    monkeypatch.setattr(server.store, "purge", counted)
    clock.advance(2 * 86_400)
    done = await purge_pass(server.store, clock() - DAY_MS)
    assert (done.events, done.runs) == (3, 3)
    assert [n for n in steps if n] == [1, 1, 1]
    assert not any([await run_exists(conn, run_id) for run_id in ids])


async def test_an_event_dated_ahead_by_a_wrong_clock_does_not_stop_the_scan(
    server: Server, conn: Stubs, clock: FakeClock
) -> None:
    await send(conn, "before", "nobody.listens")
    clock.advance(365 * 86_400)  # the host's clock a year ahead, then set right
    await send(conn, "ahead", "nobody.listens")
    clock.advance(-365 * 86_400)
    await send(conn, "after", "nobody.listens")
    clock.advance(2 * 86_400)
    done = await purge_pass(server.store, clock() - DAY_MS, step=2)
    assert done.events == 2
    assert [await exists(conn, i) for i in ("before", "ahead", "after")] == [False, True, False]


async def test_a_late_message_for_a_run_deleted_since_is_answered_cancel(
    server: Server, conn: Stubs, clock: FakeClock
) -> None:
    worker = RawWorker(conn.workers)
    await worker.connect([job("napper", ["nap"])])
    try:
        await send(conn, "n", "nap")
        run = (await worker.run_request())["run"]
        await worker.task(run, "zz", kind="TASK_KIND_WAIT", params={"seconds": 3600})
        await conn.runs.CancelRun(rn.CancelRunRequest(id=run["id"]))
        clock.advance(2 * 86_400)
        assert (await purge_pass(server.store, clock() - DAY_MS)).runs == 1
        ids = {"runId": run["id"], "attempt": 1}
        worker.send({"task": {**ids, "requestId": "late", "key": "after"}})
        ended = await worker.expect("cancel")
        assert ended["runId"] == run["id"] and "deleted" in ended["reason"]
    finally:
        await worker.close()


async def test_a_page_token_from_an_event_deleted_since_is_refused_even_if_its_id_came_back(
    server: Server, conn: Stubs, clock: FakeClock
) -> None:
    """Sent again after retention deleted its event, an id names a newer event: a
    token continuing from the old one must not page on from the new one (that would
    list the newer events again), nor fail silently."""
    for event_id in ("e0", "e1", "e2"):
        await send(conn, event_id, "nobody.listens")
    page = await conn.events.ListEvents(ev.ListEventsRequest(page_size=2))
    assert [e.id for e in page.events] == ["e2", "e1"]
    token = page.next_page_token
    clock.advance(2 * 86_400)
    await purge_pass(server.store, clock() - DAY_MS)
    for event_id in ("e0", "e1", "e2"):
        await send(conn, event_id, "nobody.listens")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await conn.events.ListEvents(ev.ListEventsRequest(page_token=token))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(
        "page_token: continues from an event this environment does not have (deleted by "
        "retention since"
    )
