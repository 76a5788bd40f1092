"""The RunJob stream, spoken message by message: SPEC §5."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from tripwire.client import Client
from tripwire.server import dispatcher as dispatcher_module
from tripwire.server.app import Server
from tripwire.server.dispatcher import Session
from tripwire.server.errors import Unavailable
from tripwire.server.models import Run, RunStatus
from tripwire.v1 import event_service_pb2 as ev
from tripwire.v1 import job_service_pb2 as jb
from tripwire.v1 import run_service_pb2 as rn
from tripwire.v1 import worker_service_pb2 as pb

from ..conftest import FakeClock, StartServer, Stubs, eventually, make_stubs
from .helpers import FailsOnce, event_job, js, req
from .raw_worker import RawWorker, job

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture
async def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def fast(start_server: StartServer, clock: FakeClock) -> Server:
    """A server with a short lease and a controllable clock."""
    return await start_server(clock=clock, lease=1.0, heartbeat_interval=0.2)


@pytest.fixture
async def conn(fast: Server) -> AsyncIterator[Stubs]:
    async with grpc.aio.insecure_channel(fast.address) as channel:
        yield make_stubs(channel)


@pytest.fixture
async def worker(conn: Stubs) -> AsyncIterator[RawWorker]:
    w = RawWorker(conn.workers)
    yield w
    await w.close()


async def send(stubs: Stubs, name: str, payload: dict | None = None, **event: object) -> dict:
    body = {"event": {"name": name, "payload": payload or {}, **event}}
    return js((await stubs.events.SendEvent(req(ev.SendEventRequest, body))).event)


async def run_status(stubs: Stubs, run_id: str, status: str) -> dict:
    async def check() -> dict | None:
        got = js(await stubs.runs.GetRun(rn.GetRunRequest(id=run_id)))
        return got if got["run"]["status"] == f"RUN_STATUS_{status}" else None

    return await eventually(check)


async def held_by(stubs: Stubs, run_id: str, worker_id: str) -> None:
    """Wait until GetRun shows the run EXECUTING on that worker (claims commit lazily)."""

    async def check() -> bool:
        run = js(await stubs.runs.GetRun(rn.GetRunRequest(id=run_id)))["run"]
        return run["status"] == "RUN_STATUS_EXECUTING" and run.get("workerId") == worker_id

    await eventually(check)


@contextlib.asynccontextmanager
async def a_run(
    start_server: StartServer, jobs: list[dict[str, Any]] | None = None, **settings: Any
) -> AsyncIterator[tuple[Server, Stubs, RawWorker, dict[str, Any]]]:
    """A server with `settings`, a raw worker serving `jobs` (by default job "j" on
    event "x"), and the run of one "x" event, executing on that worker."""
    server = await start_server(**settings)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)
        w = RawWorker(stubs.workers)
        try:
            await w.connect(jobs or [job("j", ["x"])])
            await send(stubs, "x")
            yield server, stubs, w, (await w.run_request())["run"]
        finally:
            await w.close()


async def test_hello_must_come_first_and_be_valid(conn: Stubs) -> None:
    bad = RawWorker(conn.workers)
    bad.call = conn.workers.RunJob(bad._requests())
    bad.send({"heartbeat": {}})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await bad.call.read()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "hello" in (err.value.details() or "")
    await bad.close()

    invalid = RawWorker(conn.workers)
    invalid.call = conn.workers.RunJob(invalid._requests())
    invalid.send({"hello": {"workerId": "w", "capacity": 1, "jobs": [job("Bad!", ["x"])]}})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await invalid.call.read()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("hello.jobs[0].id")
    await invalid.close()

    twice = [job("j", ["x"]), job("k", ["x"]), job("j", ["y"])]
    for worker_id, jobs, field in (
        ("w", [{**job("j", ["x"]), "logLevel": 99}], "hello.jobs[0].log_level: "),
        ("w", [{"id": "j", "version": "1.0.0"}], "hello.jobs[0].trigger: "),
        ("w\n1", [job("j", ["x"])], "hello.worker_id: holds the control character U+000A"),
        ("w" * 257, [job("j", ["x"])], "hello.worker_id: is longer than the limit of 256"),
        ("w", twice, "hello.jobs[2]: version 1.0.0 of job 'j' is already hello.jobs[0]"),
    ):
        named = RawWorker(conn.workers)
        named.call = conn.workers.RunJob(named._requests())
        named.send({"hello": {"workerId": worker_id, "capacity": 1, "jobs": jobs}})
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await named.call.read()
        assert (err.value.details() or "").startswith(field), err.value.details()
        await named.close()


async def test_a_run_with_one_task_end_to_end(conn: Stubs, worker: RawWorker) -> None:
    welcome = await worker.connect([job("greet", ["hi"])], capacity=2)
    assert welcome["heartbeatIntervalMs"] == 200 and welcome["leaseMs"] == 1000
    event = await send(conn, "hi", {"who": "ada"})
    request = await worker.run_request()
    run = request["run"]
    assert run["id"] == event["runs"][0]["id"] and run["attempt"] == 1
    assert request["event"]["payload"] == {"who": "ada"}
    # Without its runs, as for a run read back from the store (next test).
    assert "runs" not in request["event"]
    assert request["job"]["id"] == "greet" and request["ctx"]["run"]["attempt"] == 1
    assert request["cachedTasks"] == []
    started = await worker.task(run, "say", name="Say hello")
    assert started["task"]["status"] == "TASK_STATUS_RUNNING"
    done = await worker.complete(run, started["task"]["id"], output={"said": "hello ada"})
    assert done["task"]["status"] == "TASK_STATUS_COMPLETED"
    worker.send(
        {
            "log": {
                "runId": run["id"],
                "attempt": 1,
                "seq": 1,
                "level": "LOG_LEVEL_INFO",
                "message": "greeted",
                "data": {"n": 1},
            }
        }
    )
    worker.send(
        {
            "log": {
                "runId": run["id"],
                "attempt": 1,
                "seq": 1,
                "level": "LOG_LEVEL_INFO",
                "message": "greeted",
                "data": {"n": 1},
            }
        }
    )
    worker.send(
        {
            "log": {
                "runId": run["id"],
                "attempt": 1,
                "seq": 2,
                "level": "LOG_LEVEL_DEBUG",
                "message": "dropped at INFO",
            }
        }
    )
    worker.result(run, output={"ok": True})
    got = await run_status(conn, run["id"], "SUCCESS")
    assert got["run"]["output"] == {"ok": True}
    assert [t["key"] for t in got["tasks"]] == ["say"]
    assert got["tasks"][0]["output"] == {"said": "hello ada"}
    assert [entry["message"] for entry in got.get("logs", [])] == ["greeted"]


async def test_a_run_request_shows_when_the_run_started_as_get_run_does(
    conn: Stubs, worker: RawWorker, clock: FakeClock
) -> None:
    await conn.jobs.RegisterJob(req(jb.RegisterJobRequest, {"job": job("j", ["x"])}))
    await send(conn, "x")
    clock.advance(5)  # the run waits in the queue before a worker comes
    await worker.connect([job("j", ["x"])])
    request = await worker.run_request()
    run = request["run"]
    assert request["event"]["name"] == "x" and "runs" not in request["event"]
    stored = (await run_status(conn, run["id"], "EXECUTING"))["run"]  # the claim is lazy
    assert stored["startedAt"] == run["startedAt"]
    assert stored["updatedAt"] == run["updatedAt"] == run["startedAt"] != run["createdAt"]


async def test_stale_attempts_are_abandoned_and_cached_tasks_replayed(
    conn: Stubs, worker: RawWorker, fast: Server
) -> None:
    await worker.connect([job("j", ["go"])], worker_id="first")
    await send(conn, "go")
    run = (await worker.run_request())["run"]
    assert run["workerId"] == "first"
    await held_by(conn, run["id"], "first")  # GetRun says who holds it
    started = await worker.task(run, "a")
    await worker.complete(run, started["task"]["id"], output=1)
    # The worker goes silent: after the lease its run is given to another worker.
    worker.stall()
    second = RawWorker(conn.workers)
    try:
        await second.connect([job("j", ["go"])], worker_id="second")
        request = await second.run_request(within=10)
        assert request["run"]["id"] == run["id"] and request["run"]["attempt"] == 2
        assert request["run"]["workerId"] == "second"
        await held_by(conn, run["id"], "second")
        assert [(t["key"], t["status"]) for t in request["cachedTasks"]] == [
            ("a", "TASK_STATUS_COMPLETED")
        ]
        # The silent worker is told why its stream ended, and its run is abandoned.
        await worker.ended.wait()
        assert isinstance(worker.error, grpc.aio.AioRpcError)
        assert worker.error.code() == grpc.StatusCode.UNAVAILABLE
        assert "lease expired" in (worker.error.details() or "")
        abandoned = await worker.expect("abandon")
        assert abandoned["runId"] == run["id"] and abandoned["reason"] == "lease expired"
        # Anything the first worker says now is stale.
        late = RawWorker(conn.workers)
        await late.connect([job("j", ["go"])], worker_id="late")
        late.result(run, output="late")
        abandon = await late.expect("abandon")
        assert abandon["runId"] == run["id"]
        await late.close()
        second.result(request["run"], output="fresh")
        got = await run_status(conn, run["id"], "SUCCESS")
        assert got["run"]["output"] == "fresh" and got["run"]["attempt"] == 2
        assert "workerId" not in got["run"]  # EXECUTING only
    finally:
        await second.close()


async def test_send_event_task_is_executed_once_by_the_server(
    conn: Stubs, worker: RawWorker
) -> None:
    await worker.connect([job("parent", ["start"]), job("child", ["new.user"])])
    await send(conn, "start")
    run = (await worker.run_request())["run"]
    params = {"event": {"name": "new.user", "payload": {"userId": "u_1"}}}
    sent = await worker.task(run, "send-event", kind="TASK_KIND_SEND_EVENT", params=params)
    assert sent["task"]["status"] == "TASK_STATUS_COMPLETED"
    event = sent["task"]["output"]
    assert event["name"] == "new.user" and event["status"] == "EVENT_STATUS_DELIVERED"
    child = await worker.run_request()
    assert child["event"]["id"] == event["id"] and child["job"]["id"] == "child"
    # Asking again (a replay that missed its cache) returns the same event.
    again = await worker.task(run, "send-event", kind="TASK_KIND_SEND_EVENT", params=params)
    assert again["task"]["output"]["id"] == event["id"]
    listed = js(await conn.events.ListEvents(ev.ListEventsRequest(name="new.user")))
    assert len(listed["events"]) == 1


async def test_a_send_event_tasks_output_is_the_event_as_get_event_shows_it(
    conn: Stubs, worker: RawWorker
) -> None:
    strict = {"type": "object", "required": ["userId"]}
    await conn.jobs.RegisterJob(
        req(jb.RegisterJobRequest, event_job("strict", ["signup"], schema=strict))
    )
    await worker.connect([job("parent", ["start"])])
    await send(conn, "start")
    run = (await worker.run_request())["run"]
    for key, params in [
        ("invalid", {"event": {"name": "signup", "payload": {"nope": 1}}}),
        (
            "far",
            {"event": {"name": "signup"}, "options": {"deliverAt": "9999-12-31T23:59:59.999Z"}},
        ),
    ]:
        sent = await worker.task(run, key, kind="TASK_KIND_SEND_EVENT", params=params)
        output = sent["task"]["output"]
        got = js(await conn.events.GetEvent(ev.GetEventRequest(id=output.pop("id"))))
        runs = output.pop("runs")
        assert output.pop("deduplicated") is False
        expected = {k: v for k, v in got["event"].items() if k != "id"}
        assert output == expected and runs == got.get("runs", [])
    assert runs == [] and output["deliverAt"] == "9999-12-31T23:59:59.999Z"


async def test_a_send_event_tasks_output_gives_a_whole_second_as_get_event_does(
    conn: Stubs, worker: RawWorker, clock: FakeClock
) -> None:
    await worker.connect([job("parent", ["start"])])
    await send(conn, "start")
    run = (await worker.run_request())["run"]
    clock.now -= clock.now % 1000  # the JSON mapping of a Timestamp leaves out ".000"
    params = {"event": {"name": "signup"}}
    sent = await worker.task(run, "send", kind="TASK_KIND_SEND_EVENT", params=params)
    output = sent["task"]["output"]
    got = js(await conn.events.GetEvent(ev.GetEventRequest(id=output["id"])))["event"]
    times = ("timestamp", "deliverAt", "deliveredAt", "createdAt")
    assert {k: output[k] for k in times} == {k: got[k] for k in times}
    assert "." not in output["createdAt"]


async def test_wait_frees_the_slot_and_resumes(
    conn: Stubs, worker: RawWorker, clock: FakeClock
) -> None:
    await worker.connect([job("j", ["w"])], capacity=1)
    await send(conn, "w", id="first")
    run = (await worker.run_request())["run"]
    waiting = await worker.task(run, "nap", kind="TASK_KIND_WAIT", params={"seconds": 60})
    assert waiting["task"]["status"] == "TASK_STATUS_WAITING"
    await run_status(conn, run["id"], "WAITING")
    # The slot is free: another run arrives while the first waits.
    await send(conn, "w", id="second")
    other = (await worker.run_request())["run"]
    assert other["id"] != run["id"]
    worker.result(other, output=None)
    clock.advance(61)
    resumed = await worker.run_request()
    assert resumed["run"]["id"] == run["id"] and resumed["run"]["attempt"] == 2
    assert [(t["key"], t["status"]) for t in resumed["cachedTasks"]] == [
        ("nap", "TASK_STATUS_COMPLETED")
    ]


async def test_what_a_suspended_attempt_still_reports_is_kept_until_the_run_is_dispatched_again(
    conn: Stubs, worker: RawWorker, clock: FakeClock
) -> None:
    await worker.connect([job("j", ["w"])])
    await send(conn, "w")
    run = (await worker.run_request())["run"]
    running = await worker.task(run, "charge", request_id="r-charge")
    waiting = await worker.task(run, "nap", kind="TASK_KIND_WAIT", params={"seconds": 60})
    assert waiting["task"]["status"] == "TASK_STATUS_WAITING"
    # The function that was running beside the wait ends: its outcome and line are kept.
    worker.send({"log": {"runId": run["id"], "attempt": 1, "seq": 5, "message": "charged"}})
    done = await worker.complete(run, running["task"]["id"], output="receipt")
    assert done["task"]["status"] == "TASK_STATUS_COMPLETED"
    # Nothing new starts, though: a task sent before the worker heard is WAITING too.
    worker.send({"task": {"requestId": "r-new", "runId": run["id"], "attempt": 1, "key": "b"}})
    late = await worker.expect("task_result")
    assert (late["requestId"], late["task"]["status"]) == ("r-new", "TASK_STATUS_WAITING")
    got = await run_status(conn, run["id"], "WAITING")
    assert [(t["key"], t["status"]) for t in got["tasks"]] == [
        ("charge", "TASK_STATUS_COMPLETED"),
        ("nap", "TASK_STATUS_WAITING"),
    ]
    assert [line["message"] for line in got["logs"]] == ["charged"]
    assert [t["key"] for t in got["tasks"]] == ["charge", "nap"]  # "b" never started
    clock.advance(61)
    resumed = await worker.run_request()
    assert resumed["run"]["attempt"] == 2
    assert [(t["key"], t["status"]) for t in resumed["cachedTasks"]] == [
        ("charge", "TASK_STATUS_COMPLETED"),
        ("nap", "TASK_STATUS_COMPLETED"),
    ]
    # Once dispatched again, the suspended attempt is stale like any other: a task it
    # asks for (this stream still remembers it suspended the run) and a line alike.
    worker.send({"task": {"requestId": "r-old", "runId": run["id"], "attempt": 1, "key": "c"}})
    assert (await worker.expect("abandon"))["attempt"] == 1
    worker.send({"log": {"runId": run["id"], "attempt": 1, "seq": 6, "message": "late"}})
    assert (await worker.expect("abandon"))["attempt"] == 1
    worker.result(resumed["run"], output="receipt")
    got = await run_status(conn, run["id"], "SUCCESS")
    assert [line["message"] for line in got["logs"]] == ["charged"]


async def test_a_suspended_attempt_is_only_heard_on_its_own_stream(
    conn: Stubs, worker: RawWorker
) -> None:
    await worker.connect([job("j", ["w"])], worker_id="first")
    await send(conn, "w")
    run = (await worker.run_request())["run"]
    running = await worker.task(run, "charge")
    await worker.task(run, "nap", kind="TASK_KIND_WAIT", params={"seconds": 60})
    other = RawWorker(conn.workers)
    try:
        await other.connect([job("j", ["w"])], worker_id="other")
        other.send(
            {
                "taskComplete": {
                    "requestId": "c",
                    "runId": run["id"],
                    "attempt": 1,
                    "taskId": running["task"]["id"],
                    "output": "forged",
                }
            }
        )
        assert (await other.expect("abandon"))["runId"] == run["id"]
    finally:
        await other.close()
    got = await run_status(conn, run["id"], "WAITING")
    assert got["tasks"][0]["status"] == "TASK_STATUS_RUNNING"


async def test_jobs_sharing_a_worker_take_turns_oldest_run_first(
    conn: Stubs, worker: RawWorker
) -> None:
    await worker.connect([job("a", ["ea"]), job("b", ["eb"])], capacity=1)
    for name in ("ea", "eb", "ea", "eb"):
        await send(conn, name)
    seen = []
    for _ in range(8):
        run = (await worker.run_request())["run"]
        seen.append(run["jobId"])
        await send(conn, "e" + run["jobId"])  # behind the other job's older run
        worker.result(run, output=None)
    assert seen == ["a", "b"] * 4


async def test_under_a_limit_an_old_versions_run_is_not_starved_by_the_new_versions(
    conn: Stubs, worker: RawWorker, fast: Server
) -> None:
    # A rolling deploy under concurrencyLimit 1, which counts every version: the
    # slot goes to the oldest queued run, whichever version's worker it needs.
    def new_version_first(job_id: str) -> bool:  # in the order a set of keys gives
        old, new = ("default", job_id, "1.0.0"), ("default", job_id, "2.0.0")
        return next(iter({old, new}))[2] == next(iter({new, old}))[2] == "2.0.0"

    jid = next(f"j{i}" for i in range(1000) if new_version_first(f"j{i}"))
    await worker.connect([job(jid, ["x"], concurrencyLimit=1)], worker_id="old")
    await send(conn, "x")
    await send(conn, "x")
    run = (await worker.run_request())["run"]
    newer = RawWorker(conn.workers)
    try:
        await newer.connect([job(jid, ["x"], version="2.0.0", concurrencyLimit=1)], worker_id="new")
        await send(conn, "x")  # a 2.0.0 run, behind the older 1.0.0 one
        by = {"1.0.0": worker, "2.0.0": newer}
        seen = []
        for _ in range(4):
            await send(conn, "x")  # one more 2.0.0 run each time
            by[run["jobVersion"]].result(run, output=None)

            async def taken(done: str = run["id"]) -> str | None:
                holders = [s.worker_id for r, s in fast.dispatcher._owner.items() if r != done]
                return holders[0] if holders else None

            holder = await eventually(taken)
            run = (await (worker if holder == "old" else newer).run_request())["run"]
            seen.append(run["jobVersion"])
        assert seen == ["1.0.0", "2.0.0", "2.0.0", "2.0.0"]
    finally:
        await newer.close()


async def test_a_burst_of_log_lines_shares_commits_and_lands_before_the_result(
    conn: Stubs, worker: RawWorker, fast: Server
) -> None:
    await worker.connect([job("j", ["x"])])
    await send(conn, "x")
    run = (await worker.run_request())["run"]
    writer = fast.store._writer
    commit, commits = writer._commit, []

    async def counted(batch: Any) -> None:
        commits.append(len(batch))
        await commit(batch)

    writer._commit = counted  # type: ignore[method-assign]
    lines = 300
    burst = [
        {"log": {"runId": run["id"], "attempt": 1, "seq": seq, "message": f"line {seq}"}}
        for seq in range(1, lines + 1)
    ]
    worker.send({"batch": {"messages": burst}})  # all read at once, however busy the machine
    worker.result(run, output="done")
    got = await run_status(conn, run["id"], "SUCCESS")
    assert [line["message"] for line in got["logs"]] == [f"line {n}" for n in range(1, 301)]
    # Not one commit (and fsync) per line, each waiting for the one before: the
    # burst shares commits (others come and go: the claim, the result).
    assert max(commits) >= lines / 2, commits


async def test_a_worker_that_stops_reading_its_stream_loses_its_runs_after_a_lease(
    start_server: StartServer,
) -> None:
    server = await start_server(lease=1.0, heartbeat_interval=0.2)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)
        outgoing: asyncio.Queue[pb.RunJobRequest] = asyncio.Queue()

        async def requests() -> AsyncIterator[pb.RunJobRequest]:
            while True:
                yield await outgoing.get()

        deaf = stubs.workers.RunJob(requests())
        hello = {"workerId": "deaf", "jobs": [job("j", ["go"])], "capacity": 20}
        outgoing.put_nowait(json_format.ParseDict({"hello": hello}, pb.RunJobRequest()))
        assert (await deaf.read()).HasField("welcome")  # and never reads again

        async def beat() -> None:
            tick = asyncio.Event()
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(tick.wait(), 0.2)
                outgoing.put_nowait(pb.RunJobRequest(heartbeat=pb.Heartbeat()))

        beating = asyncio.create_task(beat())
        big = "p" * 900_000  # run requests that fill the connection's window
        runs = {(await send(stubs, "go", {"blob": big}))["runs"][0]["id"] for _ in range(20)}
        good = RawWorker(stubs.workers)
        try:
            await good.connect([job("j", ["go"])], worker_id="good", capacity=20)
            got = set()
            while got != runs:  # each within a few leases
                got.add((await good.run_request(within=10))["run"]["id"])
        finally:
            beating.cancel()
            deaf.cancel()
            await good.close()


async def test_a_worker_whose_heartbeats_show_it_stopped_reading_loses_its_runs(
    conn: Stubs, fast: Server
) -> None:
    """Small messages never fill the connection's window: the heartbeats' count shows it."""
    deaf = RawWorker(conn.workers)
    good = RawWorker(conn.workers)
    try:
        await deaf.connect([job("j", ["go"])], worker_id="deaf", acks=True)

        async def read_some() -> bool:
            return deaf.received >= 3

        await eventually(read_some)
        deaf.deafen()
        runs = {(await send(conn, "go"))["runs"][0]["id"] for _ in range(3)}
        for run_id in runs:
            await held_by(conn, run_id, "deaf")
        await good.connect([job("j", ["go"])], worker_id="good", acks=True)
        got = {(await good.run_request(within=10))["run"]["id"] for _ in runs}
        assert got == runs
    finally:
        await deaf.close()
        await good.close()


async def test_a_worker_that_said_what_it_read_and_stopped_heartbeating_loses_its_runs(
    conn: Stubs, worker: RawWorker
) -> None:
    """It still sends (log lines), but neither reads nor says what it read."""
    await worker.connect([job("j", ["go"])], acks=True)
    await send(conn, "go")
    run = (await worker.run_request())["run"]

    async def said() -> bool:
        return worker.received >= 3

    await eventually(said)
    worker.stall()
    worker.deafen()
    await send(conn, "go")  # a run request it does not read
    seq = 0

    async def dropped() -> bool:
        nonlocal seq
        seq += 1
        line = {"runId": run["id"], "attempt": 1, "seq": seq, "message": "busy"}
        worker.send({"log": line})
        got = js(await conn.runs.GetRun(rn.GetRunRequest(id=run["id"])))
        return got["run"]["status"] == "RUN_STATUS_QUEUED" or got["run"]["attempt"] > 1

    await eventually(dropped, every=0.1)


async def test_a_worker_reading_and_saying_so_keeps_its_runs_lease_after_lease(
    conn: Stubs, worker: RawWorker
) -> None:
    await worker.connect([job("j", ["go"])], acks=True)
    await send(conn, "go")
    run = (await worker.run_request())["run"]
    start = worker.received

    async def five_leases() -> bool:  # heartbeats (and their answers) every 0.2 s, lease 1 s
        return worker.received >= start + 25

    await eventually(five_leases)
    kinds = {
        worker.incoming.get_nowait().WhichOneof("message") for _ in range(worker.incoming.qsize())
    }
    assert kinds == {"heartbeat"} and not worker.held  # no abandon, nothing else
    worker.result(run, output="done")
    await run_status(conn, run["id"], "SUCCESS")


async def test_a_slow_reader_saying_what_it_read_keeps_its_runs(
    conn: Stubs, worker: RawWorker
) -> None:
    """Reading a backlog that takes it over a lease (40 run requests, 0.05 s each,
    lease 1 s), but reading: nothing is taken from it."""
    await worker.connect([job("j", ["go"])], acks=True, capacity=40)
    worker.pause = 0.05
    runs = {(await send(conn, "go"))["runs"][0]["id"] for _ in range(40)}
    got = {(await worker.run_request(within=20))["run"]["id"] for _ in runs}
    assert got == runs
    for run_id in runs:
        await held_by(conn, run_id, "w1")
    assert not [m for m in worker.held if m.WhichOneof("message") == "abandon"]


async def test_cancelling_a_waiting_run_replies_with_the_run_as_stored(
    conn: Stubs, worker: RawWorker
) -> None:
    await worker.connect([job("j", ["w"])])
    await send(conn, "w")
    run = (await worker.run_request())["run"]
    await worker.task(run, "nap", kind="TASK_KIND_WAIT", params={"seconds": 60})
    assert "waitUntil" in (await run_status(conn, run["id"], "WAITING"))["run"]
    cancelled = js((await conn.runs.CancelRun(rn.CancelRunRequest(id=run["id"]))).run)
    stored = js((await conn.runs.GetRun(rn.GetRunRequest(id=run["id"]))).run)
    assert cancelled == stored and cancelled["status"] == "RUN_STATUS_CANCELED"
    assert "waitUntil" not in cancelled
    # A task the suspended attempt still asks for is not WAITING ("it will come
    # back"): the run has ended, which the worker is told.
    worker.send({"task": {"requestId": "r-late", "runId": run["id"], "attempt": 1, "key": "b"}})
    ended = await worker.expect("cancel")
    assert (ended["runId"], ended["attempt"]) == (run["id"], 1)
    assert ended["reason"].endswith("has ended CANCELED")
    # And so is everything else it sends for that attempt, not only the first.
    ids = {"runId": run["id"], "attempt": 1}
    late: list[dict] = [
        {"task": {**ids, "requestId": "r-later", "key": "c"}},
        {"log": {**ids, "seq": 3, "message": "late"}},
        {"runResult": {**ids, "output": 1}},
    ]
    for message in late:
        worker.send(message)
        again = await worker.expect("cancel")
        assert again["reason"].endswith("has ended CANCELED"), message


@pytest.mark.parametrize("end", ["cancel", "disable"])
async def test_an_ended_executing_run_no_longer_names_a_worker(
    start_server: StartServer, end: str
) -> None:
    async with a_run(start_server) as (server, stubs, _worker, run):
        await held_by(stubs, run["id"], run["workerId"])
        if end == "cancel":
            await stubs.runs.CancelRun(rn.CancelRunRequest(id=run["id"]))
            status = "CANCELED"
        else:
            await stubs.jobs.SetJobEnabled(jb.SetJobEnabledRequest(job_id="j", enabled=False))
            status = "ABORTED"
        got = (await run_status(stubs, run["id"], status))["run"]
        assert "workerId" not in got
        listed = js(await stubs.runs.ListRuns(rn.ListRunsRequest(job_id="j")))["runs"]
        assert [r.get("workerId") for r in listed] == [None]
        with contextlib.closing(sqlite3.connect(server.settings.db_path)) as db:
            stored = db.execute("SELECT worker_id FROM runs WHERE id = ?", (run["id"],))
            assert stored.fetchone() == (None,)  # cleared, not only hidden


async def test_failed_task_retries_with_backoff_then_errors(
    conn: Stubs, worker: RawWorker, clock: FakeClock
) -> None:
    await worker.connect([job("j", ["r"])])
    await send(conn, "r")
    run = (await worker.run_request())["run"]
    retry = {"limit": 2, "minTimeoutMs": 1000, "randomize": False}
    started = await worker.task(run, "flaky", retry=retry)
    failed = await worker.complete(
        run,
        started["task"]["id"],
        error={"type": "IOError", "message": "boom"},
        nextTryOffset=7,  # the worker's number, kept for the next try
    )
    assert failed["task"]["status"] == "TASK_STATUS_WAITING"
    assert failed["task"]["attempts"] == 1 and "retryAt" in failed["task"]
    assert failed["task"]["tryOffset"] == "7"
    clock.advance(2)
    again = await worker.run_request()
    run2 = again["run"]
    assert run2["attempt"] == 2
    rerun = await worker.task(run2, "flaky", retry=retry)
    assert rerun["task"]["status"] == "TASK_STATUS_RUNNING"
    assert rerun["task"]["tryOffset"] == "7"
    final = await worker.complete(
        run2,
        rerun["task"]["id"],
        error={"type": "IOError", "message": "boom again"},
        nextTryOffset=9,
    )
    assert final["task"]["status"] == "TASK_STATUS_ERRORED"
    assert final["task"]["error"]["message"] == "boom again"
    assert final["task"]["tryOffset"] == "7"  # no next try: the last one's start stays


async def test_capacity_and_concurrency_limits(conn: Stubs, worker: RawWorker) -> None:
    await worker.connect([job("one", ["c"], concurrencyLimit=1)], capacity=5)
    await send(conn, "c", id="c1")
    await send(conn, "c", id="c2")
    first = (await worker.run_request())["run"]
    with pytest.raises(TimeoutError):
        await worker.expect("run_request", within=0.3)
    worker.result(first, output=None)
    second = (await worker.run_request())["run"]
    assert second["id"] != first["id"]


async def test_cancel_reaches_the_worker_and_nondeterminism_fails(
    conn: Stubs, worker: RawWorker
) -> None:
    await worker.connect([job("j", ["x"])])
    await send(conn, "x")
    run = (await worker.run_request())["run"]
    await conn.runs.CancelRun(rn.CancelRunRequest(id=run["id"]))
    notice = await worker.expect("cancel")
    assert notice["runId"] == run["id"]
    worker.result(run, output="too late")
    await worker.expect("abandon")
    assert (await run_status(conn, run["id"], "CANCELED"))["run"]["status"]

    await send(conn, "x")
    run = (await worker.run_request())["run"]
    started = await worker.task(run, "k")
    await worker.complete(run, started["task"]["id"], output=1)
    worker.send(
        {
            "task": {
                "requestId": "r2",
                "runId": run["id"],
                "attempt": run["attempt"],
                "key": "k",
                "kind": "TASK_KIND_WAIT",
                "params": {"seconds": 1},
            }
        }
    )
    await worker.expect("cancel")
    got = await run_status(conn, run["id"], "FAILURE")
    assert got["run"]["error"]["type"] == "NondeterminismError"
    # The same execution asked for both: not "an earlier execution".
    assert got["run"]["error"]["message"] == (
        "task 'k' is a RUN task, asked for now as a WAIT task: a cache key names one task "
        "under its parent (the handler is not deterministic, or gives two io calls the same key)"
    )


async def test_a_result_without_an_outcome_is_rejected_not_taken_for_success(
    conn: Stubs, worker: RawWorker
) -> None:
    await worker.connect([job("j", ["x"])])
    await send(conn, "x")
    run = (await worker.run_request())["run"]
    started = await worker.task(run, "step")
    ids = {"runId": run["id"], "attempt": 1}
    worker.send({"taskComplete": {**ids, "requestId": "c", "taskId": started["task"]["id"]}})
    rejected = await worker.expect("rejected")
    assert rejected["requestId"] == "c"
    assert rejected["message"].startswith("task_complete.outcome: is required")
    worker.send({"runResult": ids})
    rejected = await worker.expect("rejected")
    assert rejected["runId"] == run["id"]
    assert rejected["message"].startswith("run_result.outcome: is required")
    got = js(await conn.runs.GetRun(rn.GetRunRequest(id=run["id"])))
    assert got["run"]["status"] == "RUN_STATUS_EXECUTING"
    assert got["tasks"][0]["status"] == "TASK_STATUS_RUNNING"
    # Still this attempt's: a result with an outcome (null: nothing returned) ends both.
    done = await worker.complete(run, started["task"]["id"], output=None)
    assert done["task"]["status"] == "TASK_STATUS_COMPLETED"
    worker.result(run, output=None)
    await run_status(conn, run["id"], "SUCCESS")


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("task", {"requestId": "r", "key": "k", "kind": "TASK_KIND_RUN"}),
        ("taskComplete", {"requestId": "r", "taskId": "t", "output": 1}),
        ("log", {"seq": 1, "message": "hi"}),
        ("runResult", {"output": 1}),
    ],
)
@pytest.mark.parametrize("missing", ["runId", "attempt"])
async def test_a_message_naming_no_run_or_no_attempt_is_rejected_naming_the_field(
    conn: Stubs, worker: RawWorker, kind: str, body: dict[str, Any], missing: str
) -> None:
    """A run id or attempt left out (a field misspelt, which many JSON encoders
    drop) is a bad message, not a stale attempt: told to abandon "attempt 0 of run
    ''", a worker would stop the run without a word of what it got wrong."""
    await worker.connect([job("j", ["x"])])
    await send(conn, "x")
    run = (await worker.run_request())["run"]
    ids = {"runId": run["id"], "attempt": 1}
    del ids[missing]
    worker.send({kind: {**body, **ids}})
    rejected = await worker.expect("rejected")
    snake = {"runId": "run_id", "attempt": "attempt"}[missing]
    what = {"taskComplete": "task_complete", "runResult": "run_result"}.get(kind, kind)
    given = {"runId": "id", "attempt": "attempt"}[missing]  # the run request's Run field
    assert rejected["message"] == f"{what}.{snake}: is required: the run request's run.{given}"
    assert rejected.get("requestId", "") == body.get("requestId", "")
    assert rejected.get("runId", "") == ids.get("runId", "")
    worker.result(run, output="still mine")  # the run was not taken away
    await run_status(conn, run["id"], "SUCCESS")


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        ("TASK_KIND_SEND_EVENT", {"event": {"name": "y"}}),
        ("TASK_KIND_SEND_EVENTS", {"events": [{"name": "y"}]}),
        ("TASK_KIND_WAIT", {"seconds": 1}),
    ],
)
async def test_a_retry_policy_on_a_task_that_is_not_run_is_rejected(
    conn: Stubs, worker: RawWorker, kind: str, params: dict[str, Any]
) -> None:
    """Nothing retries it: stored, it showed as the task's policy in force."""
    await worker.connect([job("j", ["x"])])
    await send(conn, "x")
    run = (await worker.run_request())["run"]
    ids = {"requestId": "r", "runId": run["id"], "attempt": 1, "key": "k", "kind": kind}
    worker.send({"task": {**ids, "params": params, "retry": {"limit": 3}}})
    rejected = await worker.expect("rejected")
    name = kind.removeprefix("TASK_KIND_")
    assert rejected["message"] == f"task.retry: only a RUN task is retried, not {name}"
    assert "tasks" not in js(await conn.runs.GetRun(rn.GetRunRequest(id=run["id"])))


async def test_bad_task_requests_are_rejected_naming_the_field(
    conn: Stubs, worker: RawWorker
) -> None:
    await worker.connect([job("j", ["x"])])
    await send(conn, "x")
    run = (await worker.run_request())["run"]
    worker.send(
        {"task": {"requestId": "bad", "runId": run["id"], "attempt": 1, "kind": "TASK_KIND_RUN"}}
    )
    rejected = await worker.expect("rejected")
    assert rejected["requestId"] == "bad" and rejected["message"].startswith("task.key")
    worker.send({})  # sets none of its fields
    rejected = await worker.expect("rejected")
    assert rejected["message"] == "message: is empty: it sets none of its fields"
    worker.send(
        {
            "task": {
                "requestId": "bad2",
                "runId": run["id"],
                "attempt": 1,
                "key": "s",
                "kind": "TASK_KIND_SEND_EVENT",
                "params": {"event": {"name": ""}},
            }
        }
    )
    rejected = await worker.expect("rejected")
    assert rejected["message"].startswith("task.params.event.name")
    await conn.jobs.RegisterJob(
        req(
            jb.RegisterJobRequest,
            {"job": {**job("t", []), "trigger": {"interval": {"seconds": 9}}}},
        )
    )
    worker.send(
        {
            "task": {
                "requestId": "bad3",
                "runId": run["id"],
                "attempt": 1,
                "key": "s",
                "kind": "TASK_KIND_SEND_EVENT",
                "params": {"event": {"name": "x", "id": "t:1700000000000"}},
            }
        }
    )
    rejected = await worker.expect("rejected")
    assert rejected["message"].startswith("task.params.event.id: 't:1700000000000' is reserved")


@pytest.mark.parametrize(
    ("kind", "params", "message"),
    [
        (
            "TASK_KIND_SEND_EVENT",
            {"event": {"name": "e"}, "options": {"deliverAfter": -5}},
            "task.params.options.deliver_after: ",
        ),
        (
            "TASK_KIND_SEND_EVENT",
            {"event": {"name": "e"}, "options": {"accountId": "a\nb"}},
            "task.params.options.account_id: ",
        ),
        (
            "TASK_KIND_SEND_EVENTS",
            {"events": [{"name": "e"}], "options": {"deliverAfter": 999_999_999_999}},
            "task.params.options.deliver_after: ",
        ),
        ("TASK_KIND_SEND_EVENTS", {"events": []}, "task.params.events: "),
        (
            "TASK_KIND_SEND_EVENTS",
            {"events": [None, {"name": "x"}]},
            "task.params.events[0]: must be an object",
        ),
        ("TASK_KIND_SEND_EVENT", {"event": None}, "task.params.event: is required"),
        ("TASK_KIND_SEND_EVENT", "not an object", "task.params: must be an object"),
        ("TASK_KIND_SEND_EVENTS", [1], "task.params: must be an object"),
        (
            "TASK_KIND_SEND_EVENT",
            {"event": {"name": "x"}, "options": {"deliverAt": "tomorrow"}},
            "task.params.options.deliver_at: is not an RFC 3339 time",
        ),
        (
            "TASK_KIND_SEND_EVENT",
            {"event": {"name": "x", "timestamp": 5}},
            "task.params.event.timestamp: is not an RFC 3339 time",
        ),
        (
            "TASK_KIND_SEND_EVENTS",
            {"events": [{"name": "x"}, {"name": "y", "bogus": 1}]},
            "task.params.events[1].bogus: is not a field of EventInput",
        ),
        ("TASK_KIND_SEND_EVENT", {"event": {"name": 5}}, "task.params.event.name: expected string"),
    ],
)
async def test_a_send_event_task_refused_names_the_field_in_its_message(
    conn: Stubs, worker: RawWorker, kind: str, params: object, message: str
) -> None:
    await worker.connect([job("j", ["x"])])
    await send(conn, "x")
    run = (await worker.run_request())["run"]
    task = {"requestId": "r", "runId": run["id"], "attempt": 1, "key": "k", "kind": kind}
    worker.send({"task": {**task, "params": params}})
    rejected = await worker.expect("rejected")
    assert rejected["message"].startswith(message), rejected["message"]
    got = js(await conn.runs.GetRun(rn.GetRunRequest(id=run["id"])))
    assert "tasks" not in got  # nothing stored


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"task": {"key": "k", "kind": 99}}, "task.kind"),
        (
            {"task": {"key": "k", "kind": "TASK_KIND_SEND_EVENTS", "params": {"events": 5}}},
            "task.params.events",
        ),
        (
            {"task": {"key": "k", "kind": "TASK_KIND_SEND_EVENT", "params": {"event": "e"}}},
            "task.params.event",
        ),
        (
            {
                "task": {
                    "key": "k",
                    "kind": "TASK_KIND_SEND_EVENT",
                    "params": {"event": {"name": "e"}, "options": 5},
                }
            },
            "task.params.options",
        ),
        ({"log": {"seq": 1, "level": 42, "message": "hi"}}, "log.level"),
        *(
            (
                {"task": {"key": "k", "kind": "TASK_KIND_WAIT", "params": {"seconds": seconds}}},
                "task.params.seconds",
            )
            for seconds in (-1, 1e300, "5", True)
        ),
        # No JSON number at all: refused before the WAIT rules look at it.
        *(
            (
                {"task": {"key": "k", "kind": "TASK_KIND_WAIT", "params": {"seconds": seconds}}},
                "task.params: holds NaN or Infinity",
            )
            for seconds in (float("inf"), float("nan"))
        ),
    ],
)
async def test_malformed_worker_messages_are_rejected_and_the_run_goes_on(
    conn: Stubs, worker: RawWorker, message: dict, field: str
) -> None:
    await worker.connect([job("j", ["x"])])
    await send(conn, "x")
    run = (await worker.run_request())["run"]
    ((kind, body),) = message.items()
    ids = {"runId": run["id"], "attempt": 1} | ({"requestId": "bad"} if kind == "task" else {})
    worker.send({kind: {**ids, **body}})
    rejected = await worker.expect("rejected")
    assert rejected["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert rejected["message"].startswith(field), rejected
    assert rejected["runId"] == run["id"]
    # The run is still the worker's to finish.
    worker.send({"runResult": {"runId": run["id"], "attempt": 1, "output": "done"}})
    await run_status(conn, run["id"], "SUCCESS")


@pytest.mark.parametrize("field", ["runId", "requestId"])
async def test_an_overlong_id_is_rejected_without_being_echoed(
    conn: Stubs, worker: RawWorker, field: str
) -> None:
    await worker.connect([job("j", ["x"])])
    ids = {"runId": "r", "requestId": "q", "attempt": 1, "taskId": "t"} | {field: "i" * 10_000}
    worker.send({"taskComplete": {**ids, "output": 1}})
    rejected = await worker.expect("rejected")
    snake = "run_id" if field == "runId" else "request_id"
    assert rejected["message"] == f"task_complete.{snake}: is longer than 256 characters"
    assert "runId" not in rejected and "requestId" not in rejected


async def test_timed_out_runs_end_and_the_worker_is_told(
    conn: Stubs, worker: RawWorker, clock: FakeClock
) -> None:
    await worker.connect([job("slow", ["s"], maxDurationSeconds=30)])
    await send(conn, "s")
    run = (await worker.run_request())["run"]
    clock.advance(31)
    await worker.expect("cancel")
    got = await run_status(conn, run["id"], "TIMED_OUT")
    assert got["run"]["error"]["type"] == "TimeoutError"


async def test_a_waiting_run_past_its_max_duration_times_out_rather_than_wake(
    conn: Stubs, worker: RawWorker, clock: FakeClock
) -> None:
    await worker.connect([job("j", ["x"], maxDurationSeconds=10)], capacity=1)
    await send(conn, "x")
    run = (await worker.run_request())["run"]
    await worker.task(run, "nap", kind="TASK_KIND_WAIT", params={"seconds": 5})
    await run_status(conn, run["id"], "WAITING")
    clock.advance(20)  # both its wait and its max duration are over
    await run_status(conn, run["id"], "TIMED_OUT")
    with pytest.raises(TimeoutError):  # it was never dispatched again, only to be cancelled
        await worker.expect("run_request", within=0.5)


async def test_tasks_left_open_end_with_their_run(conn: Stubs, worker: RawWorker) -> None:
    await worker.connect([job("j", ["x"])])
    await send(conn, "x")
    run = (await worker.run_request())["run"]
    started = await worker.task(run, "never-finished")
    assert started["task"]["status"] == "TASK_STATUS_RUNNING"
    worker.result(run, output="done anyway")
    stored = await run_status(conn, run["id"], "SUCCESS")
    assert [t["status"] for t in stored["tasks"]] == ["TASK_STATUS_CANCELED"]


async def test_get_run_of_a_large_run_comes_in_pages_a_default_client_can_read(
    conn: Stubs, worker: RawWorker, fast: Server
) -> None:
    await worker.connect([job("j", ["x"])])
    await send(conn, "x")
    run = (await worker.run_request())["run"]
    for i in range(5):  # each output under the 1 MiB limit, together over 4 MiB
        started = await worker.task(run, f"chunk-{i}", request_id=f"r{i}")
        await worker.complete(run, started["task"]["id"], output="x" * 900_000)
        worker.send({"log": {"runId": run["id"], "attempt": 1, "seq": i + 1, "message": f"{i}"}})
    worker.result(run, output="ok")
    await run_status(conn, run["id"], "SUCCESS")

    keys: list[str] = []
    lines: list[str] = []
    token, pages = "", 0
    while True:  # conn is a default client: 4 MiB at most per reply
        reply = await conn.runs.GetRun(rn.GetRunRequest(id=run["id"], page_token=token))
        assert reply.ByteSize() < 4 * 1024 * 1024 and reply.run.id == run["id"]
        keys += [t.key for t in reply.tasks]
        lines += [entry.message for entry in reply.logs]
        pages += 1
        token = reply.next_page_token
        if not token:
            break
    assert pages == 2
    assert keys == [f"chunk-{i}" for i in range(5)] and lines == ["0", "1", "2", "3", "4"]

    client = Client("pages", url=fast.address)
    try:
        detail = await client.aio.get_run(run["id"])
    finally:
        await client.aio.close()
        client.close()
    assert [t.key for t in detail.tasks] == keys and len(detail.logs) == 5

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await conn.runs.GetRun(rn.GetRunRequest(id=run["id"], page_token="nonsense"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("page_token")


async def test_an_event_with_large_runs_comes_in_pages_a_default_client_can_read(
    start_server: StartServer,
) -> None:
    jobs = [job(f"j{i}", ["x"]) for i in range(5)]
    async with a_run(start_server, jobs) as (server, stubs, w, first):
        runs = [first] + [(await w.run_request())["run"] for _ in range(4)]
        for run in runs[:4]:  # each output under the 1 MiB limit, together over 4 MiB
            w.result(run, output="x" * 900_000)
            await run_status(stubs, run["id"], "SUCCESS")
        event_id = first["eventId"]

        ids: list[str] = []
        token, pages = "", 0
        while True:  # stubs is a default client: 4 MiB at most per reply
            reply = await stubs.events.GetEvent(ev.GetEventRequest(id=event_id, page_token=token))
            assert reply.ByteSize() < 4 * 1024 * 1024 and reply.event.id == event_id
            ids += [r.id for r in reply.runs]
            pages += 1
            token = reply.next_page_token
            if not token:
                break
        assert pages == 2 and sorted(ids) == sorted(r["id"] for r in runs)
        client = Client("pages", url=server.address)
        try:
            detail = await client.aio.get_event(event_id)
        finally:
            await client.aio.close()
            client.close()
        assert [r.id for r in detail.runs] == ids

        cancelled = await stubs.events.CancelRunsForEvent(ev.CancelRunsForEventRequest(id=event_id))
        assert list(cancelled.cancelled_run_ids) == [runs[4]["id"]]
        assert cancelled.more_runs and 0 < len(cancelled.runs) < 5
        assert cancelled.ByteSize() < 4 * 1024 * 1024

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.events.GetEvent(ev.GetEventRequest(id=event_id, page_token="x"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_run_is_timed_out_by_its_own_versions_max_duration(
    conn: Stubs, worker: RawWorker, clock: FakeClock
) -> None:
    old = job("j", ["x"], version="1.0.0", maxDurationSeconds=30)
    await conn.jobs.RegisterJob(req(jb.RegisterJobRequest, {"job": old}))
    (run,) = (await send(conn, "x"))["runs"]  # on 1.0.0, queued: nobody serves it yet
    newer = job("j", ["x"], version="2.0.0")  # no maximum
    await conn.jobs.RegisterJob(req(jb.RegisterJobRequest, {"job": newer}))
    await worker.connect([old])
    assert (await worker.run_request())["run"]["id"] == run["id"]
    clock.advance(31)
    notice = await worker.expect("cancel")
    assert notice["runId"] == run["id"]
    got = await run_status(conn, run["id"], "TIMED_OUT")
    assert got["run"]["jobVersion"] == "1.0.0"


async def test_shutdown_drains_workers_and_requeues(start_server: StartServer) -> None:
    server = await start_server(lease=5.0, heartbeat_interval=1.0)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)
        w = RawWorker(stubs.workers)
        await w.connect([job("j", ["d"])])
        event = await send(stubs, "d")
        await w.run_request()
        await server.stop(grace=0.5)
        await w.expect("drain")
        await w.close()
    restarted = await start_server()
    async with grpc.aio.insecure_channel(restarted.address) as channel:
        stubs = make_stubs(channel)
        got = js(await stubs.runs.GetRun(rn.GetRunRequest(id=event["runs"][0]["id"])))
        assert got["run"]["status"] == "RUN_STATUS_QUEUED"


async def test_watch_run_streams_changes_until_terminal(conn: Stubs, worker: RawWorker) -> None:
    await worker.connect([job("j", ["x"])])
    event = await send(conn, "x")
    run_id = event["runs"][0]["id"]
    watch = conn.runs.WatchRun(rn.WatchRunRequest(id=run_id))
    first = js(await watch.read())
    run = (await worker.run_request())["run"]
    started = await worker.task(run, "t")
    await worker.complete(run, started["task"]["id"], output=2)
    worker.result(run, output=3)
    updates = [first]
    while (msg := await watch.read()) is not grpc.aio.EOF:
        updates.append(js(msg))
    statuses = [u["run"]["status"] for u in updates if "run" in u]
    assert statuses[-1] == "RUN_STATUS_SUCCESS"
    assert any("task" in u and u["task"]["status"] == "TASK_STATUS_COMPLETED" for u in updates)


async def test_a_watch_the_store_fails_ends_internal_as_other_calls_do(
    conn: Stubs,
    worker: RawWorker,
    fast: Server,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await worker.connect([job("j", ["x"])])
    run_id = (await send(conn, "x"))["runs"][0]["id"]
    watch = conn.runs.WatchRun(rn.WatchRunRequest(id=run_id))
    assert js(await watch.read())["run"]["id"] == run_id
    FailsOnce(fast.store, "run_changes", monkeypatch)  # the read after the next change
    run = (await worker.run_request())["run"]
    worker.result(run, output=1)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        while await watch.read() is not grpc.aio.EOF:
            pass
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert err.value.details() == "internal error; see the server log"
    assert "disk I/O error" in caplog.text


async def test_a_watch_gives_a_start_before_its_lines_and_a_wait_after_its_task(
    conn: Stubs, worker: RawWorker, clock: FakeClock
) -> None:
    """A start comes before what the run did since (the claim and its first line
    may commit together: the task asked for after them is the one write someone
    waits on); a wait's task before the WAITING it puts the run in; the end last."""
    await conn.jobs.RegisterJob(req(jb.RegisterJobRequest, {"job": job("j", ["x"])}))
    run_id = (await send(conn, "x"))["runs"][0]["id"]
    watch = conn.runs.WatchRun(rn.WatchRunRequest(id=run_id))
    seen: list[str] = []

    async def until(wanted: str) -> None:
        while not seen or seen[-1] != wanted:
            msg = await asyncio.wait_for(watch.read(), 10)
            assert msg is not grpc.aio.EOF, seen
            update = js(msg)
            if "run" in update:
                seen.append(update["run"]["status"])
            elif "task" in update:
                seen.append(f"{update['task']['key']} {update['task']['status']}")
            else:
                seen.append(update["log"]["message"])

    await until("RUN_STATUS_QUEUED")
    await worker.connect([job("j", ["x"])])  # only now can the run start
    run = (await worker.run_request())["run"]
    worker.send({"log": {"runId": run["id"], "attempt": 1, "seq": 1, "message": "first"}})
    started = await worker.task(run, "t")
    await until("first")
    assert seen.index("RUN_STATUS_EXECUTING") < seen.index("first")
    await worker.complete(run, started["task"]["id"], output=1)
    await worker.task(run, "nap", kind="TASK_KIND_WAIT", params={"seconds": 60})
    await until("RUN_STATUS_WAITING")
    assert seen[-2:] == ["nap TASK_STATUS_WAITING", "RUN_STATUS_WAITING"]
    clock.advance(61)
    worker.result((await worker.run_request())["run"], output=2)
    await until("RUN_STATUS_SUCCESS")


async def test_watches_of_one_run_share_one_read_per_change(
    conn: Stubs, worker: RawWorker, fast: Server
) -> None:
    await worker.connect([job("j", ["x"])])
    run = (await send(conn, "x"))["runs"][0]
    watches = [conn.runs.WatchRun(rn.WatchRunRequest(id=run["id"])) for _ in range(20)]
    for watch in watches:  # each has its snapshot: the run, queued or executing
        assert "run" in js(await watch.read())
    run = (await worker.run_request())["run"]
    reads = []
    changes = fast.store.run_changes

    async def counted(run_id: str, *args: Any) -> Any:
        reads.append(run_id)
        return await changes(run_id, *args)

    fast.store.run_changes = counted  # type: ignore[method-assign]
    worker.send({"log": {"runId": run["id"], "attempt": 1, "seq": 1, "message": "hello"}})
    for watch in watches:
        while "log" not in (update := js(await watch.read())):
            assert "run" in update  # the claim, committed lazily, may come first
        assert update["log"]["message"] == "hello"
    # About one per change (the claim's, the line's), not one per watch.
    assert len(reads) <= len(watches) / 4, reads
    for watch in watches:
        watch.cancel()


async def test_a_watch_reads_only_what_changed_in_a_large_run(
    conn: Stubs, worker: RawWorker, fast: Server
) -> None:
    await worker.connect([job("j", ["x"])])
    await send(conn, "x")
    run = (await worker.run_request())["run"]
    for i in range(40):
        started = await worker.task(run, f"k{i}")
        await worker.complete(run, started["task"]["id"], output={"i": i})
        worker.send({"log": {"runId": run["id"], "attempt": 1, "seq": i + 1, "message": f"{i}"}})
    await worker.task(run, "last")  # the lines before are stored before this answer
    watch = conn.runs.WatchRun(rn.WatchRunRequest(id=run["id"]))
    assert "run" in js(await watch.read())
    snapshot = [js(await watch.read()) for _ in range(41 + 40)]
    assert sum("task" in u for u in snapshot) == 41 and sum("log" in u for u in snapshot) == 40
    read: list[Any] = []
    changes = fast.store.run_changes

    async def counted(run_id: str, *args: Any) -> Any:
        read.append(got := await changes(run_id, *args))
        return got

    fast.store.run_changes = counted  # type: ignore[method-assign]
    worker.send({"log": {"runId": run["id"], "attempt": 1, "seq": 41, "message": "more"}})
    assert js(await watch.read())["log"]["message"] == "more"
    # The change read the new line, and no task nor earlier line again.
    assert read and all(not c.tasks for c in read)
    assert [line.message for c in read for line in c.logs] == ["more"]
    started = await worker.task(run, "one-more")
    assert js(await watch.read())["task"]["key"] == "one-more"
    assert [t.key for c in read for t in c.tasks] == ["one-more"]
    watch.cancel()


async def test_watch_run_streams_a_line_stored_under_a_lower_number_later(
    conn: Stubs, worker: RawWorker
) -> None:
    await worker.connect([job("j", ["x"])])
    run_id = (await send(conn, "x"))["runs"][0]["id"]
    watch = conn.runs.WatchRun(rn.WatchRunRequest(id=run_id))
    await watch.read()
    run = (await worker.run_request())["run"]
    for seq in (2_000_001, 1_000_001):  # as a replay of concurrent io calls may number them
        line = {"runId": run_id, "attempt": 1, "seq": seq, "message": f"line {seq}"}
        worker.send({"log": line})
    worker.result(run, output=None)
    lines = []
    while (msg := await watch.read()) is not grpc.aio.EOF:
        if msg.HasField("log"):
            lines.append(msg.log.message)
    assert sorted(lines) == ["line 1000001", "line 2000001"]


async def test_a_watch_joining_another_gets_the_lines_by_number(
    conn: Stubs, worker: RawWorker
) -> None:
    await worker.connect([job("j", ["x"])])
    run_id = (await send(conn, "x"))["runs"][0]["id"]
    first = conn.runs.WatchRun(rn.WatchRunRequest(id=run_id))
    await first.read()
    await worker.run_request()
    for seq in (20, 10):  # stored in this order, each read by the first watch
        worker.send({"log": {"runId": run_id, "attempt": 1, "seq": seq, "message": f"{seq}"}})
        while js(await first.read()).get("log", {}).get("message") != f"{seq}":
            pass
    second = conn.runs.WatchRun(rn.WatchRunRequest(id=run_id))  # shares the first's view
    lines = []
    while len(lines) < 2:
        update = js(await second.read())
        lines += [update["log"]["message"]] if "log" in update else []
    assert lines == ["10", "20"]
    first.cancel()
    second.cancel()


async def test_runs_queued_before_any_worker_wait_for_one(conn: Stubs, worker: RawWorker) -> None:
    await conn.jobs.RegisterJob(req(jb.RegisterJobRequest, {"job": job("early", ["e"])}))
    first = await send(conn, "e", id="e1")
    second = await send(conn, "e", id="e2")
    await worker.connect([job("early", ["e"])])
    got = {(await worker.run_request())["run"]["id"] for _ in range(2)}
    assert got == {first["runs"][0]["id"], second["runs"][0]["id"]}


async def test_a_run_cancelled_while_queued_is_never_sent(conn: Stubs, worker: RawWorker) -> None:
    await worker.connect([job("one", ["q"])], capacity=1)
    await send(conn, "q", id="busy")
    running = (await worker.run_request())["run"]
    waiting = (await send(conn, "q", id="waiting"))["runs"][0]
    await conn.runs.CancelRun(rn.CancelRunRequest(id=waiting["id"]))
    worker.result(running, output=None)
    with pytest.raises(TimeoutError):
        await worker.expect("run_request", within=0.5)


async def test_a_queue_load_is_heard_in_order_with_the_writes_queued_after_it(
    conn: Stubs, fast: Server, clock: FakeClock
) -> None:
    # The first worker's load of a job version's queue is what the dispatcher
    # trusts to be QUEUED: if it were heard after a later claim and finish of the
    # same run, the finished run would be queued and sent again.
    await conn.jobs.RegisterJob(req(jb.RegisterJobRequest, {"job": job("j", ["x"])}))
    (run,) = (await send(conn, "x"))["runs"]  # no worker yet: it waits in the store
    heard: list[tuple[str, list[str]]] = []
    dispatcher = fast.hub.listener

    class Recorder:
        def queued(self, runs: Any, events: Any) -> None:
            heard.append(("queued", [r.id for r in runs]))
            dispatcher.queued(runs, events)

        def released(self, run_ids: Any, stop_reason: str) -> None:
            heard.append(("released", list(run_ids)))
            dispatcher.released(run_ids, stop_reason)

        def job_changed(self, env: str, job_id: str) -> None:
            dispatcher.job_changed(env, job_id)

    fast.hub.listener = Recorder()  # type: ignore[assignment]
    try:
        store, now = fast.store, clock.now
        # Queued one after the other, none awaited before the next is queued.
        load = asyncio.ensure_future(store.announce_queued("default", "j", "1.0.0"))
        await asyncio.sleep(0)  # one step of the load's task: its operation is queued
        claim = store.claim(run["id"], 0, 1, "w", now)
        finish = asyncio.ensure_future(store.finish_run("default", run["id"], 1, "ok", None, now))
        assert await load == 1
        assert await claim is True
        await finish

        async def both_heard() -> bool:
            return len(heard) == 2

        await eventually(both_heard)
    finally:
        fast.hub.listener = dispatcher
    assert heard == [("queued", [run["id"]]), ("released", [run["id"]])]


async def test_a_queue_load_read_before_a_dispatch_from_memory_does_not_send_the_run_again(
    conn: Stubs, fast: Server
) -> None:
    # The first worker arrives while a new event's run is being committed: the run
    # is dispatched from memory when its commit is heard, after the worker's load
    # of the queue was queued in the store. The load reads the run QUEUED (its
    # claim comes after), and by the time the load is heard the worker may have
    # finished the run. The snapshot is stale, and must not dispatch it again.
    await conn.jobs.RegisterJob(req(jb.RegisterJobRequest, {"job": job("j", ["x"])}))
    (sent,) = (await send(conn, "x"))["runs"]
    dispatcher = fast.dispatcher
    run = await fast.store.get_run("default", sent["id"])
    assert run is not None and run.status is RunStatus.QUEUED

    class Link:
        def __init__(self) -> None:
            self.started: list[tuple[str, int]] = []
            self.stopped: list[tuple[str, int, bool]] = []

        def start_run(self, run: Run, event: Any) -> None:
            self.started.append((run.id, run.attempt))

        def stop_run(self, run_id: str, attempt: int, reason: str, *, ended: bool) -> None:
            self.stopped.append((run_id, attempt, ended))

    link = Link()
    session = Session("s", "default", "w", frozenset({("j", "1.0.0")}), 10, link)
    dispatcher.add_session(session)  # starts the load
    await asyncio.sleep(0)  # one step of the load's task: its read is queued
    dispatcher.queued([run], {})  # the run's commit is heard: dispatched at once
    assert link.started == [(run.id, 1)]
    dispatcher.finished(run.id, 1)  # the worker already sent its result

    async def loaded() -> bool:
        return not dispatcher._loading

    await eventually(loaded)
    assert link.started == [(run.id, 1)]
    assert dispatcher.remove_session(session) == []


async def test_a_send_reply_shows_its_run_as_stored_though_a_worker_took_it_at_once(
    conn: Stubs, worker: RawWorker
) -> None:
    await worker.connect([job("j", ["x"])])
    (run,) = (await send(conn, "x"))["runs"]
    assert run["status"] == "RUN_STATUS_QUEUED" and "attempt" not in run  # attempt 0
    assert (await worker.run_request())["run"]["attempt"] == 1


async def test_a_stream_closed_before_hello_ends_invalid_argument(conn: Stubs) -> None:
    silent = RawWorker(conn.workers)
    silent.call = conn.workers.RunJob(silent._requests())
    silent.outgoing.put_nowait(None)  # half-close with nothing sent
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await silent.call.read()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "hello: the stream ended before hello"
    await silent.close()


async def test_raising_a_concurrency_limit_lets_the_queue_move_at_once(
    conn: Stubs, worker: RawWorker
) -> None:
    await worker.connect([job("j", ["x"], concurrencyLimit=1)], capacity=5)
    await send(conn, "x", id="c1")
    await send(conn, "x", id="c2")
    first = (await worker.run_request())["run"]
    with pytest.raises(TimeoutError):
        await worker.expect("run_request", within=0.3)
    raised = job("j", ["x"], concurrencyLimit=2)
    await conn.jobs.RegisterJob(req(jb.RegisterJobRequest, {"job": raised}))
    second = (await worker.run_request())["run"]
    for run in (first, second):
        worker.result(run, output=None)
        await run_status(conn, run["id"], "SUCCESS")


async def test_a_backlog_is_loaded_a_page_at_a_time_and_goes_oldest_first(
    conn: Stubs, worker: RawWorker, fast: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dispatcher_module, "LOAD_PAGE", 3)
    monkeypatch.setattr(dispatcher_module, "LOAD_LOW_WATER", 2)
    await conn.jobs.RegisterJob(req(jb.RegisterJobRequest, {"job": job("j", ["x"])}))
    backlog = [(await send(conn, "x"))["runs"][0]["id"] for _ in range(8)]
    await worker.connect([job("j", ["x"])], capacity=1)
    key = ("default", "j", "1.0.0")
    got, held, fresh = [], [], []
    for i in range(len(backlog) + 2):
        if i == 2:  # new events while most of the backlog is still in the store
            fresh = [(await send(conn, "x"))["runs"][0]["id"] for _ in range(2)]
        request = await worker.run_request()
        got.append(request["run"]["id"])
        held.append(len(fast.dispatcher._queues.get(key, {})))
        worker.result(request["run"], output=None)
    assert got == backlog + fresh  # oldest first; nothing twice, nothing lost
    assert max(held) < 3 + 2  # a page, on top of fewer than the low-water mark
    for run_id in got:
        await run_status(conn, run_id, "SUCCESS")
    assert key not in fast.dispatcher._backlog  # all of it loaded


async def test_a_page_load_from_workers_gone_since_does_not_move_the_backlog(
    conn: Stubs, fast: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dispatcher_module, "LOAD_PAGE", 3)
    monkeypatch.setattr(dispatcher_module, "LOAD_LOW_WATER", 2)
    key = ("default", "j", "1.0.0")
    queue = fast.dispatcher._queues
    await conn.jobs.RegisterJob(req(jb.RegisterJobRequest, {"job": job("j", ["x"])}))
    # w0 takes r1..r3 and leaves: they are QUEUED again once its lease runs out.
    w0 = RawWorker(conn.workers)
    await w0.connect([job("j", ["x"])], capacity=3, worker_id="w0")
    early = [(await send(conn, "x"))["runs"][0]["id"] for _ in range(3)]
    for _ in early:
        await w0.run_request()
    await w0.close()
    later = [(await send(conn, "x"))["runs"][0]["id"] for _ in range(6)]  # r4..r9
    real_announce = fast.store.announce_queued
    gate = asyncio.get_running_loop().create_future()
    held: list[Any] = []

    async def announce(*key: Any, **page: Any) -> int:
        if page.get("after"):  # w1's second page: held until w1 is gone and w2 is in
            held.append(page)
            await gate
        return await real_announce(*key, **page)

    monkeypatch.setattr(fast.store, "announce_queued", announce)
    # w1: its first page is r4 r5 r6; it takes r4 r5; its second page (after r6) waits.
    w1 = RawWorker(conn.workers)
    await w1.connect([job("j", ["x"])], capacity=2, worker_id="w1")
    for _ in range(2):
        await w1.run_request()

    async def w0s_runs_are_back_in_w1s_queue() -> bool:
        return bool(held) and len(queue.get(key, {})) == 4  # r6 and r1..r3

    await eventually(w0s_runs_are_back_in_w1s_queue)
    await w1.close()  # r6 was in its queue only; r4 r5 come back after its lease
    w2 = RawWorker(conn.workers)
    await w2.connect([job("j", ["x"])], capacity=1, worker_id="w2")
    first = await w2.run_request()  # w2's first page: r1 r2 r3
    gate.set_result(None)  # w1's second page answers now: it must change nothing
    got = [first["run"]["id"]]
    w2.result(first["run"], output=None)
    try:
        while len(got) < 9:
            request = await w2.run_request(within=10)
            got.append(request["run"]["id"])
            w2.result(request["run"], output=None)
    finally:
        await w2.close()
    assert sorted(got) == sorted(early + later)  # none left behind in the store


async def test_a_failed_queue_load_is_tried_again_while_the_worker_is_there(
    conn: Stubs, worker: RawWorker, fast: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    await conn.jobs.RegisterJob(req(jb.RegisterJobRequest, {"job": job("j", ["x"])}))
    waiting = (await send(conn, "x"))["runs"][0]  # queued before any worker serves j
    load = FailsOnce(fast.store, "announce_queued", monkeypatch)
    await worker.connect([job("j", ["x"])])
    assert (await worker.run_request())["run"]["id"] == waiting["id"]
    assert load.failed == ("default", "j", "1.0.0")


async def test_a_store_failure_during_hello_ends_the_stream_internal(
    conn: Stubs, fast: Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def failing(*args: Any) -> Any:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(fast.work, "hello", failing)
    refused = RawWorker(conn.workers)
    refused.call = conn.workers.RunJob(refused._requests())
    refused.send({"hello": {"workerId": "w", "capacity": 1, "jobs": [job("j", ["x"])]}})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await refused.call.read()
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert err.value.details() == "internal error; see the server log"
    assert "disk I/O error" in caplog.text
    await refused.close()


async def test_a_hello_the_store_fails_midway_stores_none_of_its_jobs(
    conn: Stubs, worker: RawWorker, fast: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    second = FailsOnce(fast.store, "_refresh_head", monkeypatch, call=2)  # job "b"'s
    refused = RawWorker(conn.workers)
    refused.call = conn.workers.RunJob(refused._requests())
    jobs = [job("a", ["x"]), job("b", ["x"])]
    refused.send({"hello": {"workerId": "w", "capacity": 1, "jobs": jobs}})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await refused.call.read()
    assert err.value.code() == grpc.StatusCode.INTERNAL
    await refused.close()
    assert second.failed is not None and second.failed[2] == "b"
    assert list((await conn.jobs.ListJobs(jb.ListJobsRequest())).jobs) == []
    # Nor is "a" left in what events are matched against.
    assert "runs" not in await send(conn, "x")
    await worker.connect(jobs)
    assert [j.id for j in (await conn.jobs.ListJobs(jb.ListJobsRequest())).jobs] == ["a", "b"]


async def test_the_lease_starts_at_the_welcome_however_long_the_hello_took(
    conn: Stubs, worker: RawWorker, fast: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    register_jobs = fast.store.register_jobs

    async def slowly(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(1.5)  # a write lock held elsewhere, past the 1 s lease
        return await register_jobs(*args, **kwargs)

    monkeypatch.setattr(fast.store, "register_jobs", slowly)
    await worker.connect([job("j", ["x"])])
    await send(conn, "x")  # the worker is still there to take it
    assert (await worker.run_request())["run"]["attempt"] == 1


async def test_a_bad_hello_stores_none_of_its_jobs(conn: Stubs) -> None:
    bad = RawWorker(conn.workers)
    bad.call = conn.workers.RunJob(bad._requests())
    bad.send(
        {
            "hello": {
                "workerId": "w",
                "capacity": 1,
                "jobs": [job("good", ["x"]), job("Bad Id", ["x"])],
            }
        }
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await bad.call.read()
    assert (err.value.details() or "").startswith("hello.jobs[1].id")
    await bad.close()
    listed = await conn.jobs.ListJobs(jb.ListJobsRequest())
    assert list(listed.jobs) == []


async def test_a_hello_keeps_the_enabled_switch_of_a_version_already_stored(
    conn: Stubs,
) -> None:
    await conn.jobs.RegisterJob(req(jb.RegisterJobRequest, {"job": job("j", ["x"])}))
    await conn.jobs.SetJobEnabled(jb.SetJobEnabledRequest(job_id="j", enabled=False))
    worker = RawWorker(conn.workers)
    # As the SDK sends it, enabled spelled out; and a version new to the server.
    await worker.connect(
        [job("j", ["x"], enabled=True), job("j", ["x"], version="2.0.0", enabled=False)]
    )
    await worker.close()
    versions = (await conn.jobs.GetJob(jb.GetJobRequest(id="j"))).versions
    assert {v.version: v.enabled for v in versions} == {"1.0.0": False, "2.0.0": False}
    await conn.jobs.SetJobEnabled(jb.SetJobEnabledRequest(job_id="j", enabled=True))
    again = RawWorker(conn.workers)
    await again.connect([job("j", ["x"], version="2.0.0", enabled=False)])
    await again.close()
    versions = (await conn.jobs.GetJob(jb.GetJobRequest(id="j"))).versions
    assert {v.version: v.enabled for v in versions} == {"1.0.0": True, "2.0.0": True}


async def test_an_old_builds_worker_reconnecting_does_not_take_back_new_events(
    conn: Stubs,
) -> None:
    """Of versions differing only in +build the one registered last runs new events;
    a hello that registers a version unchanged (a reconnect) does not move it."""
    old, new = RawWorker(conn.workers), RawWorker(conn.workers)
    await old.connect([job("j", ["x"], version="1.0.0+old")], worker_id="old")
    await new.connect([job("j", ["x"], version="1.0.0+new")], worker_id="new")
    await old.close()
    again = RawWorker(conn.workers)
    await again.connect([job("j", ["x"], version="1.0.0+old")], worker_id="old")
    latest = (await conn.jobs.GetJob(jb.GetJobRequest(id="j"))).job.version
    assert latest == "1.0.0+new"
    # One that changes the version (its trigger) is a registration: it is the latest.
    await again.close()
    changed = RawWorker(conn.workers)
    await changed.connect([job("j", ["x", "y"], version="1.0.0+old")], worker_id="old")
    assert (await conn.jobs.GetJob(jb.GetJobRequest(id="j"))).job.version == "1.0.0+old"
    await changed.close()
    await new.close()


async def test_payload_limits_hold_for_invoke_and_send_event(
    start_server: StartServer,
) -> None:
    server = await start_server(max_payload_bytes=1000)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)
        big = {"blob": "x" * 2000}
        await stubs.jobs.RegisterJob(req(jb.RegisterJobRequest, {"job": job("j", ["x"])}))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.jobs.InvokeJob(req(jb.InvokeJobRequest, {"jobId": "j", "payload": big}))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "limit of 1000 bytes" in (err.value.details() or "")
        w = RawWorker(stubs.workers)
        try:
            await w.connect([job("j", ["x"])])
            await send(stubs, "x")
            run = (await w.run_request())["run"]
            w.send(
                {
                    "task": {
                        "requestId": "big",
                        "runId": run["id"],
                        "attempt": 1,
                        "key": "s",
                        "kind": "TASK_KIND_SEND_EVENT",
                        "params": {"event": {"name": "y", "payload": big}},
                    }
                }
            )
            rejected = await w.expect("rejected")
            assert rejected["message"].startswith("task.params.event.payload")
            # A resend of a pending event keeping its stored payload counts both.
            half = {"blob": "x" * 600}
            pending = {"name": "y", "id": "e", "payload": half}
            await stubs.events.SendEvent(
                req(ev.SendEventRequest, {"event": pending, "options": {"deliverAfter": 600}})
            )
            w.send(
                {
                    "task": {
                        "requestId": "kept",
                        "runId": run["id"],
                        "attempt": 1,
                        "key": "k",
                        "kind": "TASK_KIND_SEND_EVENT",
                        "params": {
                            "event": {"name": "y", "id": "e", "context": half},
                            "options": {"deliverAfter": 900},
                        },
                    }
                }
            )
            rejected = await w.expect("rejected")
            assert rejected["message"].startswith(
                "task.params.event.context: payload and context would be"
            )
            stored = await stubs.events.GetEvent(ev.GetEventRequest(id="e"))
            assert js(stored.event)["payload"] == half
            assert js(stored.event).get("context", {}) == {}
        finally:
            await w.close()


async def test_a_send_events_task_is_capped_in_bytes_like_send_events(
    start_server: StartServer,
) -> None:
    """At half the SendEvents limit, since the task stores its events twice (params
    and output); and nothing but events and options rides along in the params."""
    events = [{"name": "y", "payload": {"blob": "x" * 1000}} for _ in range(5)]
    size = json_format.ParseDict(events, struct_pb2.Value()).ByteSize()
    assert size > 5000
    jobs = [job("j", ["x"]), job("on-y", ["y"])]
    async with a_run(start_server, jobs, max_batch_bytes=10_000) as (_, stubs, w, run):
        w.send({"task": {"requestId": "over", "runId": run["id"], "attempt": 1, "key": "s",
                         "kind": "TASK_KIND_SEND_EVENTS",
                         "params": {"events": events}}})  # fmt: skip
        rejected = await w.expect("rejected")
        assert rejected["requestId"] == "over"
        assert rejected["message"] == (
            f"task.params.events: are {size} bytes, over the limit of 5000 bytes; "
            "send fewer events per call"
        )
        assert js(await stubs.events.ListEvents(ev.ListEventsRequest(name="y"))) == {}
        assert js(await stubs.runs.ListRuns(rn.ListRunsRequest(job_id="on-y"))) == {}
        w.send({"task": {"requestId": "extra", "runId": run["id"], "attempt": 1, "key": "s",
                         "kind": "TASK_KIND_SEND_EVENTS",
                         "params": {"events": events[:1], "note": "x" * 50_000}}})  # fmt: skip
        rejected = await w.expect("rejected")
        assert rejected["message"].startswith("task.params.note: is not a parameter")
        params = {"events": events[:4]}
        sent = await w.task(run, "s", kind="TASK_KIND_SEND_EVENTS", params=params)
        assert sent["task"]["status"] == "TASK_STATUS_COMPLETED"
        assert len(sent["task"]["output"]) == 4


async def test_a_send_events_task_over_the_batch_count_is_refused_before_its_events_are_read(
    start_server: StartServer,
) -> None:
    """As SendEvents: the count first (not events[0]'s own error, which converting
    the events finds), and nothing stored."""
    async with a_run(start_server, max_batch=3) as (_, stubs, w, run):
        w.send({"task": {"requestId": "over", "runId": run["id"], "attempt": 1, "key": "s",
                         "kind": "TASK_KIND_SEND_EVENTS",
                         "params": {"events": [{"name": 5}] * 4}}})  # fmt: skip
        rejected = await w.expect("rejected")
        assert rejected["message"] == "task.params.events: 4 events exceed the batch limit of 3"
        assert "tasks" not in js(await stubs.runs.GetRun(rn.GetRunRequest(id=run["id"])))


async def test_payload_limit_holds_for_task_params_outputs_logs_and_run_results(
    start_server: StartServer,
) -> None:
    """Whatever a run stores is replayed to every later attempt: nothing over the
    limit gets in. Params and log lines are refused naming the field; an output
    over it fails its task (without retries) or its run, saying why."""
    big = {"blob": "x" * 2000}
    size = json_format.ParseDict(big, struct_pb2.Value()).ByteSize()
    async with a_run(start_server, max_payload_bytes=1000) as (_, stubs, w, run):
        w.send({"task": {"requestId": "p", "runId": run["id"], "attempt": 1, "key": "p",
                         "kind": "TASK_KIND_RUN", "params": big}})  # fmt: skip
        rejected = await w.expect("rejected")
        assert rejected["requestId"] == "p"
        assert rejected["message"] == f"task.params: is {size} bytes, over the limit of 1000 bytes"

        retry = {"limit": 5, "minTimeoutMs": 1000}
        started = await w.task(run, "t", retry=retry)
        failed = await w.complete(run, started["task"]["id"], output=big)
        assert failed["task"]["status"] == "TASK_STATUS_ERRORED"  # not WAITING to retry
        assert failed["task"]["error"] == {
            "type": "OutputTooLarge",
            "message": f"task output is {size} bytes, over the limit of 1000 bytes",
        }
        assert "output" not in failed["task"]

        w.send({"log": {"runId": run["id"], "attempt": 1, "seq": 1, "message": "m",
                        "data": big}})  # fmt: skip
        rejected = await w.expect("rejected")
        assert rejected["message"].startswith(f"log: message and data are {size + 1} bytes")

        w.result(run, output=big)
        stored = await run_status(stubs, run["id"], "FAILURE")
        assert stored["run"]["error"]["type"] == "OutputTooLarge"
        assert stored["run"]["error"]["message"].startswith(f"run output is {size} bytes")
        assert "output" not in stored["run"]
        assert [t["status"] for t in stored["tasks"]] == ["TASK_STATUS_ERRORED"]
        assert "logs" not in stored


async def test_outcomes_json_cannot_carry_fail_their_task_or_run_and_log_data_is_refused(
    conn: Stubs, worker: RawWorker
) -> None:
    """NaN and Infinity reach the server only from binary workers; the run does not
    hang on them: the task or run fails saying what was wrong."""
    await worker.connect([job("j", ["x"])])
    await send(conn, "x")
    run = (await worker.run_request())["run"]

    def with_nan(body: dict[str, Any]) -> pb.RunJobRequest:
        msg = json_format.ParseDict(body, pb.RunJobRequest())
        kind = msg.WhichOneof("message")
        target = getattr(msg, kind)
        (target.data if kind == "log" else target.output).number_value = float("nan")
        return msg

    started = await worker.task(run, "t", retry={"limit": 5, "minTimeoutMs": 1000})
    ids = {"runId": run["id"], "attempt": 1}
    worker.outgoing.put_nowait(
        with_nan({"taskComplete": {"requestId": "c", **ids, "taskId": started["task"]["id"]}})
    )
    failed = await worker.expect("task_result")
    assert failed["task"]["status"] == "TASK_STATUS_ERRORED"  # not retried
    assert failed["task"]["error"] == {
        "type": "InvalidOutput",
        "message": "task output: holds NaN or Infinity, which JSON cannot carry",
    }
    worker.outgoing.put_nowait(with_nan({"log": {**ids, "seq": 1, "message": "m"}}))
    rejected = await worker.expect("rejected")
    assert rejected["message"] == "log.data: holds NaN or Infinity, which JSON cannot carry"
    worker.outgoing.put_nowait(with_nan({"runResult": ids}))
    stored = await run_status(conn, run["id"], "FAILURE")
    assert stored["run"]["error"]["type"] == "InvalidOutput"
    assert stored["run"]["error"]["message"].startswith("run output: holds NaN")
    assert "logs" not in stored


async def test_cached_task_pages_are_sized_by_what_is_sent_errors_included(
    conn: Stubs, worker: RawWorker, clock: FakeClock
) -> None:
    """Six tasks with 800 kB errors: one message would be over a default client's
    4 MiB, so the resend is paged (the worker here has that default)."""
    await worker.connect([job("j", ["x"])], capacity=1)
    await send(conn, "x")
    run = (await worker.run_request())["run"]
    for i in range(6):
        started = await worker.task(run, f"t{i}", request_id=f"r{i}")
        failed = await worker.complete(
            run, started["task"]["id"], error={"type": "Big", "message": "é" * 400_000}
        )
        assert failed["task"]["status"] == "TASK_STATUS_ERRORED"
    waiting = await worker.task(run, "nap", kind="TASK_KIND_WAIT", params={"seconds": 1})
    assert waiting["task"]["status"] == "TASK_STATUS_WAITING"
    clock.advance(2)
    request = await worker.run_request()
    assert request["run"]["attempt"] == 2
    assert [t["key"] for t in request["cachedTasks"]] == [*(f"t{i}" for i in range(6)), "nap"]
    assert worker.error is None


async def test_an_error_over_the_payload_limit_is_cut_to_fit_and_still_retried(
    start_server: StartServer, clock: FakeClock
) -> None:
    async with a_run(start_server, max_payload_bytes=1000, clock=clock) as (_, _, w, run):
        started = await w.task(run, "t", retry={"limit": 3, "minTimeoutMs": 1000})
        failed = await w.complete(
            run,
            started["task"]["id"],
            error={"type": "HTTPError", "message": "body: " + "é" * 2000, "stack": "s" * 3000},
        )
        task = failed["task"]
        assert task["status"] == "TASK_STATUS_WAITING"  # retried, as any failure
        assert task["error"]["type"] == "HTTPError"
        message, stack = task["error"]["message"], task["error"]["stack"]
        assert message.startswith("body: éé") and message.endswith("[cut to the payload limit]")
        assert stack.endswith("[cut to the payload limit]")
        assert len(message.encode()) + len(stack.encode()) <= 1000


@pytest.mark.parametrize(
    ("failure", "code"),
    [
        (sqlite3.OperationalError("disk I/O error"), grpc.StatusCode.INTERNAL),
        # What the store's edge makes of SQLITE_FULL (and a lock held too long).
        (
            Unavailable(
                "the database cannot take writes now (database or disk is full); "
                "nothing was stored: try again"
            ),
            grpc.StatusCode.UNAVAILABLE,
        ),
    ],
    ids=["io-error", "disk-full"],
)
async def test_a_result_the_store_could_not_keep_is_requeued(
    conn: Stubs,
    worker: RawWorker,
    fast: Server,
    monkeypatch: pytest.MonkeyPatch,
    failure: Exception,
    code: grpc.StatusCode,
) -> None:
    async def failing(*args: object, **kwargs: object) -> None:
        raise failure

    await worker.connect([job("j", ["full"])])
    await send(conn, "full")
    run = (await worker.run_request())["run"]
    monkeypatch.setattr(fast.store, "finish_run", failing)
    worker.result(run, output="lost")
    rejected = await worker.expect("rejected")
    assert rejected["code"] == code.value[0]
    assert "nothing was stored" in rejected["message"]
    monkeypatch.undo()
    again = await worker.run_request()
    assert again["run"]["id"] == run["id"] and again["run"]["attempt"] == 2


async def test_a_concurrency_slot_freed_by_one_version_moves_the_other_versions_queue(
    conn: Stubs, worker: RawWorker
) -> None:
    # A rolling deploy: the limit counts the job's runs on every version and worker.
    await worker.connect([job("j", ["x"], version="1.0.0", concurrencyLimit=1)], worker_id="old")
    await send(conn, "x")
    first = (await worker.run_request())["run"]
    newer = RawWorker(conn.workers)
    try:
        await newer.connect([job("j", ["x"], version="2.0.0", concurrencyLimit=1)], worker_id="new")
        queued = (await send(conn, "x"))["runs"][0]
        assert queued["jobVersion"] == "2.0.0"
        with pytest.raises(TimeoutError):
            await newer.expect("run_request", within=0.3)
        worker.result(first, output="done")
        assert (await newer.run_request())["run"]["id"] == queued["id"]
    finally:
        await newer.close()


async def test_a_gone_workers_run_counts_toward_the_limit_until_it_ends(
    conn: Stubs, worker: RawWorker
) -> None:
    await worker.connect([job("j", ["x"], concurrencyLimit=1)], worker_id="a")
    await send(conn, "x")
    first = (await worker.run_request())["run"]
    other = RawWorker(conn.workers)
    try:
        await other.connect([job("j", ["x"], concurrencyLimit=1)], worker_id="b")
        queued = (await send(conn, "x"))["runs"][0]
        await worker.close()  # its handler may still be running the first run
        with pytest.raises(TimeoutError):
            await other.expect("run_request", within=0.3)
        await conn.runs.CancelRun(rn.CancelRunRequest(id=first["id"]))
        assert (await other.run_request())["run"]["id"] == queued["id"]
    finally:
        await other.close()


class FirstClaimFails:
    """Replaces the store's claim: the first one returns a future the test fails when
    it wants (as the writer does when the batch's COMMIT fails); the rest are real.
    `calls` keeps (stored attempt, new attempt) of each."""

    def __init__(self, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
        self.real = server.store.claim
        self.first: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.calls: list[tuple[int, int]] = []
        monkeypatch.setattr(server.store, "claim", self)

    def __call__(self, run_id: str, stored: int, attempt: int, *rest: Any) -> asyncio.Future[bool]:
        self.calls.append((stored, attempt))
        return self.first if len(self.calls) == 1 else self.real(run_id, stored, attempt, *rest)

    def fail(self) -> None:
        self.first.set_exception(sqlite3.OperationalError("database or disk is full"))


async def test_a_run_whose_claim_failed_during_a_load_is_not_lost_by_the_next_load(
    conn: Stubs, fast: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run dispatched from memory while the first worker's queue load is in
    # flight, whose claim then fails: the store still has it QUEUED, and the next
    # load's snapshot of it is not stale (it is all that can bring the run back).
    monkeypatch.setattr(dispatcher_module, "LOAD_RETRY_FIRST", 0.2)
    claims = FirstClaimFails(fast, monkeypatch)
    real_announce = fast.store.announce_queued
    gate = asyncio.get_running_loop().create_future()
    calls = 0

    async def announce(*key: Any, **page: Any) -> int:
        # The first load's read goes in the same failing COMMIT as the claim below.
        nonlocal calls
        calls += 1
        if calls == 1:
            await gate
            raise sqlite3.OperationalError("database or disk is full")
        return await real_announce(*key, **page)

    monkeypatch.setattr(fast.store, "announce_queued", announce)

    a = RawWorker(conn.workers)
    await a.connect([job("j", ["x"])], worker_id="a")  # the first worker: load 1 starts
    run = (await send(conn, "x"))["runs"][0]
    assert (await a.run_request())["run"]["attempt"] == 1  # from memory, claim pending
    await a.close()

    async def a_is_gone() -> bool:
        return not fast.dispatcher.sessions

    await eventually(a_is_gone)
    claims.fail()  # not stored: the run stays QUEUED at attempt 0 in the store
    b = RawWorker(conn.workers)
    try:
        await b.connect([job("j", ["x"])], worker_id="b")  # load 2 starts; load 1 in flight
        gate.set_result(None)  # load 1 fails too, and tries again
        got = await b.expect("run_request", within=5)
        assert got["run"]["id"] == run["id"]
        b.result(got["run"], output="done")
        await run_status(conn, run["id"], "SUCCESS")
    finally:
        await b.close()


async def test_a_dispatch_whose_claim_failed_is_redone_with_a_new_attempt(
    conn: Stubs, worker: RawWorker, fast: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    claims = FirstClaimFails(fast, monkeypatch)
    await worker.connect([job("j", ["x"])])
    await send(conn, "x")
    first = (await worker.run_request())["run"]
    claims.fail()
    abandoned = await worker.expect("abandon")
    assert (abandoned["runId"], abandoned["attempt"]) == (first["id"], 1)
    again = (await worker.run_request())["run"]
    assert again["id"] == first["id"] and again["attempt"] == 2
    assert claims.calls == [(0, 1), (0, 2)]
    worker.result(first, output="from the abandoned attempt")
    assert (await worker.expect("abandon"))["attempt"] == 1
    worker.result(again, output="done")
    got = await run_status(conn, first["id"], "SUCCESS")
    assert got["run"]["attempt"] == 2 and got["run"]["output"] == "done"


async def test_a_run_over_its_max_duration_times_out_on_the_real_clock(
    start_server: StartServer,
) -> None:
    # No FakeClock here: its advance() wakes the timer loop, which hides whether the
    # deadline a dispatch sets wakes it by itself.
    server = await start_server(lease=30.0, heartbeat_interval=1.0)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)
        worker = RawWorker(stubs.workers)
        try:
            await worker.connect([job("slow", ["s"], maxDurationSeconds=1)])
            await send(stubs, "s")
            run = (await worker.run_request())["run"]
            notice = await worker.expect("cancel", within=10)
            assert notice["runId"] == run["id"]
            got = await run_status(stubs, run["id"], "TIMED_OUT")
            assert got["run"]["error"]["type"] == "TimeoutError", got
        finally:
            await worker.close()


async def test_numbers_past_what_the_store_holds_are_invalid_arguments(
    conn: Stubs, worker: RawWorker
) -> None:
    await worker.connect([job("j", ["x"])])
    await send(conn, "x")
    run = (await worker.run_request())["run"]
    too_big = str(2**64 - 1)  # a uint64 on the wire; SQLite stops at 2**63 - 1
    worker.send({"log": {"runId": run["id"], "attempt": 1, "seq": too_big, "message": "m"}})
    rejected = await worker.expect("rejected")
    assert rejected["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert rejected["message"].startswith("log.seq: must be 1 to")
    started = await worker.task(run, "k", retry={"limit": 3})
    body = {
        "requestId": "c",
        "runId": run["id"],
        "attempt": 1,
        "taskId": started["task"]["id"],
        "error": {"type": "E", "message": "boom"},
        "nextTryOffset": too_big,
    }
    worker.send({"taskComplete": body})
    rejected = await worker.expect("rejected")
    assert rejected["message"].startswith("task_complete.next_try_offset: must be at most")
    got = js(await conn.runs.GetRun(rn.GetRunRequest(id=run["id"])))
    assert got["tasks"][0]["status"] == "TASK_STATUS_RUNNING" and "logs" not in got


async def test_task_keys_and_names_are_bounded(conn: Stubs, worker: RawWorker) -> None:
    await worker.connect([job("j", ["x"])])
    await send(conn, "x")
    run = (await worker.run_request())["run"]
    for field, extra in (("key", {"key": "k" * 1025}), ("name", {"key": "k", "name": "n" * 1025})):
        worker.send(
            {"task": {"requestId": field, "runId": run["id"], "attempt": 1, "kind": 1, **extra}}
        )
        rejected = await worker.expect("rejected")
        assert rejected["requestId"] == field
        assert rejected["message"] == f"task.{field}: is longer than 1024 characters"
    assert "tasks" not in js(await conn.runs.GetRun(rn.GetRunRequest(id=run["id"])))
    started = await worker.task(run, "k" * 1024)  # the longest is fine
    assert started["task"]["status"] == "TASK_STATUS_RUNNING"


async def test_a_task_inside_another_names_a_run_task_of_the_same_run(
    conn: Stubs, worker: RawWorker
) -> None:
    await worker.connect([job("j", ["x"])], capacity=2)
    await send(conn, "x")
    await send(conn, "x")
    run, other = (await worker.run_request())["run"], (await worker.run_request())["run"]
    elsewhere = (await worker.task(other, "outer"))["task"]["id"]
    sent = await worker.task(run, "tell", "TASK_KIND_SEND_EVENT", params={"event": {"name": "y"}})
    assert sent["task"]["status"] == "TASK_STATUS_COMPLETED"
    for parent, says in (
        ("task_nowhere", "no task 'task_nowhere' in this run"),
        (elsewhere, f"no task {elsewhere!r} in this run"),
        (sent["task"]["id"], "is SEND_EVENT: only a RUN task's function opens tasks inside it"),
    ):
        worker.send(
            {
                "task": {
                    "requestId": "inner",
                    "runId": run["id"],
                    "attempt": run["attempt"],
                    "key": "inner",
                    "kind": "TASK_KIND_RUN",
                    "parentId": parent,
                }
            }
        )
        rejected = await worker.expect("rejected")
        assert rejected["message"].startswith("task.parent_id: ") and says in rejected["message"]
    tasks = js(await conn.runs.GetRun(rn.GetRunRequest(id=run["id"])))["tasks"]
    assert [t["key"] for t in tasks] == ["tell"]


async def test_a_long_bad_value_in_hello_still_ends_the_stream_invalid_argument(
    conn: Stubs,
) -> None:
    bad = RawWorker(conn.workers)
    bad.call = conn.workers.RunJob(bad._requests())
    operator = "$" + "x" * 20000  # quoted in the error
    filtered = job("j", ["x"])
    filtered["trigger"]["event"]["filter"] = {"age": [{operator: 1}]}
    bad.send({"hello": {"workerId": "w", "capacity": 1, "jobs": [filtered]}})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await bad.call.read()
    await bad.close()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.value.details() or ""
    assert details.startswith("hello.jobs[0].trigger.event.filter") and details.endswith(" … (cut)")
    assert len(details.encode()) <= 4000


async def test_a_job_in_hello_is_within_the_payload_limit(conn: Stubs) -> None:
    huge = job("j", ["x"], name="n" * 2_000_000)
    bad = RawWorker(conn.workers)
    bad.call = conn.workers.RunJob(bad._requests())
    bad.send({"hello": {"workerId": "w", "capacity": 1, "jobs": [job("ok", ["x"]), huge]}})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await bad.call.read()
    await bad.close()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("hello.jobs[1]: is 2000")
    assert js(await conn.jobs.ListJobs(jb.ListJobsRequest())) == {}  # none of its jobs


async def test_runs_of_a_gone_worker_are_requeued_even_if_the_store_fails_once(
    conn: Stubs, worker: RawWorker, fast: Server, monkeypatch: pytest.MonkeyPatch
) -> None:

    real = fast.store.requeue
    calls = 0

    async def flaky(runs: list[tuple[str, int]], now: int) -> object:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise sqlite3.OperationalError("database is locked")
        return await real(runs, now)

    monkeypatch.setattr(fast.store, "requeue", flaky)
    await worker.connect([job("j", ["x"])], worker_id="a")
    await send(conn, "x")
    run = (await worker.run_request())["run"]
    await worker.close()
    other = RawWorker(conn.workers)
    try:
        await other.connect([job("j", ["x"])], worker_id="b")
        again = (await other.run_request())["run"]  # after the lease (1 s) and one retry
        assert again["id"] == run["id"] and again["attempt"] == 2 and calls == 2
    finally:
        await other.close()


async def test_a_claim_failing_after_its_worker_left_frees_the_slot_and_requeues(
    conn: Stubs, worker: RawWorker, fast: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    claims = FirstClaimFails(fast, monkeypatch)
    await worker.connect([job("j", ["x"], concurrencyLimit=1)], worker_id="a")
    other = RawWorker(conn.workers)
    try:
        await other.connect([job("j", ["x"], concurrencyLimit=1)], worker_id="b")
        queued = (await send(conn, "x"))["runs"][0]
        assert (await worker.run_request())["run"]["id"] == queued["id"]  # a came first
        await worker.close()  # still counted under the limit: a may be running it

        async def a_is_gone() -> bool:
            return all(session.worker_id != "a" for session in fast.dispatcher.sessions)

        await eventually(a_is_gone)  # else the retry could go to a, then after its lease to b
        claims.fail()
        again = (await other.run_request())["run"]
        assert again["id"] == queued["id"] and again["attempt"] == 2  # 1 is never reused
        other.result(again, output="done")
        await run_status(conn, queued["id"], "SUCCESS")
        # The slot under the limit of 1 was given back: the next run goes too.
        nxt = (await send(conn, "x"))["runs"][0]
        assert (await other.run_request())["run"]["id"] == nxt["id"]
    finally:
        await other.close()


async def test_a_claim_failing_after_the_worker_answered_still_requeues_the_run(
    conn: Stubs, worker: RawWorker, fast: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    claims = FirstClaimFails(fast, monkeypatch)
    await worker.connect([job("j", ["x"])])
    await send(conn, "x")
    first = (await worker.run_request())["run"]
    worker.result(first, output="too early")  # its slot is freed at once...
    assert (await worker.expect("abandon"))["attempt"] == 1  # ...but nothing was claimed
    claims.fail()
    again = (await worker.run_request())["run"]
    assert (again["id"], again["attempt"]) == (first["id"], 2)
    worker.result(again, output="done")
    assert (await run_status(conn, first["id"], "SUCCESS"))["run"]["output"] == "done"


async def test_a_worker_that_drains_on_its_own_gets_no_more_runs(
    conn: Stubs, worker: RawWorker, fast: Server
) -> None:
    await worker.connect([job("j", ["x"])], capacity=5, worker_id="leaving")
    worker.send({"drain": {"deadlineMs": 30_000}})

    async def heard() -> bool:
        return any(s.worker_id == "leaving" and s.draining for s in fast.dispatcher.sessions)

    await eventually(heard)
    staying = RawWorker(conn.workers)
    try:
        await staying.connect([job("j", ["x"])], worker_id="staying")
        (run,) = (await send(conn, "x"))["runs"]
        assert (await staying.run_request())["run"]["id"] == run["id"]
        with pytest.raises(TimeoutError):
            await worker.expect("run_request", within=0.3)
    finally:
        await staying.close()


async def test_shutdown_refuses_new_worker_streams_and_ends_watches(
    start_server: StartServer,
) -> None:
    server = await start_server(lease=5.0, heartbeat_interval=1.0)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)
        busy = RawWorker(stubs.workers)
        await busy.connect([job("j", ["x"])], worker_id="busy")
        await send(stubs, "x")
        await busy.run_request()  # it never finishes: the drain waits out its grace
        await stubs.jobs.RegisterJob(req(jb.RegisterJobRequest, {"job": job("w", ["y"])}))
        (waiting,) = (await send(stubs, "y"))["runs"]  # nobody serves w: it stays queued
        watch = stubs.runs.WatchRun(rn.WatchRunRequest(id=waiting["id"]))
        assert (await watch.read()).run.id == waiting["id"]
        stopping = asyncio.create_task(server.stop(grace=3.0))

        async def draining() -> bool:
            return server.workers.closing

        await eventually(draining)
        # A new call is refused, to be sent again later, and stores nothing.
        with pytest.raises(grpc.aio.AioRpcError) as unsent:
            await send(stubs, "x", id="during-shutdown")
        assert unsent.value.code() == grpc.StatusCode.UNAVAILABLE
        assert unsent.value.details() == "the server is shutting down; try again later"
        late = RawWorker(stubs.workers)
        late.call = stubs.workers.RunJob(late._requests())
        late.send({"hello": {"workerId": "late", "capacity": 1, "jobs": [job("j", ["x"])]}})
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await late.call.read()
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in (refused.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            while True:
                await watch.read()
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        assert ended.value.details() == "the server is shutting down; watch again later"
        await late.close()
        await busy.close()
        await stopping
    restarted = await start_server(db_path=server.settings.db_path)
    async with grpc.aio.insecure_channel(restarted.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await make_stubs(channel).events.GetEvent(ev.GetEventRequest(id="during-shutdown"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("second_request", [False, True])
async def test_shutdown_takes_one_grace_period_and_a_second_request_cuts_it_short(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch, second_request: bool
) -> None:
    # Asked twice, a grace the test could never wait out must not matter.
    grace = 3600.0 if second_request else 1.0
    server = await start_server(lease=30.0, heartbeat_interval=1.0, shutdown_grace=grace)
    given: list[float] = []
    real_stop = server.grpc.stop

    async def stop(grace: float | None) -> None:
        given.append(grace or 0.0)
        await real_stop(grace)

    monkeypatch.setattr(server.grpc, "stop", stop)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)
        busy = RawWorker(stubs.workers)
        await busy.connect([job("j", ["x"])], worker_id="busy")
        await send(stubs, "x")
        await busy.run_request()  # never finished: the drain waits as long as it may
        server.request_stop()
        if second_request:
            server.request_stop()
        await asyncio.wait_for(server.wait_closed(), 30)
        await busy.close()
    # The calls still running got what the drain left of the one grace period.
    assert given and given[0] < 0.5


@pytest.mark.parametrize("second_request", [False, True])
async def test_a_write_lock_another_process_holds_keeps_the_shutdown_in_its_grace_period(
    start_server: StartServer, second_request: bool
) -> None:
    grace = 3600.0 if second_request else 1.0
    server = await start_server(lease=30.0, heartbeat_interval=1.0, shutdown_grace=grace)
    outsider = await asyncio.to_thread(
        sqlite3.connect, server.settings.db_path, isolation_level=None, check_same_thread=False
    )
    async with grpc.aio.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)
        busy = RawWorker(stubs.workers)
        await busy.connect([job("j", ["x"])], worker_id="busy")
        (queued,) = (await send(stubs, "x"))["runs"]
        await busy.run_request()  # never finished: its run is requeued at the end
        await held_by(stubs, queued["id"], "busy")
        await asyncio.to_thread(outsider.execute, "BEGIN IMMEDIATE")  # an operator's shell
        server.request_stop()
        if second_request:
            server.request_stop()
        # The requeue (and the writes queued at close) give up with the grace, not
        # after the writer's 30 s of patience with a lock.
        await asyncio.wait_for(server.wait_closed(), 10)
        await busy.close()
    await asyncio.to_thread(outsider.execute, "ROLLBACK")
    await asyncio.to_thread(outsider.close)
    # Never requeued: the next start does it, once a lease has passed (as for a crash).
    restarted = await start_server(
        db_path=server.settings.db_path, lease=1.0, heartbeat_interval=0.2
    )
    async with grpc.aio.insecure_channel(restarted.address) as channel:
        await run_status(make_stubs(channel), queued["id"], "QUEUED")


async def test_list_runs_pages_end_early_rather_than_outgrow_a_clients_4_mib_limit(
    conn: Stubs, worker: RawWorker
) -> None:
    await worker.connect([job("j", ["x"])], capacity=10)
    ids = [(await send(conn, "x", id=f"e{i}"))["runs"][0]["id"] for i in range(6)]
    for _ in ids:
        run = (await worker.run_request())["run"]
        worker.result(run, output="y" * 900_000)
    for run_id in ids:
        await run_status(conn, run_id, "SUCCESS")
    seen: list[str] = []
    token = ""
    while True:
        page = await conn.runs.ListRuns(rn.ListRunsRequest(job_id="j", page_token=token))
        assert len(page.runs) < len(ids)  # 5.4 MB in all: never one page
        seen += [r.id for r in page.runs]
        token = page.next_page_token
        if not token:
            break
    assert seen == ids[::-1]


async def test_a_dispatch_that_cannot_be_prepared_goes_back_to_the_queue_even_if_the_store_balks(
    conn: Stubs, worker: RawWorker, fast: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepare = FailsOnce(fast.work, "job", monkeypatch)
    requeue = FailsOnce(fast.work.store, "requeue", monkeypatch, "database is locked")
    await worker.connect([job("j", ["x"])])
    (queued,) = (await send(conn, "x"))["runs"]
    again = (await worker.run_request())["run"]  # the first dispatch never reached it
    assert (again["id"], again["attempt"]) == (queued["id"], 2)
    assert prepare.failed and requeue.failed
    worker.result(again, output="done")
    await run_status(conn, queued["id"], "SUCCESS")


# -- batches (protocol step 11) ---------------------------------------------------------


async def flood(conn: Stubs, worker: RawWorker, count: int) -> list[str]:
    """Send `count` events at once; returns the ids of the run requests the worker got."""
    events = [{"name": "x", "payload": {"i": i}} for i in range(count)]
    reply = await conn.events.SendEvents(req(ev.SendEventsRequest, {"events": events}))
    sent = [run.id for event in reply.events for run in event.runs]
    got = [(await worker.run_request())["run"]["id"] for _ in sent]
    assert sorted(got) == sorted(sent)
    return got


async def test_a_worker_that_reads_batches_gets_the_replies_that_piled_up_as_one(
    conn: Stubs, worker: RawWorker
) -> None:
    welcome = await worker.connect([job("j", ["x"])], capacity=50, accepts_batches=True)
    assert welcome["acceptsBatches"] is True
    await flood(conn, worker, 50)  # dispatched together: they pile up in the outbox
    assert worker.batches and max(worker.batches) > 1
    assert sum(worker.batches) <= 50


async def test_a_worker_that_does_not_ask_for_batches_never_gets_one(
    conn: Stubs, worker: RawWorker
) -> None:
    await worker.connect([job("j", ["x"])], capacity=50)
    await flood(conn, worker, 50)
    assert worker.batches == []


async def test_a_batch_from_a_worker_is_applied_message_by_message_in_order(
    conn: Stubs, worker: RawWorker
) -> None:
    await worker.connect([job("j", ["x"])])
    await send(conn, "x")
    run = (await worker.run_request())["run"]
    where = {"runId": run["id"], "attempt": run["attempt"]}
    worker.send(
        {
            "batch": {
                "messages": [
                    {"log": {**where, "seq": 1, "message": "first"}},
                    {"heartbeat": {}},
                    {"log": {**where, "seq": 2, "message": "second"}},
                    {"runResult": {**where, "output": "done"}},  # after the lines
                ]
            }
        }
    )
    ended = await run_status(conn, run["id"], "SUCCESS")
    assert [line["message"] for line in ended["logs"]] == ["first", "second"]
    assert ended["run"]["output"] == "done"


@pytest.mark.parametrize(
    ("inner", "problem"),
    [
        ({"batch": {}}, "a batch cannot hold a batch"),
        ({"hello": {"workerId": "w2", "capacity": 1}}, "a batch cannot hold a hello"),
        ({}, "is empty: it sets none of its fields"),
    ],
)
async def test_a_batch_holding_a_batch_a_hello_or_nothing_has_that_message_rejected(
    conn: Stubs, worker: RawWorker, inner: dict[str, Any], problem: str
) -> None:
    await worker.connect([job("j", ["x"])])
    worker.send({"batch": {"messages": [{"heartbeat": {}}, inner]}})
    rejected = await worker.expect("rejected")
    assert rejected["message"] == f"batch.messages[1]: {problem}"
    assert rejected["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    await send(conn, "x")  # the stream goes on
    assert (await worker.run_request())["run"]["attempt"] == 1
