"""Python workers as processes: SIGTERM or SIGINT drains `await client.run_worker()` as it
drains `client.listen()`, a handler stuck past the drain deadline does not keep
the process alive, and `tripwire worker` says when it is connected and when it drains,
and reports a bad target plainly."""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from tripwire.v1 import (
    event_service_pb2,
    event_service_pb2_grpc,
    job_service_pb2,
    job_service_pb2_grpc,
    run_pb2,
    run_service_pb2,
    run_service_pb2_grpc,
)

from .worker_process import STOP_DEADLINE, TRIPWIRE, Workers

pytestmark = pytest.mark.e2e

RPC_TIMEOUT = 10.0
WITHIN = 20.0

ASYNC_WORKER = """
import asyncio
import os

from tripwire.client import Client, event_trigger

client = Client("drain-test", url=os.environ["TRIPWIRE_URL"])


@client.define_job(id="slow", version="1.0.0", trigger=event_trigger(name="slow"))
async def slow(payload, io, ctx):
    await io.logger.info("started")
    await asyncio.sleep(1.0)
    return "finished"


if __name__ == "__main__":
    asyncio.run(client.run_worker(shutdown_timeout=15))
"""


STUCK_WORKER = """
import os
import time

from tripwire.client import Client, event_trigger

client = Client("stuck-test", url=os.environ["TRIPWIRE_URL"])


@client.define_job(id="stuck", version="1.0.0", trigger=event_trigger(name="stuck"))
def stuck(payload, io, ctx):  # a plain function: it runs in one of the worker's threads
    io.logger.info("started")
    time.sleep(600)


if __name__ == "__main__":
    client.listen(shutdown_timeout=0.5)
"""


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    started = Workers(tmp_path)
    yield started
    started.close()


async def _running(server, workers, poll, module: Path, job_id: str, channel):
    """Start the worker in `module`, wait for its hello, send the event its job
    listens to and wait until the handler has logged "started"; (worker, run id)."""
    worker = workers.start(server.address, argv=[sys.executable, str(module)])
    jobs = job_service_pb2_grpc.JobServiceStub(channel)
    runs = run_service_pb2_grpc.RunServiceStub(channel)
    events = event_service_pb2_grpc.EventServiceStub(channel)

    async def registered() -> bool:
        assert worker.proc.poll() is None, worker.output()
        try:
            await jobs.GetJob(job_service_pb2.GetJobRequest(id=job_id), timeout=RPC_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return False
        return True

    await poll(registered, bool, within=WITHIN, what="the worker's hello")
    sent = await events.SendEvent(
        event_service_pb2.SendEventRequest(event={"name": job_id}), timeout=RPC_TIMEOUT
    )
    run_id = sent.event.runs[0].id

    async def started() -> bool:
        got = await runs.GetRun(run_service_pb2.GetRunRequest(id=run_id), timeout=RPC_TIMEOUT)
        return [line.message for line in got.logs] == ["started"]

    await poll(started, bool, within=WITHIN, what="the handler running")
    return worker, run_id


# SIGINT too: asyncio.run has a handler of its own for it, which cancels at once.
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
async def test_a_signal_drains_run_worker(server, workers, tmp_path, poll, sig):
    module = tmp_path / "async_worker.py"
    module.write_text(ASYNC_WORKER)
    async with grpc.aio.insecure_channel(server.address) as channel:
        worker, run_id = await _running(server, workers, poll, module, "slow", channel)
        worker.signal(sig)
        assert worker.proc.wait(timeout=STOP_DEADLINE) == 0, worker.output()
        runs = run_service_pb2_grpc.RunServiceStub(channel)
        got = await runs.GetRun(run_service_pb2.GetRunRequest(id=run_id), timeout=RPC_TIMEOUT)
        assert got.run.status == run_pb2.RUN_STATUS_SUCCESS, worker.output()
        assert got.run.output.string_value == "finished"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
async def test_a_handler_stuck_past_the_drain_deadline_does_not_keep_the_process(
    server, workers, tmp_path, poll, sig
):
    module = tmp_path / "stuck_worker.py"
    module.write_text(STUCK_WORKER)
    async with grpc.aio.insecure_channel(server.address) as channel:
        worker, _ = await _running(server, workers, poll, module, "stuck", channel)
        worker.signal(sig)
        # The handler sleeps ten minutes; the process must go once the drain gives up.
        assert worker.proc.wait(timeout=STOP_DEADLINE) == 0, worker.output()


def test_a_worker_target_without_jobs_is_an_error_not_a_traceback(server, run, tmp_path):
    (tmp_path / "nojobs.py").write_text(
        "from tripwire.client import Client\nclient = Client('empty')\n"
    )
    result = run([TRIPWIRE, "worker", "nojobs:client"], cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "nojobs:client" in result.stderr and "at least one job" in result.stderr


async def test_the_worker_command_says_when_it_connects_and_when_it_drains(
    server, workers, tmp_path, poll
):
    (tmp_path / "said_worker.py").write_text(ASYNC_WORKER)
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    worker = workers.start(server.address, "said_worker:client", env={"PYTHONPATH": path})

    async def output() -> str:
        assert worker.proc.poll() is None, worker.output()
        return worker.output()

    said = await poll(output, lambda out: "connected to" in out, within=WITHIN, what="connected")
    connected = rf"\d\d:\d\d:\d\d INFO tripwire\.worker: connected to {re.escape(server.address)} "
    assert re.search(rf"{connected}as \S+, serving slow@1\.0\.0 \(session ", said), said
    worker.signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=STOP_DEADLINE) == 0, worker.output()
    said = worker.output()
    assert "INFO tripwire.worker: shutting down: finishing running runs" in said, said
    assert "INFO tripwire.worker: draining: no more runs asked for" in said, said
