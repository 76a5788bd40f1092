"""End-to-end runs/s: tripwire with one Python SDK worker against Celery on Redis.

    .venv/bin/python bench/runs_throughput.py [--runs 5000] [--batch 500] [--capacity 200]
        [--warmup 500] [--celery-pool solo] [--celery-concurrency 1] [--celery-prefetch 64]
        [--only tripwire|celery]

tripwire: the server as a subprocess on 127.0.0.1 (a fresh SQLite file) and ONE
worker process running the SDK's `Worker` (capacity `--capacity`), serving a
job whose handler does one `io.run_task` of a trivial function (a plain
function, so it runs in the SDK's thread pool, as a user's blocking code
would) and returns its output. A separate load process sends the events with
SendEvents, `--batch` at a time, as fast as the calls return, then polls
ListRuns until no run is queued, executing or waiting; the figure is `--runs`
divided by the time from the first send to the moment all runs are SUCCESS.

Celery: a worker process, `celery -A bench.celery_tasks worker` with the given
pool, concurrency and prefetch multiplier (default `--pool=solo`, prefetch 64:
the fastest configuration found on a 2-core machine for this trivial task),
Redis as broker and result backend (127.0.0.1:6379, database 14). The load
process calls `noop.delay(i)` `--runs` times and waits for every result
(`ResultSet.join_native`); same figure, same N. Redis acknowledges from memory
(no fsync), tripwire commits every step to SQLite with fsync: the comparison
favours Celery on durability.

`--warmup` runs (tasks) go through each system first and are not counted. Prints
runs/s for both and tripwire/celery (target >= 2). Kills every process it
started and deletes the Redis keys it created. Without Redis the Celery half
is skipped. Exits non-zero on errors only, never on a missed target.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import queue
import signal
import socket
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
from tripwire.v1 import (
    event_service_pb2,
    event_service_pb2_grpc,
    run_pb2,
    run_service_pb2,
    run_service_pb2_grpc,
)

EVENT_NAME = "bench.runs"
JOB_ID = "bench-runs"
TARGET_RATIO = 2.0
REDIS_HOST, REDIS_PORT, REDIS_DB = "127.0.0.1", 6379, 14
BROKER = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
REPO = harness.BENCH.parent
DONE_DEADLINE = 300.0
POLL = 0.02
_ACTIVE = (run_pb2.RUN_STATUS_QUEUED, run_pb2.RUN_STATUS_EXECUTING, run_pb2.RUN_STATUS_WAITING)


# -- the tripwire worker process ---------------------------------------------------------


def serve_sdk_worker(address: str, capacity: int) -> int:
    """The SDK worker users run. Prints "ready" once connected; drains when stdin closes."""
    from tripwire.client import Client, Worker, event_trigger

    client = Client("bench", url=address)

    def noop(i: int) -> int:
        return i

    @client.define_job(id=JOB_ID, version="1.0.0", trigger=event_trigger(EVENT_NAME))
    async def handler(payload: Any, io: Any, ctx: Any) -> Any:
        i = payload["i"]
        return await io.run_task("noop", lambda: noop(i))

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        threading.Thread(
            target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(stop.set)), daemon=True
        ).start()
        async with Worker(client, capacity=capacity, shutdown_timeout=5.0) as worker:
            await asyncio.wait_for(worker.wait_connected(), harness.START_DEADLINE)
            print("ready", flush=True)
            await stop.wait()

    asyncio.run(serve())
    return 0


class Child:
    """A helper process in its own process group that prints "ready" when it can work;
    `with` kills the whole group."""

    def __init__(
        self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.log_path = log_path
        with log_path.open("a") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                cwd=REPO,
                env=env,
                start_new_session=True,
            )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_ready(self) -> None:
        try:
            line = self.lines.get(timeout=harness.START_DEADLINE)
        except queue.Empty:
            line = None
        if line != "ready":
            raise RuntimeError(
                f"{self.name} did not start (got {line!r}):\n"
                + self.log_path.read_text(errors="replace")[-4000:]
            )

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """SIGTERM to the group, SIGKILL if it lingers."""
        # Children of the leader (prefork) may outlive it: the whole group goes.
        harness.stop_group(self.proc, signal.SIGTERM, grace=10.0)


# -- the load process: tripwire ----------------------------------------------------------


@dataclass(frozen=True)
class TripwireLoad:
    address: str
    runs: int
    batch: int
    warmup: int


def tripwire_load(spec: TripwireLoad) -> dict[str, Any]:
    return asyncio.run(_tripwire(spec))


async def _tripwire(spec: TripwireLoad) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    async with grpc.aio.insecure_channel(spec.address) as channel:
        events = event_service_pb2_grpc.EventServiceStub(channel)
        runs = run_service_pb2_grpc.RunServiceStub(channel)
        await channel.channel_ready()

        async def send(first: int, count: int) -> int:
            acked = 0
            for start in range(first, first + count, spec.batch):
                request = event_service_pb2.SendEventsRequest()
                for i in range(start, min(start + spec.batch, first + count)):
                    event = request.events.add(name=EVENT_NAME)
                    event.payload.struct_value.fields["i"].number_value = i
                reply = await events.SendEvents(request, timeout=harness.RPC_TIMEOUT)
                acked += len(reply.events)
            return acked

        async def active() -> bool:
            for status in _ACTIVE:
                page = await runs.ListRuns(
                    run_service_pb2.ListRunsRequest(job_id=JOB_ID, status=status, page_size=1),
                    timeout=harness.RPC_TIMEOUT,
                )
                if page.runs:
                    return True
            return False

        async def settle() -> bool:
            deadline = loop.time() + DONE_DEADLINE
            while await active():
                if loop.time() > deadline:
                    return False
                await asyncio.sleep(POLL)
            return True

        async def count(status: run_pb2.RunStatus.ValueType) -> int:
            total, token = 0, ""
            while True:
                page = await runs.ListRuns(
                    run_service_pb2.ListRunsRequest(
                        job_id=JOB_ID, status=status, page_size=1000, page_token=token
                    ),
                    timeout=harness.RPC_TIMEOUT,
                )
                total += len(page.runs)
                token = page.next_page_token
                if not token:
                    return total

        warm_acked = await send(0, spec.warmup)
        warm_settled = await settle()
        start = loop.time()
        acked = await send(spec.warmup, spec.runs)
        sent = loop.time()
        settled = await settle()
        end = loop.time()
        succeeded = await count(run_pb2.RUN_STATUS_SUCCESS)
        failed = await count(run_pb2.RUN_STATUS_FAILURE)

    return {
        "seconds": end - start,
        "send_seconds": sent - start,
        "acked": warm_acked + acked,
        "settled": warm_settled and settled,
        "succeeded": succeeded,
        "failed": failed,
    }


# -- the load process: Celery ------------------------------------------------------------


@dataclass(frozen=True)
class CeleryLoad:
    runs: int
    warmup: int


def celery_load(spec: CeleryLoad) -> dict[str, Any]:
    """The producer. The env (broker, queue) is set by the parent before spawning."""
    import celery_tasks
    from celery.result import ResultSet

    sent_at = 0.0

    def through(first: int, count: int) -> list[Any]:
        nonlocal sent_at
        results = ResultSet([celery_tasks.noop.delay(i) for i in range(first, first + count)])
        sent_at = time.perf_counter()
        outputs: list[Any] = results.join_native(timeout=DONE_DEADLINE, propagate=False)
        return outputs

    # The first result also waits for the worker to be up.
    warm = through(0, spec.warmup)
    start = time.perf_counter()
    outputs = through(spec.warmup, spec.runs)
    end = time.perf_counter()
    celery_tasks.app.close()
    expected = list(range(spec.warmup, spec.warmup + spec.runs))
    return {
        "seconds": end - start,
        "send_seconds": sent_at - start,
        "acked": len(warm) + len(outputs),
        "succeeded": sum(1 for got, want in zip(outputs, expected, strict=True) if got == want),
    }


# -- the bench ---------------------------------------------------------------------------


def cores(pids: dict[str, int], work: Any, *args: Any) -> tuple[dict[str, Any], dict[str, float]]:
    """`work(*args)`, and the cores each process used meanwhile."""
    before = {name: harness.cpu_seconds(pid) for name, pid in pids.items()}
    wall = time.monotonic()
    result: dict[str, Any] = work(*args)
    wall = time.monotonic() - wall
    return result, {
        name: (harness.cpu_seconds(pid) - before[name]) / wall for name, pid in pids.items()
    }


def redis_is_up() -> bool:
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=1.0):
            return True
    except OSError:
        return False


def run_tripwire(args: argparse.Namespace, work: Path, failures: list[str]) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        # Entered first, left last: the server and the worker are killed before the load.
        pool = stack.enter_context(harness.terminating_load_process())
        server = stack.enter_context(harness.tripwire_server(work / "bench.db", work))
        print(f"tripwire server pid {server.proc.pid if server.proc else '?'}", flush=True)
        argv = [sys.executable, __file__, "--sdk-worker", server.address]
        argv += ["--capacity", str(args.capacity)]
        worker = stack.enter_context(Child("the SDK worker", argv, work / "worker.stderr"))
        worker.wait_ready()
        spec = TripwireLoad(server.address, args.runs, args.batch, args.warmup)
        pids = {"server": server.proc.pid if server.proc else 0, "worker": worker.proc.pid}
        result, used = cores(pids, pool.apply, tripwire_load, (spec,))
        result["cores"] = used
        if not result["settled"]:
            failures.append(f"tripwire: runs still active {DONE_DEADLINE:.0f} s after sending")
        if result["acked"] != args.warmup + args.runs:
            failures.append(f"tripwire: {result['acked']} of {args.warmup + args.runs} acked")
        if result["succeeded"] != args.warmup + args.runs or result["failed"]:
            failures.append(
                f"tripwire: {result['succeeded']} runs SUCCESS and {result['failed']} FAILURE "
                f"of {args.warmup + args.runs}"
            )
        if failures:
            for name in ("tripwire.stderr", "worker.stderr"):
                print((work / name).read_text(errors="replace")[-3000:], file=sys.stderr)
    return result


def run_celery(args: argparse.Namespace, work: Path, failures: list[str]) -> dict[str, Any]:
    import redis

    queue_name = f"tripwire-bench-runs-{os.getpid()}"
    os.environ["BENCH_CELERY_BROKER"] = BROKER
    os.environ["BENCH_CELERY_QUEUE"] = queue_name
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    before = set(client.scan_iter(count=1000))
    celery = str(Path(sys.executable).with_name("celery"))
    argv = [celery, "-A", "bench.celery_tasks", "worker", "--loglevel=WARNING"]
    argv += [f"--pool={args.celery_pool}", f"--concurrency={args.celery_concurrency}"]
    argv += [f"--prefetch-multiplier={args.celery_prefetch}", "-Q", queue_name]
    argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    try:
        with (
            harness.terminating_load_process() as pool,
            Child("the celery worker", argv, work / "celery.stderr", dict(os.environ)) as worker,
        ):
            spec = CeleryLoad(args.runs, args.warmup)
            pids = {"worker": worker.proc.pid}
            result, used = cores(pids, pool.apply, celery_load, (spec,))
            result["cores"] = used
    finally:
        # Everything created since the start: the queue, results, kombu's bindings.
        created = [key for key in client.scan_iter(count=1000) if key not in before]
        for start in range(0, len(created), 1000):
            client.delete(*created[start : start + 1000])
        client.close()
    if result["succeeded"] != args.runs:
        failures.append(f"celery: {result['succeeded']} of {args.runs} results came back right")
        print((work / "celery.stderr").read_text(errors="replace")[-3000:], file=sys.stderr)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5000, help="measured runs, each system")
    parser.add_argument("--batch", type=int, default=500, help="events per SendEvents")
    parser.add_argument("--capacity", type=int, default=200, help="the SDK worker's capacity")
    parser.add_argument("--warmup", type=int, default=500, help="runs first, not measured")
    # The fastest of prefork (1, 2, 4 processes), threads and solo, prefetch 4 to 256,
    # measured on the 2-core machine: the trivial task gains nothing from a pool.
    parser.add_argument("--celery-pool", default="solo")
    parser.add_argument("--celery-concurrency", type=int, default=1)
    parser.add_argument("--celery-prefetch", type=int, default=64)
    parser.add_argument("--only", choices=("tripwire", "celery"), help="run one side only")
    parser.add_argument("--sdk-worker", metavar="ADDRESS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sdk_worker:
        return serve_sdk_worker(args.sdk_worker, args.capacity)

    harness.exit_on_sigterm()
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="tripwire-bench-") as tmp:
        work = Path(tmp)
        tw: dict[str, Any] = {"acked": 0, "succeeded": 0}
        tw_rate = celery_rate = 0.0
        if args.only != "celery":
            tw = run_tripwire(args, work, failures)
            tw_rate = args.runs / tw["seconds"]
            print(
                f"tripwire: {tw_rate:7.0f} runs/s  ({args.runs} runs in {tw['seconds']:.2f} s, "
                f"sent in {tw['send_seconds']:.2f} s; 1 SDK worker, capacity {args.capacity}, "
                f"SendEvents x{args.batch})\n"
                f"          CPU: server {tw['cores']['server']:.2f} cores, "
                f"SDK worker {tw['cores']['worker']:.2f} cores",
                flush=True,
            )
        if args.only == "tripwire":
            pass
        elif not redis_is_up():
            print(f"celery: skipped, no Redis on {REDIS_HOST}:{REDIS_PORT}")
        else:
            cr = run_celery(args, work, failures)
            celery_rate = args.runs / cr["seconds"]
            print(
                f"  celery: {celery_rate:7.0f} runs/s  ({args.runs} tasks in "
                f"{cr['seconds']:.2f} s, sent in {cr['send_seconds']:.2f} s; "
                f"--pool={args.celery_pool} "
                f"--concurrency={args.celery_concurrency} "
                f"--prefetch-multiplier={args.celery_prefetch}, Redis, no fsync)\n"
                f"          CPU: celery worker {cr['cores']['worker']:.2f} cores "
                "(its main process)"
            )

    ratio = tw_rate / celery_rate if celery_rate and tw_rate else 0.0
    if ratio:
        print(f"   ratio: {ratio:.2f} tripwire/celery (target >= {TARGET_RATIO:g})")
    print(f"machine load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    for failure in failures[:20]:
        print(f"ERROR {failure}", file=sys.stderr)
    harness.emit(
        {
            "bench": "runs_throughput",
            "runs": args.runs,
            "batch": args.batch,
            "capacity": args.capacity,
            "tripwire_runs_per_s": tw_rate,
            "celery_runs_per_s": celery_rate,
            "celery_pool": args.celery_pool,
            "celery_concurrency": args.celery_concurrency,
            "celery_prefetch": args.celery_prefetch,
            "ratio": ratio,
            "tripwire_server_cores": tw.get("cores", {}).get("server", 0.0),
            "target": TARGET_RATIO,
            "acked": tw["acked"],
            "stored": tw["succeeded"],
            "errors": len(failures),
        }
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
