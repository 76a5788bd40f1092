"""An acknowledged event survives `kill -9`: its row, its run, and for a delayed
event the delivery still owed. SIGTERM and SIGINT stop the server cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys

import grpc
import pytest
from google.protobuf import struct_pb2
from tripwire.v1 import (
    event_pb2,
    event_service_pb2,
    event_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    run_pb2,
)

pytestmark = pytest.mark.e2e

EVENTS = 300
BATCH = 100
IN_FLIGHT = 32
RPC_TIMEOUT = 20.0
JOB_ID = "on-signup"
NAME = "user.signed_up"


def _payload(i: int) -> struct_pb2.Value:
    value = struct_pb2.Value()
    value.struct_value.update({"userId": f"u_{i}", "n": i})
    return value


async def _register_job(channel: grpc.aio.Channel) -> None:
    job = job_pb2.Job(
        id=JOB_ID,
        version="1.0.0",
        trigger=job_pb2.Trigger(event=job_pb2.EventTrigger(names=[NAME])),
    )
    await job_service_pb2_grpc.JobServiceStub(channel).RegisterJob(
        job_service_pb2.RegisterJobRequest(job=job), timeout=RPC_TIMEOUT
    )


async def _send_all(events: event_service_pb2_grpc.EventServiceStub) -> list[str]:
    """EVENTS SendEvent calls, IN_FLIGHT at a time, plus one SendEvents batch;
    the ids the server acknowledged as delivered."""
    acked: list[str] = []
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def send(i: int) -> None:
        async with gate:
            reply = await events.SendEvent(
                event_service_pb2.SendEventRequest(
                    event=event_pb2.EventInput(name=NAME, payload=_payload(i))
                ),
                timeout=RPC_TIMEOUT,
            )
        assert reply.event.status == event_pb2.EVENT_STATUS_DELIVERED
        acked.append(reply.event.id)

    async def send_batch() -> None:
        inputs = [
            event_pb2.EventInput(name=NAME, id=f"batch-{i}", payload=_payload(i))
            for i in range(BATCH)
        ]
        reply = await events.SendEvents(
            event_service_pb2.SendEventsRequest(events=inputs), timeout=RPC_TIMEOUT
        )
        assert [e.id for e in reply.events] == [e.id for e in inputs]
        acked.extend(e.id for e in reply.events)

    async with asyncio.TaskGroup() as group:
        for i in range(EVENTS):
            group.create_task(send(i))
        group.create_task(send_batch())
    return acked


async def test_acknowledged_events_survive_kill9(start_server):
    first = start_server()
    async with grpc.aio.insecure_channel(first.address) as channel:
        await _register_job(channel)
        acked = await _send_all(event_service_pb2_grpc.EventServiceStub(channel))
        first.kill9()

    assert len(acked) == len(set(acked)) == EVENTS + BATCH
    second = start_server(db=first.db)
    async with grpc.aio.insecure_channel(second.address) as channel:
        events = event_service_pb2_grpc.EventServiceStub(channel)
        missing, without_run = [], []
        for event_id in acked:
            try:
                got = await events.GetEvent(
                    event_service_pb2.GetEventRequest(id=event_id), timeout=RPC_TIMEOUT
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                missing.append(event_id)
                continue
            if [r.job_id for r in got.runs] != [JOB_ID]:
                without_run.append(event_id)
        assert missing == []
        assert without_run == []


async def test_delayed_event_is_delivered_after_a_restart(start_server, poll):
    first = start_server()
    async with grpc.aio.insecure_channel(first.address) as channel:
        await _register_job(channel)
        reply = await event_service_pb2_grpc.EventServiceStub(channel).SendEvent(
            event_service_pb2.SendEventRequest(
                event=event_pb2.EventInput(name=NAME, payload=_payload(0)),
                options=event_pb2.SendEventOptions(deliver_after=1),
            ),
            timeout=RPC_TIMEOUT,
        )
        first.kill9()
    event_id = reply.event.id
    assert reply.event.status == event_pb2.EVENT_STATUS_PENDING

    second = start_server(db=first.db)
    async with grpc.aio.insecure_channel(second.address) as channel:
        events = event_service_pb2_grpc.EventServiceStub(channel)
        got = await poll(
            lambda: events.GetEvent(
                event_service_pb2.GetEventRequest(id=event_id), timeout=RPC_TIMEOUT
            ),
            lambda got: got.event.status == event_pb2.EVENT_STATUS_DELIVERED,
            within=15.0,
            what=f"delivery of {event_id}",
        )
    assert got.event.HasField("delivered_at")
    [run] = got.runs
    assert run.job_id == JOB_ID
    assert run.status == run_pb2.RUN_STATUS_QUEUED


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
async def test_signal_stops_the_server_cleanly(start_server, sig, loop):
    first = start_server(args=("--event-loop", loop))
    async with grpc.aio.insecure_channel(first.address) as channel:
        await _register_job(channel)
        sent = await event_service_pb2_grpc.EventServiceStub(channel).SendEvent(
            event_service_pb2.SendEventRequest(event=event_pb2.EventInput(name=NAME)),
            timeout=RPC_TIMEOUT,
        )

    assert first.terminate(sig) == 0, first.stderr()

    second = start_server(db=first.db)
    async with grpc.aio.insecure_channel(second.address) as channel:
        got = await event_service_pb2_grpc.EventServiceStub(channel).GetEvent(
            event_service_pb2.GetEventRequest(id=sent.event.id), timeout=RPC_TIMEOUT
        )
    assert got.event.status == event_pb2.EVENT_STATUS_DELIVERED
    assert [r.job_id for r in got.runs] == [JOB_ID]


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
async def test_ctrl_c_while_the_start_waits_for_a_locked_database_exits_at_once(
    tmp_path, poll, loop
):
    db = tmp_path / "tripwire.db"
    outsider = sqlite3.connect(db, isolation_level=None)
    outsider.execute("PRAGMA journal_mode = WAL")
    outsider.execute("BEGIN IMMEDIATE")  # an operator's sqlite3 shell, mid-transaction
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIPWIRE_")}
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "tripwire.server", "--address", "127.0.0.1:0"),
        *("--db", str(db), "--event-loop", loop),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    try:
        lock = tmp_path / "tripwire.db.lock"

        async def holder() -> str:
            return lock.read_text() if lock.exists() else ""

        # It has claimed the file: its migration now waits for the outsider's lock.
        await poll(holder, lambda text: text.strip() == str(proc.pid), within=20, what="claim")

        async def notice() -> bytes:
            # Not silent while it waits: a line says what it may be waiting for.
            assert proc.stderr is not None
            while b"still opening the database" not in (line := await proc.stderr.readline()):
                assert line, "the server ended before saying it was still opening"
            return line

        line = await asyncio.wait_for(notice(), 20)
        assert b"waiting (up to 30 s) for a write lock another process holds" in line
        proc.send_signal(signal.SIGINT)
        # Not after SQLite's 30 s of patience with the lock, nor with a traceback.
        _, err = await asyncio.wait_for(proc.communicate(), 10)
        assert proc.returncode == 130, err
        assert err.decode().strip().splitlines()[-1] == (
            "tripwire serve: interrupted while starting"
        )
        assert b"Traceback" not in err
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        outsider.close()
