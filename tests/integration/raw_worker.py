"""A bare worker speaking the RunJob protocol message by message (no SDK)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import json_format
from tripwire.v1 import worker_service_pb2 as pb
from tripwire.v1 import worker_service_pb2_grpc

from .helpers import js


class RawWorker:
    def __init__(self, stub: worker_service_pb2_grpc.WorkerServiceStub) -> None:
        self.stub = stub
        self.outgoing: asyncio.Queue[pb.RunJobRequest | None] = asyncio.Queue()
        self.incoming: asyncio.Queue[pb.RunJobResponse] = asyncio.Queue()
        self.call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self.error: BaseException | None = None
        self.ended = asyncio.Event()
        self._heartbeat: asyncio.Task[None] | None = None
        self.held: list[pb.RunJobResponse] = []
        self.batches: list[int] = []  # the size of each batch received, unpacked
        # With `acks`, heartbeats say how many messages were read (Heartbeat.received).
        self.acks = False
        self.received = 0
        self.deaf = False
        self.pause = 0.0  # seconds spent on each message read (a slow reader)

    async def _requests(self) -> AsyncIterator[pb.RunJobRequest]:
        while True:
            msg = await self.outgoing.get()
            if msg is None:
                return
            yield msg

    async def connect(
        self,
        jobs: list[dict[str, Any]],
        capacity: int = 10,
        worker_id: str = "w1",
        metadata: Any = (),
        accepts_batches: bool = False,
        acks: bool = False,
    ) -> dict[str, Any]:
        self.acks = acks
        self.call = self.stub.RunJob(self._requests(), metadata=metadata)
        self._reader = asyncio.create_task(self._read())
        hello = {"workerId": worker_id, "jobs": jobs, "capacity": capacity}
        self.send({"hello": {**hello, "acceptsBatches": accepts_batches}})
        welcome = await self.expect("welcome")
        self._heartbeat = asyncio.create_task(self._beat(welcome["heartbeatIntervalMs"] / 1000))
        return welcome

    async def _beat(self, interval: float) -> None:
        tick = asyncio.Event()
        while True:
            try:
                await asyncio.wait_for(tick.wait(), interval)
            except TimeoutError:
                self.send({"heartbeat": {"received": self.received} if self.acks else {}})

    def deafen(self) -> None:
        """Stop reading the stream (the call stays open), heartbeats going on (saying
        how much was read)."""
        self.deaf = True

    def stall(self) -> None:
        """Stop sending anything (heartbeats included), keeping the connection open."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()

    async def _read(self) -> None:
        try:
            async for msg in self.call:
                if self.deaf:
                    await asyncio.Event().wait()  # reads nothing more, until closed
                if self.pause:
                    await asyncio.sleep(self.pause)
                self.received += 1
                if msg.HasField("batch"):
                    self.batches.append(len(msg.batch.messages))
                    for inner in msg.batch.messages:
                        self.incoming.put_nowait(inner)
                else:
                    self.incoming.put_nowait(msg)
        except BaseException as exc:  # recorded for the test to inspect
            self.error = exc
        finally:
            self.ended.set()

    def send(self, body: dict[str, Any]) -> None:
        self.outgoing.put_nowait(json_format.ParseDict(body, pb.RunJobRequest()))

    async def expect(self, kind: str, within: float = 10) -> dict[str, Any]:
        """The next server message of `kind`. Run requests may interleave with the
        rest (the server sends them as soon as a run is queued), so they are set
        aside for `run_request()`, and the answers to heartbeats are skipped; any other
        unexpected message fails the test."""
        for i, msg in enumerate(self.held):
            if msg.WhichOneof("message") == kind:
                del self.held[i]
                return js(getattr(msg, kind))
        deadline = asyncio.get_running_loop().time() + within
        while True:
            left = deadline - asyncio.get_running_loop().time()
            msg = await asyncio.wait_for(self.incoming.get(), max(left, 0))
            got = msg.WhichOneof("message")
            if got == kind:
                return js(getattr(msg, kind))
            if got == "heartbeat":
                continue
            assert got == "run_request", f"expected {kind}, got {got}: {msg}"
            self.held.append(msg)

    async def run_request(self, within: float = 10) -> dict[str, Any]:
        """The next run request, with any cached task pages merged in."""
        request = await self.expect("run_request", within)
        tasks = list(request.get("cachedTasks", []))
        if not request.get("cachedTasksComplete"):
            while True:
                page = await self.expect("cached_tasks", within)
                tasks += page.get("tasks", [])
                if page.get("last"):
                    break
        request["cachedTasks"] = tasks
        return request

    async def task(
        self,
        run: dict[str, Any],
        key: str,
        kind: str = "TASK_KIND_RUN",
        request_id: str = "r1",
        **extra: Any,
    ) -> dict[str, Any]:
        self.send(
            {
                "task": {
                    "requestId": request_id,
                    "runId": run["id"],
                    "attempt": run["attempt"],
                    "key": key,
                    "kind": kind,
                    **extra,
                }
            }
        )
        return await self.expect("task_result")

    async def complete(
        self,
        run: dict[str, Any],
        task_id: str,
        output: Any = None,
        error: dict[str, str] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "requestId": "c",
            "runId": run["id"],
            "attempt": run["attempt"],
            "taskId": task_id,
            **extra,
        }
        if error is not None:
            body["error"] = error
        else:
            body["output"] = output
        self.send({"taskComplete": body})
        return await self.expect("task_result")

    def result(
        self, run: dict[str, Any], output: Any = None, error: dict[str, str] | None = None
    ) -> None:
        body: dict[str, Any] = {"runId": run["id"], "attempt": run["attempt"]}
        if error is not None:
            body["error"] = error
        else:
            body["output"] = output
        self.send({"runResult": body})

    async def close(self) -> None:
        self.stall()
        self.outgoing.put_nowait(None)
        if self.call is not None:
            self.call.cancel()
        if self._reader is not None:
            if self.deaf:
                self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


def job(job_id: str, names: list[str], version: str = "1.0.0", **fields: Any) -> dict[str, Any]:
    return {"id": job_id, "version": version, "trigger": {"event": {"names": names}}, **fields}
