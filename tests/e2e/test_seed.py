"""The seed page's two jobs (examples/seed.py) end to end, driven as the README says.

A worker serving examples.seed:client is started with `tripwire worker`; job-1 is
invoked with grpcurl; its run sends one `new.user` event from the server, whose run
of job-2 logs the new user. The README quotes SEED; each command runs in a shell
from the repository root, with `localhost:50051` replaced by the test server's
address.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from tripwire.v1 import (
    event_service_pb2,
    event_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    run_pb2,
    run_service_pb2,
    run_service_pb2_grpc,
)

from .worker_process import Workers

pytestmark = pytest.mark.e2e

README_ADDRESS = "localhost:50051"
SEED = [
    ".venv/bin/tripwire worker examples.seed:client",
    '.venv/bin/grpcurl -plaintext -d \'{"jobId":"job-1"}\''
    " localhost:50051 tripwire.v1.JobService/InvokeJob",
    '.venv/bin/grpcurl -plaintext -d \'{"name":"new.user"}\''
    " localhost:50051 tripwire.v1.EventService/ListEvents",
    '.venv/bin/grpcurl -plaintext -d \'{"jobId":"job-2"}\''
    " localhost:50051 tripwire.v1.RunService/ListRuns",
]
CONNECT_DEADLINE = 20.0
RUN_DEADLINE = 20.0
RPC_TIMEOUT = 10.0
UNFINISHED = {run_pb2.RUN_STATUS_QUEUED, run_pb2.RUN_STATUS_EXECUTING, run_pb2.RUN_STATUS_WAITING}


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    started = Workers(tmp_path)
    yield started
    started.close()


def _status(run: run_pb2.Run) -> str:
    return run_pb2.RunStatus.Name(run.status)


async def test_seed_jobs_run_end_to_end(server, workers, run, poll):
    def shell(command: str) -> Any:
        result = run(
            ["bash", "-c", command.replace(README_ADDRESS, server.address)],
            env={"TRIPWIRE_URL": server.address},
        )
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        return json.loads(result.stdout)

    worker = workers.start(server.address, argv=["bash", "-c", f"exec {SEED[0]}"])
    async with grpc.aio.insecure_channel(server.address) as channel:
        jobs = job_service_pb2_grpc.JobServiceStub(channel)
        runs = run_service_pb2_grpc.RunServiceStub(channel)
        events = event_service_pb2_grpc.EventServiceStub(channel)

        async def registered() -> list[str]:
            # The worker's hello registers both jobs: then it is connected.
            found = []
            for job_id in ("job-1", "job-2"):
                try:
                    await jobs.GetJob(job_service_pb2.GetJobRequest(id=job_id), timeout=RPC_TIMEOUT)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.NOT_FOUND:
                        raise
                else:
                    found.append(job_id)
            if worker.proc.poll() is not None:
                pytest.fail(f"the worker exited with {worker.proc.returncode}:\n{worker.output()}")
            return found

        await poll(
            registered,
            lambda found: found == ["job-1", "job-2"],
            within=CONNECT_DEADLINE,
            what="job-1 and job-2 registered by the worker",
        )

        invoked = shell(SEED[1])
        first_id = invoked["run"]["id"]
        assert invoked["run"]["jobId"] == "job-1"

        async def finished(run_id: str) -> run_service_pb2.GetRunResponse:
            return await poll(
                lambda: runs.GetRun(run_service_pb2.GetRunRequest(id=run_id), timeout=RPC_TIMEOUT),
                lambda got: got.run.status not in UNFINISHED,
                within=RUN_DEADLINE,
                what=f"run {run_id} finished",
            )

        first = await finished(first_id)
        assert _status(first.run) == "RUN_STATUS_SUCCESS", f"{first}\n{worker.output()}"
        [task] = first.tasks
        assert (task.key, task.kind, task.status) == (
            "send-event",
            run_pb2.TASK_KIND_SEND_EVENT,
            run_pb2.TASK_STATUS_COMPLETED,
        )

        listed = await events.ListEvents(
            event_service_pb2.ListEventsRequest(name="new.user"), timeout=RPC_TIMEOUT
        )
        [event] = listed.events
        assert json_format.MessageToDict(event.payload) == {"userId": "u_1234567890"}
        assert json_format.MessageToDict(task.output)["id"] == event.id
        detail = await events.GetEvent(
            event_service_pb2.GetEventRequest(id=event.id), timeout=RPC_TIMEOUT
        )
        [second_run] = detail.runs
        assert second_run.job_id == "job-2"

        second = await finished(second_run.id)
        assert _status(second.run) == "RUN_STATUS_SUCCESS", f"{second}\n{worker.output()}"
        assert [
            (log.level, log.message, json_format.MessageToDict(log.data)) for log in second.logs
        ] == [(job_pb2.LOG_LEVEL_LOG, "New user created", {"userId": "u_1234567890"})]

    # The README's look-ups, as written, show the same.
    [listed_event] = shell(SEED[2])["events"]
    assert (listed_event["id"], listed_event["name"]) == (event.id, "new.user")
    [listed_run] = shell(SEED[3])["runs"]
    assert (listed_run["id"], listed_run["status"]) == (second_run.id, "RUN_STATUS_SUCCESS")

    assert worker.terminate() == 0, worker.output()
