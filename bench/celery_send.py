"""Baseline: how fast a Python producer enqueues Celery tasks on Redis.

    .venv/bin/python bench/celery_send.py [--threads 64] [--warmup 5] [--seconds 10]

The nearest thing to SendEvent in the usual Python stack: `send_task` of one
small task to the Redis broker on 127.0.0.1:6379 (database 15, a queue named
for this run and deleted after), from `--threads` threads of one separate load
process, no worker. Redis acknowledges from memory (no fsync per task), so
this is a ceiling for comparison, not a like-for-like durable write. Checks
that the queue holds every acknowledged task. Without Redis it prints
"skipped" and exits 0; non-zero on errors only.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
from typing import Any

import harness

REDIS_HOST, REDIS_PORT, REDIS_DB = "127.0.0.1", 6379, 15
BROKER = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"


def redis_is_up() -> bool:
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=1.0):
            return True
    except OSError:
        return False


def load(queue: str, threads: int, warmup: float, seconds: float) -> dict[str, Any]:
    """Runs in the load process."""
    from celery import Celery

    app = Celery("tripwire-bench", broker=BROKER)
    app.conf.broker_pool_limit = threads
    payload = {"userId": "u_1234567890", "plan": "pro", "referrer": None}
    start = time.perf_counter()
    measure_from, end = start + warmup, start + warmup + seconds
    counts = [0] * threads
    sent = [0] * threads
    errors: list[str] = []

    def producer(index: int) -> None:
        while time.perf_counter() < end:
            try:
                app.send_task("bench.user_created", args=[payload], queue=queue)
            except Exception as exc:  # report, keep the load going
                errors.append(repr(exc))
                continue
            sent[index] += 1
            if measure_from <= time.perf_counter() < end:
                counts[index] += 1

    workers = [threading.Thread(target=producer, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=warmup + seconds + harness.RPC_TIMEOUT)
    app.close()
    return {"calls_per_s": sum(counts) / seconds, "acked": sum(sent), "errors": errors}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    harness.exit_on_sigterm()
    if not redis_is_up():
        print(f"celery_send: skipped, no Redis on {REDIS_HOST}:{REDIS_PORT}")
        harness.emit({"bench": "celery_send", "skipped": True})
        return 0

    import redis

    queue = f"tripwire-bench-{os.getpid()}"
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    try:
        with harness.load_process() as pool:
            result = pool.submit(load, queue, args.threads, args.warmup, args.seconds).result()
        stored = client.llen(queue)
    finally:
        # The queue and the bindings kombu keeps beside it.
        client.delete(queue, *client.scan_iter(match=f"_kombu.binding*.{queue}"))
        client.close()

    failures = [f"{result['errors'].count(e)} x {e}" for e in sorted(set(result["errors"]))]
    if stored != result["acked"]:
        failures.append(f"{result['acked']} tasks acknowledged but {stored} queued")
    print(
        f"celery_send: {result['calls_per_s']:7.0f} tasks/s  "
        f"({args.threads} threads, Redis broker, no fsync)"
    )
    print(f"    queued: {result['acked']} acknowledged, {stored} in the queue")
    for failure in failures[:20]:
        print(f"ERROR {failure}", file=sys.stderr)
    harness.emit(
        {
            "bench": "celery_send",
            "threads": args.threads,
            "calls_per_s": result["calls_per_s"],
            "acked": result["acked"],
            "stored": stored,
            "errors": len(failures),
        }
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
