"""Crashes mid-run: a worker killed with SIGKILL, the server killed with SIGKILL,
and a worker frozen with SIGSTOP (stream open, nothing read or sent).

Each test runs tests/e2e/crash_worker.py's `three-steps` job (step 1, an event,
step 2, a gate, step 3) and stops the world while the run waits at the gate, after
steps 1 and 2 completed. The run must then finish SUCCESS on a later attempt with
the side effects of steps 1 and 2 not repeated, step 3 done once, and one event.
The server runs with a short lease so a lost worker's run comes back quickly.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from tripwire.v1 import (
    event_service_pb2,
    event_service_pb2_grpc,
    job_service_pb2,
    job_service_pb2_grpc,
    run_pb2,
    run_service_pb2,
    run_service_pb2_grpc,
)

from .worker_process import WorkerProcess, Workers

pytestmark = pytest.mark.e2e

LEASE = 2.0
HEARTBEAT = 0.5
SERVER_ARGS = ["--lease", str(LEASE), "--heartbeat-interval", str(HEARTBEAT)]
TARGET = "tests.e2e.crash_worker:client"
# As crash_worker.py defines them (not imported: it needs its environment).
JOB_ID = "three-steps"
LIMITED_JOB_ID = "one-at-a-time"
EVENT_NAME = "crash.step-sent"
CONNECT_DEADLINE = 20.0
GATE_DEADLINE = 20.0
# A lease, a reconnect backoff (capped at 5 s) and a replay: well within this.
RECOVERY_DEADLINE = 25.0
RPC_TIMEOUT = 10.0
UNFINISHED = {run_pb2.RUN_STATUS_QUEUED, run_pb2.RUN_STATUS_EXECUTING, run_pb2.RUN_STATUS_WAITING}


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    started = Workers(tmp_path)
    yield started
    started.close()


@dataclass
class Stubs:
    jobs: Any
    runs: Any
    events: Any


@pytest.fixture
def connect() -> Any:
    """`async with connect(address) as stubs`: a channel and its stubs."""

    @contextlib.asynccontextmanager
    async def open_stubs(address: str) -> AsyncIterator[Stubs]:
        async with grpc.aio.insecure_channel(address) as channel:
            yield Stubs(
                job_service_pb2_grpc.JobServiceStub(channel),
                run_service_pb2_grpc.RunServiceStub(channel),
                event_service_pb2_grpc.EventServiceStub(channel),
            )

    return open_stubs


class Crash:
    """The side-effect file and gate of one test, and the waits on the run."""

    def __init__(self, tmp_path: Path, workers: Workers, poll: Any) -> None:
        self.side_effects = tmp_path / "side-effects.txt"
        self.gate = tmp_path / "go"
        self.side_effects.touch()
        self.workers = workers
        self.poll = poll

    async def wait(self, fetch: Any, done: Any, *, within: float, what: str) -> Any:
        """`poll` (conftest), failing with the workers' output as it is then."""
        try:
            return await self.poll(fetch, done, within=within, what=what)
        except pytest.fail.Exception as exc:
            pytest.fail(f"{exc}\n{self.workers.outputs()}")

    def start_worker(self, address: str) -> WorkerProcess:
        return self.workers.start(
            address,
            TARGET,
            env={"CRASH_SIDE_EFFECTS": str(self.side_effects), "CRASH_GATE": str(self.gate)},
        )

    def steps(self) -> list[tuple[str, int, int]]:
        """(step, attempt, pid) of each side effect, in order."""
        lines = []
        for line in self.side_effects.read_text().splitlines():
            step, attempt, pid = line.split()
            lines.append(
                (step, int(attempt.removeprefix("attempt=")), int(pid.removeprefix("pid=")))
            )
        return lines

    def entries(self) -> list[tuple[str, str, int]]:
        """(enter or exit, run id, attempt) of each side effect of `one-at-a-time`."""
        lines = []
        for line in self.side_effects.read_text().splitlines():
            what, run, attempt, _ = line.split()
            lines.append((what, run.removeprefix("run="), int(attempt.removeprefix("attempt="))))
        return lines

    async def invoke_when_registered(self, stubs: Stubs, job_id: str = JOB_ID) -> str:
        """Wait for the worker's hello to register the job, invoke it; the run id."""
        request = job_service_pb2.GetJobRequest(id=job_id)

        async def registered() -> bool:
            try:
                await stubs.jobs.GetJob(request, timeout=RPC_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                return False
            return True

        await self.wait(
            registered,
            bool,
            within=CONNECT_DEADLINE,
            what=f"{job_id} registered",
        )
        reply = await stubs.jobs.InvokeJob(
            job_service_pb2.InvokeJobRequest(job_id=job_id), timeout=RPC_TIMEOUT
        )
        run_id: str = reply.run.id
        return run_id

    async def at_gate(self, stubs: Stubs, run_id: str) -> run_service_pb2.GetRunResponse:
        """Wait until the server has step 2 COMPLETED (the worker is at the gate)."""

        def step_2_done(got: run_service_pb2.GetRunResponse) -> bool:
            return any(
                t.key == "step-2" and t.status == run_pb2.TASK_STATUS_COMPLETED for t in got.tasks
            )

        got: run_service_pb2.GetRunResponse = await self.wait(
            lambda: stubs.runs.GetRun(
                run_service_pb2.GetRunRequest(id=run_id), timeout=RPC_TIMEOUT
            ),
            step_2_done,
            within=GATE_DEADLINE,
            what=f"step-2 of {run_id} completed",
        )
        assert got.run.status == run_pb2.RUN_STATUS_EXECUTING
        return got

    async def finished(self, stubs: Stubs, run_id: str) -> run_service_pb2.GetRunResponse:
        got: run_service_pb2.GetRunResponse = await self.wait(
            lambda: stubs.runs.GetRun(
                run_service_pb2.GetRunRequest(id=run_id), timeout=RPC_TIMEOUT
            ),
            lambda got: got.run.status not in UNFINISHED,
            within=RECOVERY_DEADLINE,
            what=f"run {run_id} finished",
        )
        return got

    async def check_finished_once(
        self, stubs: Stubs, run_id: str, first_pid: int, last_pid: int
    ) -> run_service_pb2.GetRunResponse:
        """The run ended SUCCESS on a later attempt: steps 1 and 2 by the first
        attempt only, step 3 once by `last_pid`, one event, every task completed."""
        got = await self.finished(stubs, run_id)
        status = run_pb2.RunStatus.Name(got.run.status)
        assert status == "RUN_STATUS_SUCCESS", f"{got}\n{self.workers.outputs()}"
        assert got.run.attempt >= 2

        steps = self.steps()
        assert [(s, a, p) for s, a, p in steps if s != "step-3"] == [
            ("step-1", 1, first_pid),
            ("step-2", 1, first_pid),
        ], steps
        [(_, step_3_attempt, step_3_pid)] = [s for s in steps if s[0] == "step-3"]
        assert steps[-1][0] == "step-3"
        assert step_3_pid == last_pid
        assert step_3_attempt == got.run.attempt

        assert [(t.key, t.status) for t in got.tasks] == [
            ("step-1", run_pb2.TASK_STATUS_COMPLETED),
            ("announce", run_pb2.TASK_STATUS_COMPLETED),
            ("step-2", run_pb2.TASK_STATUS_COMPLETED),
            ("step-3", run_pb2.TASK_STATUS_COMPLETED),
        ]
        listed = await stubs.events.ListEvents(
            event_service_pb2.ListEventsRequest(name=EVENT_NAME), timeout=RPC_TIMEOUT
        )
        [event] = listed.events
        assert json_format.MessageToDict(event.payload) == {"run": run_id}
        assert json_format.MessageToDict(got.run.output) == {
            "steps": [1, 2, 3],
            "event": event.id,
        }
        return got


async def _async(fn: Any) -> Any:
    return fn()


@pytest.fixture
def crash(tmp_path: Path, workers: Workers, poll: Any) -> Crash:
    return Crash(tmp_path, workers, poll)


async def test_worker_killed_mid_run(start_server, crash, connect):
    server = start_server(args=SERVER_ARGS)
    first = crash.start_worker(server.address)
    async with connect(server.address) as stubs:
        run_id = await crash.invoke_when_registered(stubs)
        await crash.at_gate(stubs, run_id)
        assert crash.steps() == [("step-1", 1, first.pid), ("step-2", 1, first.pid)]

        first.kill9()
        crash.gate.touch()
        second = crash.start_worker(server.address)

        await crash.check_finished_once(stubs, run_id, first.pid, second.pid)


async def test_server_killed_mid_run(start_server, crash, connect):
    server = start_server(args=SERVER_ARGS)
    worker = crash.start_worker(server.address)
    async with connect(server.address) as stubs:
        run_id = await crash.invoke_when_registered(stubs)
        await crash.at_gate(stubs, run_id)
    assert crash.steps() == [("step-1", 1, worker.pid), ("step-2", 1, worker.pid)]

    server.kill9()
    crash.gate.touch()
    # The same file and the same port: the worker reconnects to the address it knows.
    restarted = start_server(db=server.db, args=[*SERVER_ARGS, "--address", server.address])
    assert restarted.address == server.address
    async with connect(restarted.address) as stubs:
        await crash.check_finished_once(stubs, run_id, worker.pid, worker.pid)
    assert worker.proc.poll() is None, worker.output()


async def test_stalled_worker_loses_its_run_after_the_lease(start_server, crash, connect):
    server = start_server(args=SERVER_ARGS)
    stalled = crash.start_worker(server.address)
    async with connect(server.address) as stubs:
        run_id = await crash.invoke_when_registered(stubs)
        await crash.at_gate(stubs, run_id)
        assert crash.steps() == [("step-1", 1, stalled.pid), ("step-2", 1, stalled.pid)]

        stalled.freeze()
        frozen_at = time.monotonic()
        crash.gate.touch()
        rescuer = crash.start_worker(server.address)

        got = await crash.check_finished_once(stubs, run_id, stalled.pid, rescuer.pid)
        recovered_after = time.monotonic() - frozen_at
        # Still there, socket open: the run moved because of the silence, not a broken stream.
        assert stalled.proc.poll() is None
        # The lease counts from the last message, at most one heartbeat before the freeze.
        assert recovered_after >= LEASE - HEARTBEAT, (recovered_after, got)

        # Woken up, the stale worker finds its gate open but must not do step 3 again:
        # its attempt is over. Wait until it has reconnected, then look.
        stalled.signal(signal.SIGCONT)
        await crash.wait(
            lambda: _async(stalled.output),
            lambda out: out.count("tripwire.worker: connected to") >= 2,
            within=RECOVERY_DEADLINE,
            what="the woken worker reconnected",
        )
        after = await stubs.runs.GetRun(
            run_service_pb2.GetRunRequest(id=run_id), timeout=RPC_TIMEOUT
        )
    assert (after.run.status, after.run.attempt) == (got.run.status, got.run.attempt)
    assert [step for step, _, _ in crash.steps()] == ["step-1", "step-2", "step-3"], crash.steps()


async def test_runs_executing_when_the_server_crashed_are_held_for_a_lease(
    start_server, crash, connect
):
    # A crash breaks every worker's stream. As with any broken stream, what they were
    # executing stays counted against its job's concurrency limit, and off every
    # worker, until a lease has passed: a function in a thread may still be running
    # it. (The restarted server queued it again at once: the run's function ran twice
    # at the same time, over a limit of 1.)
    lease = 5.0  # long enough to look at the runs within it after the restart
    args = ["--lease", str(lease), "--heartbeat-interval", str(HEARTBEAT)]
    server = start_server(args=args)
    for _ in range(2):
        crash.start_worker(server.address)
    async with connect(server.address) as stubs:
        first = await crash.invoke_when_registered(stubs, LIMITED_JOB_ID)
        second = await crash.invoke_when_registered(stubs, LIMITED_JOB_ID)
        await crash.wait(
            lambda: _async(crash.entries),
            lambda entries: entries == [("enter", first, 1)],
            within=GATE_DEADLINE,
            what=f"{first} in its function",
        )

    server.kill9()
    restarted = start_server(db=server.db, args=[*args, "--address", server.address])
    async with connect(restarted.address) as stubs:
        runs = [
            (await stubs.runs.GetRun(run_service_pb2.GetRunRequest(id=i), timeout=RPC_TIMEOUT)).run
            for i in (first, second)
        ]
        assert [(r.status, r.attempt) for r in runs] == [
            (run_pb2.RUN_STATUS_EXECUTING, 1),  # its function is still running
            (run_pb2.RUN_STATUS_QUEUED, 0),  # the limit of 1 is taken
        ], f"{runs}\n{crash.workers.outputs()}"

        crash.gate.touch()
        for run_id in (first, second):
            got = await crash.finished(stubs, run_id)
            assert got.run.status == run_pb2.RUN_STATUS_SUCCESS, got
    # One at a time: the first run's function again (its outcome went with the
    # stream), then the second's.
    assert crash.entries() == [
        ("enter", first, 1),
        ("exit", first, 1),
        ("enter", first, 2),
        ("exit", first, 2),
        ("enter", second, 1),
        ("exit", second, 1),
    ]
