"""The Celery app of bench/runs_throughput.py: one trivial task, Redis broker and results.

    cd <repo> && .venv/bin/celery -A bench.celery_tasks worker --pool=prefork --concurrency=2

Broker and result backend are Redis on 127.0.0.1:6379, database 14 (not 15, which
bench/celery_send.py uses, so the two can run side by side and this bench may clear
what it wrote). `BENCH_CELERY_BROKER` and `BENCH_CELERY_QUEUE` override the URL and the
queue; the bench sets both for its worker and its producer.
"""

from __future__ import annotations

import os

from celery import Celery

BROKER = os.environ.get("BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/14")
QUEUE = os.environ.get("BENCH_CELERY_QUEUE", "tripwire-bench-runs")

app = Celery("tripwire-bench-runs", broker=BROKER, backend=BROKER)
app.conf.update(
    task_default_queue=QUEUE,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    # Results are read once by the bench, then deleted with the database's keys.
    result_expires=3600,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="bench.noop")
def noop(i: int) -> int:
    """The trivial function: what tripwire's bench runs as its one io.run_task."""
    return i
