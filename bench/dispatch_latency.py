"""Dispatch latency: from a SendEvent call to the worker's run_request, at a steady rate.

    .venv/bin/python bench/dispatch_latency.py [--rate 500] [--warmup 3] [--seconds 10]
                                               [--capacity 10000]

Starts the server as a subprocess on 127.0.0.1 (a fresh SQLite file) and, in a
process of its own, a bare worker speaking the RunJob protocol without the SDK:
it says hello (one job triggered by the bench's events, capacity high enough
never to throttle; it reads and sends batches, as the SDK does), records
`time.time_ns()` the moment each run_request comes off the stream (a batch's
all at once), and answers each with a run_result so the runs complete. A
separate load process sends SendEvent on a fixed schedule of `--rate` events/s
(open loop: a call is started when it is due, whether or not earlier calls
have returned), each event carrying its send time in the payload. Latency is
receipt minus send time, on the same machine clock.

`--warmup` seconds of load come first and are not counted; then `--seconds`
are measured. Prints p50/p99/max (targets: p50 <= 2 ms, p99 <= 10 ms), the
SendEvent reply latency beside it, and how far the load generator lagged its
schedule. Every acknowledged event must reach the worker and its run end in
SUCCESS. Exits non-zero on errors only, never on a missed target.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import harness
from google.protobuf import struct_pb2
from tripwire.v1 import (
    event_pb2,
    event_service_pb2,
    event_service_pb2_grpc,
    job_pb2,
    run_pb2,
    run_service_pb2,
    run_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)

EVENT_NAME = "bench.dispatch"
JOB_ID = "bench-dispatch"
TARGET_P50_MS = 2.0
TARGET_P99_MS = 10.0
SETTLE_DEADLINE = 60.0
_ACTIVE = (run_pb2.RUN_STATUS_QUEUED, run_pb2.RUN_STATUS_EXECUTING, run_pb2.RUN_STATUS_WAITING)


# -- the worker process ------------------------------------------------------------------


def serve_worker(address: str, capacity: int) -> int:
    """A raw RunJob client. Prints "ready" once welcomed; when its stdin closes, prints
    one JSON line: {"latency_ns": {seq: ns}, "received": n, "problems": {what: count}}."""
    return asyncio.run(_worker(address, capacity))


async def _worker(address: str, capacity: int) -> int:
    Request = worker_service_pb2.RunJobRequest
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    threading.Thread(
        target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(stop.set)), daemon=True
    ).start()
    outgoing: asyncio.Queue[worker_service_pb2.RunJobRequest | None] = asyncio.Queue()

    batches = False  # the server reads batches (its welcome says so)

    async def requests() -> Any:
        # What piled up goes as one batch once the server reads them (protocol step 11).
        while (message := await outgoing.get()) is not None:
            if not batches or outgoing.empty():
                yield message
                continue
            batch = Request()
            batch.batch.messages.append(message)
            while not outgoing.empty() and (more := outgoing.get_nowait()) is not None:
                batch.batch.messages.append(more)
            yield batch
            if more is None:
                return

    job = job_pb2.Job(
        id=JOB_ID,
        version="1.0.0",
        trigger=job_pb2.Trigger(event=job_pb2.EventTrigger(names=[EVENT_NAME])),
    )
    hello = worker_service_pb2.Hello(
        worker_id=f"bench-raw-{os.getpid()}",
        jobs=[job],
        capacity=capacity,
        sdk="bench-raw",
        accepts_batches=True,
    )
    latency_ns: dict[int, int] = {}
    problems: collections.Counter[str] = collections.Counter()
    received = 0
    null = struct_pb2.Value(null_value=struct_pb2.NULL_VALUE)

    async with grpc.aio.insecure_channel(address) as channel:
        call = worker_service_pb2_grpc.WorkerServiceStub(channel).RunJob(requests())
        outgoing.put_nowait(Request(hello=hello))
        first = await call.read()
        if first is grpc.aio.EOF or first.WhichOneof("message") != "welcome":
            print(f"expected welcome, got {first}", file=sys.stderr)
            return 1
        interval = first.welcome.heartbeat_interval_ms / 1000 or 5.0
        batches = first.welcome.accepts_batches

        async def beat() -> None:
            while True:
                await asyncio.sleep(interval)
                outgoing.put_nowait(Request(heartbeat=worker_service_pb2.Heartbeat()))

        async def read() -> None:
            while True:
                message = await call.read()
                now = time.time_ns()  # first thing: the receipt time
                if message is grpc.aio.EOF:
                    problems["the server ended the stream"] += 1
                    return
                if message.WhichOneof("message") == "batch":
                    for inner in message.batch.messages:
                        receive(inner, now)
                else:
                    receive(message, now)

        def receive(message: worker_service_pb2.RunJobResponse, now: int) -> None:
            nonlocal received
            kind = message.WhichOneof("message")
            if kind == "heartbeat":  # the server's answer to ours
                return
            if kind != "run_request":
                problems[f"unexpected {kind} from the server"] += 1
                print(f"unexpected {kind}: {getattr(message, kind, '')}", file=sys.stderr)
                return
            run = message.run_request.run
            fields = message.run_request.event.payload.struct_value.fields
            received += 1
            try:
                seq, sent = int(fields["seq"].number_value), int(fields["sent_ns"].string_value)
            except (KeyError, ValueError):
                problems["a run_request without seq/sent_ns in the payload"] += 1
            else:
                if seq in latency_ns:
                    problems["an event dispatched twice"] += 1
                latency_ns[seq] = now - sent
            result = worker_service_pb2.RunResult(run_id=run.id, attempt=run.attempt)
            result.output.CopyFrom(null)
            outgoing.put_nowait(Request(run_result=result))

        heartbeat = asyncio.create_task(beat())
        reader = asyncio.create_task(read())
        print("ready", flush=True)
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({reader, stopped}, return_when=asyncio.FIRST_COMPLETED)
        for task in (heartbeat, reader, stopped):
            task.cancel()
        outgoing.put_nowait(None)
        call.cancel()

    print(
        json.dumps({"latency_ns": latency_ns, "received": received, "problems": dict(problems)}),
        flush=True,
    )
    return 0


class WorkerProcess:
    """This script in worker mode, in its own process group; `with` kills the group."""

    def __init__(self, address: str, capacity: int, log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, "--worker", address, "--capacity", str(capacity)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                start_new_session=True,
            )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def __enter__(self) -> WorkerProcess:
        line = self._line(harness.START_DEADLINE)
        if line != "ready":
            self.kill()
            raise RuntimeError(f"the worker did not start (got {line!r}):\n{self._log()}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()

    def _line(self, timeout: float) -> str | None:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def _log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def finish(self) -> dict[str, Any]:
        """Close its stdin and read its report."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        line = self._line(harness.STOP_DEADLINE)
        if not line:
            raise RuntimeError(f"the worker sent no report:\n{self._log()}")
        report: dict[str, Any] = json.loads(line)
        self.proc.wait(timeout=harness.STOP_DEADLINE)
        return report

    def kill(self) -> None:
        harness.stop_group(self.proc, signal.SIGKILL)


# -- the load process --------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    address: str
    rate: float
    warmup: float
    seconds: float


def load(spec: Load) -> dict[str, Any]:
    """Runs in the load process (no GIL shared with the worker or the bench)."""
    return asyncio.run(_drive(spec))


async def _drive(spec: Load) -> dict[str, Any]:
    warmup_n = round(spec.rate * spec.warmup)
    total = warmup_n + round(spec.rate * spec.seconds)
    loop = asyncio.get_running_loop()
    acked: list[int] = []
    ack_latency: list[float] = []
    lag: list[float] = []
    errors: collections.Counter[str] = collections.Counter()

    async with grpc.aio.insecure_channel(spec.address) as channel:
        stub = event_service_pb2_grpc.EventServiceStub(channel)
        await channel.channel_ready()

        async def send(seq: int) -> None:
            payload = struct_pb2.Value()
            fields = payload.struct_value.fields
            fields["seq"].number_value = seq
            event = event_pb2.EventInput(name=EVENT_NAME, payload=payload)
            request = event_service_pb2.SendEventRequest(event=event)
            started = loop.time()
            fields = request.event.payload.struct_value.fields
            fields["sent_ns"].string_value = str(time.time_ns())
            try:
                await stub.SendEvent(request, timeout=harness.RPC_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                error = f"SendEvent {exc.code().name}: {exc.details()}"
                if not errors[error]:
                    print(f"{error}: {exc.debug_error_string()}", file=sys.stderr, flush=True)
                errors[error] += 1
                return
            acked.append(seq)
            if seq >= warmup_n:
                ack_latency.append(loop.time() - started)

        calls: set[asyncio.Task[None]] = set()
        begin = loop.time() + 0.05
        for seq in range(total):
            due = begin + seq / spec.rate
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            if seq >= warmup_n:
                lag.append(loop.time() - due)
            call = asyncio.create_task(send(seq))
            calls.add(call)
            call.add_done_callback(calls.discard)
        sent_for = loop.time() - (begin + warmup_n / spec.rate)
        if calls:
            await asyncio.wait(set(calls))

    return {
        "warmup_n": warmup_n,
        "total": total,
        "acked": acked,
        "ack_latency": ack_latency,
        "lag": lag,
        "achieved_rate": (total - warmup_n) / sent_for if sent_for > 0 else 0.0,
        "errors": dict(errors),
    }


# -- the bench ---------------------------------------------------------------------------


def count_runs(address: str, status: run_pb2.RunStatus.ValueType) -> int:
    total, token = 0, ""
    with grpc.insecure_channel(address) as channel:
        stub = run_service_pb2_grpc.RunServiceStub(channel)
        while True:
            page = stub.ListRuns(
                run_service_pb2.ListRunsRequest(
                    job_id=JOB_ID, status=status, page_size=1000, page_token=token
                ),
                timeout=harness.RPC_TIMEOUT,
            )
            total += len(page.runs)
            token = page.next_page_token
            if not token:
                return total


def wait_settled(address: str, deadline: float) -> bool:
    """True once no run of the job is queued, executing or waiting."""
    with grpc.insecure_channel(address) as channel:
        stub = run_service_pb2_grpc.RunServiceStub(channel)
        while True:
            busy = any(
                stub.ListRuns(
                    run_service_pb2.ListRunsRequest(job_id=JOB_ID, status=s, page_size=1),
                    timeout=harness.RPC_TIMEOUT,
                ).runs
                for s in _ACTIVE
            )
            if not busy:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)


def ms(values: list[float], fraction: float) -> float:
    return 1000 * float(harness.percentile(values, fraction))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0, help="events/s")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds, not measured")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds, measured")
    parser.add_argument("--capacity", type=int, default=10_000, help="the worker's capacity")
    parser.add_argument("--worker", metavar="ADDRESS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return serve_worker(args.worker, args.capacity)

    harness.exit_on_sigterm()
    failures: list[str] = []
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tripwire-bench-")))
        # Entered first, left last: the server and the worker are killed before the load.
        pool = stack.enter_context(harness.terminating_load_process())
        server = stack.enter_context(harness.tripwire_server(work / "bench.db", work))
        print(f"server pid {server.proc.pid if server.proc else '?'} on {server.address}")
        worker = stack.enter_context(
            WorkerProcess(server.address, args.capacity, work / "worker.stderr")
        )
        spec = Load(server.address, args.rate, args.warmup, args.seconds)
        pids = {"server": server.proc.pid if server.proc else 0, "worker": worker.proc.pid}
        cpu_before = {name: harness.cpu_seconds(pid) for name, pid in pids.items()}
        wall = time.monotonic()
        sent = pool.apply(load, (spec,))
        wall = time.monotonic() - wall
        cores = {
            name: (harness.cpu_seconds(pid) - cpu_before[name]) / wall for name, pid in pids.items()
        }
        settled = wait_settled(server.address, time.monotonic() + SETTLE_DEADLINE)
        report = worker.finish()
        succeeded = count_runs(server.address, run_pb2.RUN_STATUS_SUCCESS)

        failures += [f"{n} x {e}" for e, n in sent["errors"].items()]
        failures += [f"worker: {n} x {e}" for e, n in report["problems"].items()]
        if not settled:
            failures.append(f"runs still active {SETTLE_DEADLINE:.0f} s after the load")
        got = {int(seq) for seq in report["latency_ns"]}
        lost = [seq for seq in sent["acked"] if seq not in got]
        if lost:
            failures.append(f"{len(lost)} acknowledged events never reached the worker")
        if succeeded != len(sent["acked"]):
            failures.append(f"{len(sent['acked'])} events acknowledged, {succeeded} runs SUCCESS")
        if failures:
            print((work / "tripwire.stderr").read_text()[-4000:], file=sys.stderr)

    warmup_n = sent["warmup_n"]
    latency = sorted(ns / 1e9 for seq, ns in report["latency_ns"].items() if int(seq) >= warmup_n)
    # The p50 of each measured second, to tell a steady state from a slide.
    by_second: dict[int, list[float]] = {}
    for seq, ns in report["latency_ns"].items():
        if int(seq) >= warmup_n:
            by_second.setdefault(int((int(seq) - warmup_n) // args.rate), []).append(ns / 1e9)
    trend = [ms(sorted(v), 0.5) for _, v in sorted(by_second.items())]
    ack = sorted(sent["ack_latency"])
    lag = sorted(sent["lag"])
    p50, p99 = ms(latency, 0.5), ms(latency, 0.99)
    print(
        f"dispatch: p50 {p50:6.2f} ms  p90 {ms(latency, 0.9):6.2f} ms  p99 {p99:6.2f} ms  "
        f"max {ms(latency, 1.0):7.2f} ms   ({len(latency)} runs at "
        f"{sent['achieved_rate']:.0f}/s; targets p50 <= {TARGET_P50_MS:g}, "
        f"p99 <= {TARGET_P99_MS:g})"
    )
    print("p50 by second: " + " ".join(f"{v:.1f}" for v in trend) + " ms")
    print(
        f"SendEvent reply: p50 {ms(ack, 0.5):6.2f} ms  p99 {ms(ack, 0.99):6.2f} ms  "
        f"max {ms(ack, 1.0):7.2f} ms"
    )
    print(f"schedule lag: p99 {ms(lag, 0.99):.2f} ms  max {ms(lag, 1.0):.2f} ms (load generator)")
    print(
        f"CPU during the load: server {cores['server']:.2f} cores, "
        f"worker {cores['worker']:.2f} cores, machine load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"runs: {len(sent['acked'])} acknowledged, {report['received']} run requests, "
        f"{succeeded} SUCCESS"
    )
    for failure in failures[:20]:
        print(f"ERROR {failure}", file=sys.stderr)

    harness.emit(
        {
            "bench": "dispatch_latency",
            "rate": args.rate,
            "seconds": args.seconds,
            "runs": len(latency),
            "achieved_rate": sent["achieved_rate"],
            "p50_ms": p50,
            "p90_ms": ms(latency, 0.9),
            "p99_ms": p99,
            "max_ms": ms(latency, 1.0),
            "target_p50_ms": TARGET_P50_MS,
            "target_p99_ms": TARGET_P99_MS,
            "p50_by_second_ms": [round(v, 3) for v in trend],
            "send_p50_ms": ms(ack, 0.5),
            "send_p99_ms": ms(ack, 0.99),
            "lag_p99_ms": ms(lag, 0.99),
            "server_cores": cores["server"],
            "acked": len(sent["acked"]),
            "stored": succeeded,
            "errors": len(failures),
        }
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
