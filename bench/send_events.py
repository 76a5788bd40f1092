"""SendEvents throughput: batches of 1,000 events, one call at a time.

    .venv/bin/python bench/send_events.py [--batch 1000] [--seconds 10] [--client-ids]

Starts the real server as a subprocess on 127.0.0.1 (a fresh SQLite file, one
event-triggered job matching the events, so each event also creates a run) and
from a separate load process sends SendEvents calls back to back for
`--seconds`. Prints events/s (target >= 50,000).

Then SIGKILLs the server and restarts it on the same file: every acknowledged
event must be stored (ListEvents count) and a sample must have its run
(GetEvent). Exits non-zero on errors only, never on a missed target.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import harness
from google.protobuf import struct_pb2
from tripwire.v1 import event_pb2, event_service_pb2, event_service_pb2_grpc

EVENT_NAME = "bench.order.placed"
JOB_ID = "bench-on-order-placed"
TARGET_EVENTS_PER_S = 50_000
SAMPLE = 200


def load(address: str, batch: int, seconds: float, client_ids: bool) -> dict[str, Any]:
    """Runs in its own process (see harness.load_process)."""
    return asyncio.run(_drive(address, batch, seconds, client_ids))


async def _drive(address: str, batch: int, seconds: float, client_ids: bool) -> dict[str, Any]:
    payload = struct_pb2.Value()
    payload.struct_value.update({"orderId": "o_1234567890", "total": 42.5, "items": [1, 2, 3]})
    # Without --client-ids one request serves every call (the server assigns
    # the ids), so the client's cost of building 1,000 messages is not measured.
    shared = event_service_pb2.SendEventsRequest(
        events=[event_pb2.EventInput(name=EVENT_NAME, payload=payload) for _ in range(batch)]
    )
    acked: list[str] = []
    call_seconds: list[float] = []
    errors: dict[str, int] = {}

    async with grpc.aio.insecure_channel(
        address, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    ) as channel:
        stub = event_service_pb2_grpc.EventServiceStub(channel)
        await channel.channel_ready()
        start = time.perf_counter()
        calls = 0
        while time.perf_counter() - start < seconds:
            request = shared
            if client_ids:
                request = event_service_pb2.SendEventsRequest(
                    events=[
                        event_pb2.EventInput(name=EVENT_NAME, payload=payload, id=f"b{calls}-{i}")
                        for i in range(batch)
                    ]
                )
            calls += 1
            sent_at = time.perf_counter()
            try:
                reply = await stub.SendEvents(request, timeout=harness.RPC_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                key = f"{exc.code().name}: {exc.details()}"
                errors[key] = errors.get(key, 0) + 1
                continue
            call_seconds.append(time.perf_counter() - sent_at)
            acked.extend(e.id for e in reply.events)
        elapsed = time.perf_counter() - start

    call_seconds.sort()
    return {
        "events_per_s": len(acked) / elapsed,
        "calls": calls,
        "acked": len(acked),
        "sample": random.sample(acked, min(SAMPLE, len(acked))),
        "errors": errors,
        "p50_ms": 1000 * harness.percentile(call_seconds, 0.50),
        "p99_ms": 1000 * harness.percentile(call_seconds, 0.99),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--client-ids", action="store_true", help="send ids as the Python client does"
    )
    args = parser.parse_args()
    harness.exit_on_sigterm()
    failures: list[str] = []

    with tempfile.TemporaryDirectory(prefix="tripwire-bench-") as tmp:
        work = Path(tmp)
        with harness.tripwire_server(work / "bench.db", work) as server:
            harness.register_job(server.address, JOB_ID, [EVENT_NAME])
            with harness.load_process() as pool:
                result = pool.submit(
                    load, server.address, args.batch, args.seconds, args.client_ids
                ).result()
            server.kill9()
            server.start()
            stored = harness.count_events(server.address, EVENT_NAME)
            failures += harness.check_sample(server.address, result["sample"], JOB_ID)
        failures += [f"{n} x {error}" for error, n in result["errors"].items()]
        if stored != result["acked"]:
            failures.append(f"{result['acked']} events acknowledged but {stored} stored")
        if failures:
            print((work / "tripwire.stderr").read_text()[-4000:], file=sys.stderr)

    print(
        f"send_events: {result['events_per_s']:9.0f} events/s "
        f"(target >= {TARGET_EVENTS_PER_S})  {result['calls']} calls of {args.batch}  "
        f"p50 {result['p50_ms']:.1f} ms  p99 {result['p99_ms']:.1f} ms per call"
    )
    print(f"    durable: {result['acked']} acknowledged, {stored} stored after kill -9")
    for failure in failures[:20]:
        print(f"ERROR {failure}", file=sys.stderr)
    harness.emit(
        {
            "bench": "send_events",
            "batch": args.batch,
            "events_per_s": result["events_per_s"],
            "target": TARGET_EVENTS_PER_S,
            "p50_ms": result["p50_ms"],
            "p99_ms": result["p99_ms"],
            "acked": result["acked"],
            "stored": stored,
            "errors": len(failures),
        }
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
