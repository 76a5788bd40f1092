"""SendEvents throughput: batches of 1,000 events, one call at a time.

    .venv/bin/python bench/send_events.py [--batch 1000] [--seconds 10] [--server-ids]

Starts the real server as a subprocess on 127.0.0.1 (a fresh SQLite file, one
event-triggered job matching the events, so each event also creates a run) and
from a separate load process sends SendEvents calls back to back for
`--seconds`. Each event carries its own id, as the Python client sends them
(the next call's request is built while a call is in flight; `--server-ids`
sends one request without ids again and again, and the server assigns them).
Prints events/s (target >= 50,000).

Then a last round SIGKILLs the server in the middle of the load, restarts it
on the same file and requires every event any call acknowledged to be stored
(ListEvents), and a sample to have its run (GetEvent). Exits non-zero on
errors only, never on a missed target.
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


def load(
    address: str, batch: int, seconds: float, client_ids: bool, stop_on_error: bool = False
) -> dict[str, Any]:
    """Runs in its own process (see harness.load_process)."""
    return asyncio.run(_drive(address, batch, seconds, client_ids, stop_on_error))


async def _drive(
    address: str, batch: int, seconds: float, client_ids: bool, stop_on_error: bool
) -> dict[str, Any]:
    payload = struct_pb2.Value()
    payload.struct_value.update({"orderId": "o_1234567890", "total": 42.5, "items": [1, 2, 3]})
    prefix = f"{random.getrandbits(32):08x}"

    def request(call: int) -> event_service_pb2.SendEventsRequest:
        return event_service_pb2.SendEventsRequest(
            events=[
                event_pb2.EventInput(
                    name=EVENT_NAME,
                    payload=payload,
                    id=f"{prefix}-{call}-{i}" if client_ids else "",
                )
                for i in range(batch)
            ]
        )

    shared = None if client_ids else request(0)
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
        following = shared or request(calls)
        while time.perf_counter() - start < seconds:
            calls += 1
            sent_at = time.perf_counter()
            reply = asyncio.ensure_future(stub.SendEvents(following, timeout=harness.RPC_TIMEOUT))
            if shared is None:
                following = request(calls)  # while the call is in flight
            try:
                answer = await reply
            except grpc.aio.AioRpcError as exc:
                key = f"{exc.code().name}: {exc.details()}"
                errors[key] = errors.get(key, 0) + 1
                if stop_on_error:
                    break
                continue
            call_seconds.append(time.perf_counter() - sent_at)
            acked.extend(e.id for e in answer.events)
        elapsed = time.perf_counter() - start

    call_seconds.sort()
    return {
        "events_per_s": len(acked) / elapsed,
        "calls": calls,
        "acked": len(acked),
        "ids": acked,
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
        "--server-ids",
        action="store_true",
        help="send no ids, so that the server assigns them (the Python client sends them)",
    )
    parser.add_argument(
        "--kill-after", type=float, default=1.5, help="seconds into the durability round"
    )
    args = parser.parse_args()
    harness.exit_on_sigterm()
    failures: list[str] = []

    with tempfile.TemporaryDirectory(prefix="tripwire-bench-") as tmp:
        work = Path(tmp)
        with harness.tripwire_server(work / "bench.db", work) as server:
            harness.register_job(server.address, JOB_ID, [EVENT_NAME])
            client_ids = not args.server_ids
            with harness.load_process() as pool:
                result = pool.submit(
                    load, server.address, args.batch, args.seconds, client_ids
                ).result()
                failures += [f"{n} x {error}" for error, n in result["errors"].items()]
                # The durability round: kill -9 in the middle of the load.
                killed = pool.submit(
                    load, server.address, args.batch, args.kill_after + 2.0, client_ids, True
                )
                time.sleep(args.kill_after)
                server.kill9()
                during = killed.result()
            server.start()
            stored = harness.stored_ids(server.address, EVENT_NAME)
            acked = [*result["ids"], *during["ids"]]
            failures += harness.missing(acked, stored)
            failures += harness.check_sample(server.address, result["sample"], JOB_ID)
        if failures:
            print((work / "tripwire.stderr").read_text()[-4000:], file=sys.stderr)

    print(
        f"send_events: {result['events_per_s']:9.0f} events/s "
        f"(target >= {TARGET_EVENTS_PER_S})  {result['calls']} calls of {args.batch}  "
        f"p50 {result['p50_ms']:.1f} ms  p99 {result['p99_ms']:.1f} ms per call"
    )
    kept = len(acked) - len(harness.missing_ids(acked, stored))
    print(
        f"    durable: {len(acked)} acknowledged ({during['acked']} in the round killed "
        f"mid-load), {kept} of them stored after kill -9"
    )
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
            "acked": len(acked),
            "stored": kept,
            "errors": len(failures),
        }
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
