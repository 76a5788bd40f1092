"""SendEvent throughput of tripwire against a bare grpc.aio echo server.

    .venv/bin/python bench/send_event.py [--concurrency 64] [--warmup 5] [--seconds 10]
                                         [--rounds 4] [--server-ids]
                                         [--event-loop uvloop|asyncio]

Starts bench/echo_server.py and the real server (a fresh SQLite file, one
event-triggered job matching the events, so each event also creates a run) as
subprocesses on 127.0.0.1. A separate load process keeps `--concurrency`
SendEvent calls in flight against each: `--warmup` seconds first, then
`--seconds` measured, split into `--rounds` that alternate between the two
servers so that a busy neighbour slows both alike. Each event carries its own
id, as the Python client sends them (`--server-ids`: the server assigns them,
which spares it the lookup of a known id). Prints calls/s for both and
tripwire/echo (target >= 0.8). Both servers run on the same event loop
(`--event-loop`, uvloop by default as the server's own default). The load
process and the server share the machine: when the echo server and the load
together keep both cores busy, the echo figure is bound by the machine too.

So that durability is not cheated, a last round keeps the load on tripwire and
SIGKILLs the server in the middle of it (calls in flight then fail), restarts
it on the same file, and requires every event any round acknowledged to be
stored (ListEvents) and a sample to have its run (GetEvent). Exits non-zero on
errors only, never on a missed target.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import harness
from google.protobuf import struct_pb2
from tripwire.v1 import event_pb2, event_service_pb2, event_service_pb2_grpc

EVENT_NAME = "bench.user.created"
JOB_ID = "bench-on-user-created"
TARGET_RATIO = 0.8
SAMPLE = 200


@dataclass(frozen=True)
class Load:
    """One measurement, sent to the load process."""

    address: str
    concurrency: int
    warmup: float
    seconds: float
    # Without one, every call sends the same request and the server assigns
    # the id; with one, ids are "<id_prefix><caller>-<n>" as a client would send.
    id_prefix: str | None
    # A caller stops at its first failed call (the server was killed).
    stop_on_error: bool = False


@dataclass
class Totals:
    calls: int = 0
    seconds: float = 0.0
    acked: int = 0
    ids: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    sample: list[str] = field(default_factory=list)

    def add(self, result: dict[str, Any]) -> None:
        self.calls += result["calls"]
        self.seconds += result["seconds"]
        self.acked += result["acked"]
        self.ids += result["ids"]
        self.latencies += result["latencies"]
        self.errors.update(result["errors"])
        self.sample += result["sample"]

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    def latency_ms(self, fraction: float) -> float:
        return 1000 * harness.percentile(sorted(self.latencies), fraction)


def load(spec: Load) -> dict[str, Any]:
    """Runs in the load process: it must not share a GIL with the server, nor
    with the bench's bookkeeping."""
    return asyncio.run(_drive(spec))


async def _drive(spec: Load) -> dict[str, Any]:
    payload = struct_pb2.Value()
    payload.struct_value.update({"userId": "u_1234567890", "plan": "pro", "referrer": None})
    shared = event_service_pb2.SendEventRequest(
        event=event_pb2.EventInput(name=EVENT_NAME, payload=payload)
    )
    loop = asyncio.get_running_loop()
    acked: list[str] = []
    errors: collections.Counter[str] = collections.Counter()
    latencies: list[float] = []

    async with grpc.aio.insecure_channel(spec.address) as channel:
        stub = event_service_pb2_grpc.EventServiceStub(channel)
        await channel.channel_ready()
        start = loop.time()
        measure_from, end = start + spec.warmup, start + spec.warmup + spec.seconds

        async def caller(worker: int) -> None:
            n = 0
            while (sent_at := loop.time()) < end:
                request = shared
                if spec.id_prefix is not None:
                    event = event_pb2.EventInput(
                        name=EVENT_NAME, payload=payload, id=f"{spec.id_prefix}{worker}-{n}"
                    )
                    request = event_service_pb2.SendEventRequest(event=event)
                n += 1
                try:
                    reply = await stub.SendEvent(request, timeout=harness.RPC_TIMEOUT)
                except grpc.aio.AioRpcError as exc:
                    errors[f"{exc.code().name}: {exc.details()}"] += 1
                    if spec.stop_on_error:
                        return
                    continue
                done_at = loop.time()
                acked.append(reply.event.id)
                if measure_from <= done_at < end:
                    latencies.append(done_at - sent_at)

        await asyncio.gather(*(caller(w) for w in range(spec.concurrency)))

    return {
        "calls": len(latencies),
        "seconds": spec.seconds,
        "acked": len(acked),
        "ids": acked,
        "latencies": latencies,
        "errors": dict(errors),
        "sample": random.sample(acked, min(SAMPLE, len(acked))),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds, per server")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured, per server")
    parser.add_argument(
        "--rounds", type=int, default=4, help="alternate the servers this many times"
    )
    parser.add_argument(
        "--server-ids",
        action="store_true",
        help="send no ids, so that the server assigns them (the Python client sends them)",
    )
    parser.add_argument(
        "--kill-after", type=float, default=1.5, help="seconds into the durability round"
    )
    parser.add_argument(
        "--event-loop", choices=("uvloop", "asyncio"), default="uvloop", help="of both servers"
    )
    args = parser.parse_args()
    harness.exit_on_sigterm()
    failures: list[str] = []
    totals = {"echo": Totals(), "tripwire": Totals()}

    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tripwire-bench-")))
        echo = stack.enter_context(harness.echo_server(work, args.event_loop))
        server = stack.enter_context(
            harness.tripwire_server(work / "bench.db", work, args.event_loop)
        )
        pool = stack.enter_context(harness.load_process())
        harness.register_job(server.address, JOB_ID, [EVENT_NAME])
        for round_ in range(args.rounds):
            for name, address in (("echo", echo.address), ("tripwire", server.address)):
                spec = Load(
                    address=address,
                    concurrency=args.concurrency,
                    warmup=args.warmup if round_ == 0 else 0.0,
                    seconds=args.seconds / args.rounds,
                    id_prefix=None if args.server_ids else f"r{round_}-",
                )
                result = pool.submit(load, spec).result()
                totals[name].add(result)
                rate = result["calls"] / result["seconds"]
                print(f"round {round_ + 1} {name:>8}: {rate:7.0f} calls/s", flush=True)

        measured = totals["tripwire"]
        for name, total in totals.items():
            failures += [f"{name}: {n} x {error}" for error, n in total.errors.items()]
        # The durability round: kill -9 in the middle of the load.
        killed = pool.submit(
            load,
            Load(
                address=server.address,
                concurrency=args.concurrency,
                warmup=0.0,
                seconds=args.kill_after + 2.0,
                id_prefix=None if args.server_ids else "k-",
                stop_on_error=True,
            ),
        )
        time.sleep(args.kill_after)
        server.kill9()
        during = killed.result()
        server.start()
        stored = harness.stored_ids(server.address, EVENT_NAME)
        acked = [*measured.ids, *during["ids"]]
        failures += harness.missing(acked, stored)
        failures += harness.check_sample(server.address, measured.sample, JOB_ID)
        if failures:
            print((work / "tripwire.stderr").read_text()[-4000:], file=sys.stderr)

    baseline = totals["echo"]
    ratio = measured.calls_per_s / baseline.calls_per_s if baseline.calls_per_s else 0.0
    for name, total in totals.items():
        print(
            f"{name:>9}: {total.calls_per_s:7.0f} calls/s  p50 {total.latency_ms(0.5):6.1f} ms"
            f"  p99 {total.latency_ms(0.99):6.1f} ms  errors {sum(total.errors.values())}"
        )
    print(f"    ratio: {ratio:.2f} tripwire/echo (target >= {TARGET_RATIO})")
    print(
        f" durable: {len(acked)} acknowledged ({during['acked']} in the round killed "
        f"mid-load), {len(acked) - len(harness.missing_ids(acked, stored))} of them stored "
        "after kill -9"
    )
    for failure in failures[:20]:
        print(f"ERROR {failure}", file=sys.stderr)

    harness.emit(
        {
            "bench": "send_event",
            "concurrency": args.concurrency,
            "echo_calls_per_s": baseline.calls_per_s,
            "tripwire_calls_per_s": measured.calls_per_s,
            "ratio": ratio,
            "target": TARGET_RATIO,
            "tripwire_p50_ms": measured.latency_ms(0.5),
            "tripwire_p99_ms": measured.latency_ms(0.99),
            "acked": len(acked),
            "stored": len(acked) - len(harness.missing_ids(acked, stored)),
            "errors": len(failures),
        }
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
