"""SendEvent throughput of tripwire against a bare grpc.aio echo server.

    .venv/bin/python bench/send_event.py [--concurrency 64] [--warmup 5] [--seconds 10]
                                         [--client-ids]

Starts bench/echo_server.py, then the real server (a fresh SQLite file, one
event-triggered job matching the events, so each event also creates a run), each
as a subprocess on 127.0.0.1. A separate load process keeps `--concurrency`
SendEvent calls in flight for `--warmup` seconds, then counts the calls answered
during `--seconds` more. Prints calls/s for both and tripwire/echo (target >= 0.8).

So that durability is not cheated, the tripwire server is then SIGKILLed and
restarted on the same file: every acknowledged event must be stored (ListEvents
count) and a sample must have its run (GetEvent). Exits non-zero on errors only,
never on a missed target.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import sys
import tempfile
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


def load(
    address: str, concurrency: int, warmup: float, seconds: float, client_ids: bool
) -> dict[str, Any]:
    """Runs in its own process: the load generator must not share a GIL with
    the server, nor with the bench's bookkeeping."""
    return asyncio.run(_drive(address, concurrency, warmup, seconds, client_ids))


async def _drive(
    address: str, concurrency: int, warmup: float, seconds: float, client_ids: bool
) -> dict[str, Any]:
    payload = struct_pb2.Value()
    payload.struct_value.update({"userId": "u_1234567890", "plan": "pro", "referrer": None})
    shared = event_service_pb2.SendEventRequest(
        event=event_pb2.EventInput(name=EVENT_NAME, payload=payload)
    )
    loop = asyncio.get_running_loop()
    acked: list[str] = []
    errors: collections.Counter[str] = collections.Counter()
    latencies: list[float] = []
    measured = 0

    async with grpc.aio.insecure_channel(address) as channel:
        stub = event_service_pb2_grpc.EventServiceStub(channel)
        await channel.channel_ready()
        start = loop.time()
        measure_from, end = start + warmup, start + warmup + seconds

        async def caller(worker: int) -> None:
            nonlocal measured
            n = 0
            while (sent_at := loop.time()) < end:
                request = shared
                if client_ids:
                    request = event_service_pb2.SendEventRequest(
                        event=event_pb2.EventInput(
                            name=EVENT_NAME, payload=payload, id=f"bench-{worker}-{n}"
                        )
                    )
                n += 1
                try:
                    reply = await stub.SendEvent(request, timeout=harness.RPC_TIMEOUT)
                except grpc.aio.AioRpcError as exc:
                    errors[f"{exc.code().name}: {exc.details()}"] += 1
                    continue
                done_at = loop.time()
                acked.append(reply.event.id)
                if measure_from <= done_at < end:
                    measured += 1
                    latencies.append(done_at - sent_at)

        await asyncio.gather(*(caller(w) for w in range(concurrency)))

    latencies.sort()
    return {
        "calls_per_s": measured / seconds,
        "acked": len(acked),
        "sample": random.sample(acked, min(SAMPLE, len(acked))),
        "errors": dict(errors),
        "p50_ms": 1000 * harness.percentile(latencies, 0.50),
        "p99_ms": 1000 * harness.percentile(latencies, 0.99),
    }


def run_load(address: str, args: argparse.Namespace) -> dict[str, Any]:
    with harness.load_process() as pool:
        return pool.submit(
            load, address, args.concurrency, args.warmup, args.seconds, args.client_ids
        ).result()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--client-ids", action="store_true", help="send ids as the Python client does"
    )
    args = parser.parse_args()
    harness.exit_on_sigterm()
    failures: list[str] = []

    with tempfile.TemporaryDirectory(prefix="tripwire-bench-") as tmp:
        work = Path(tmp)
        with harness.echo_server(work) as echo:
            baseline = run_load(echo.address, args)
        with harness.tripwire_server(work / "bench.db", work) as server:
            harness.register_job(server.address, JOB_ID, [EVENT_NAME])
            measured = run_load(server.address, args)
            server.kill9()
            server.start()
            stored = harness.count_events(server.address, EVENT_NAME)
            failures += harness.check_sample(server.address, measured["sample"], JOB_ID)
        if failures or measured["errors"] or baseline["errors"]:
            print(f"server log: {work / 'tripwire.stderr'}", file=sys.stderr)
            print(Path(work / "tripwire.stderr").read_text()[-4000:], file=sys.stderr)

    ratio = measured["calls_per_s"] / baseline["calls_per_s"]
    for name, result in (("echo", baseline), ("tripwire", measured)):
        print(
            f"{name:>9}: {result['calls_per_s']:9.0f} calls/s  "
            f"p50 {result['p50_ms']:6.1f} ms  p99 {result['p99_ms']:6.1f} ms  "
            f"errors {sum(result['errors'].values())}"
        )
        for error, count in result["errors"].items():
            failures.append(f"{name}: {count} x {error}")
    print(f"    ratio: {ratio:.2f} tripwire/echo (target >= {TARGET_RATIO})")
    print(f" durable: {measured['acked']} acknowledged, {stored} stored after kill -9")
    if stored != measured["acked"]:
        failures.append(f"{measured['acked']} events acknowledged but {stored} stored")
    for failure in failures[:20]:
        print(f"ERROR {failure}", file=sys.stderr)

    harness.emit(
        {
            "bench": "send_event",
            "concurrency": args.concurrency,
            "echo_calls_per_s": baseline["calls_per_s"],
            "tripwire_calls_per_s": measured["calls_per_s"],
            "ratio": ratio,
            "target": TARGET_RATIO,
            "tripwire_p50_ms": measured["p50_ms"],
            "tripwire_p99_ms": measured["p99_ms"],
            "acked": measured["acked"],
            "stored": stored,
            "errors": len(failures),
        }
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
