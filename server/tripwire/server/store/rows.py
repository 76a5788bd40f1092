"""Row <-> record conversion for the SQLite backend."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from ..models import (
    Event,
    EventStatus,
    Job,
    LogEntry,
    Page,
    Run,
    RunStatus,
    Task,
    TaskKind,
    TaskStatus,
)

T = TypeVar("T")


# NaN and Infinity are refused at the edge, naming the field; never stored as non-JSON.
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


# The run statuses that are not terminal, for SQL `status IN ...`.
ACTIVE = "('QUEUED', 'EXECUTING', 'WAITING')"


def find_run(conn: Any, env: str, run_id: str) -> Run | None:
    row = conn.execute(
        f"SELECT {RUN_COLUMNS} FROM runs WHERE id = ? AND env = ?", (run_id, env)
    ).fetchone()
    return None if row is None else run_from_row(row)


def dumps(value: Any) -> str:
    if not value and isinstance(value, dict):
        return "{}"  # the usual context
    return _ENCODE(value)


def loads_or_none(text: str | None) -> Any:
    return None if text is None else json.loads(text)


EVENT_COLUMNS = (
    "seq, env, id, name, source, payload, context, timestamp, deliver_at, delivered_at, "
    "cancelled_at, created_at, status, account_id"
)


def event_from_row(row: Any) -> Event:
    return Event(
        seq=row[0],
        env=row[1],
        id=row[2],
        name=row[3],
        source=row[4],
        payload=json.loads(row[5]),
        context=json.loads(row[6]),
        timestamp=row[7],
        deliver_at=row[8],
        delivered_at=row[9],
        cancelled_at=row[10],
        created_at=row[11],
        status=EventStatus(row[12]),
        account_id=row[13],
    )


def event_params(e: Event) -> tuple[Any, ...]:
    return (
        e.env,
        e.id,
        e.name,
        e.source,
        dumps(e.payload),
        dumps(e.context),
        e.timestamp,
        e.deliver_at,
        e.delivered_at,
        e.cancelled_at,
        e.created_at,
        e.status.value,
        e.account_id,
    )


RUN_COLUMNS = (
    "seq, env, id, job_id, job_version, event_id, status, attempt, created_at, updated_at, "
    "started_at, completed_at, output, error, validation_errors, account_id, wait_until, worker_id"
)


def run_from_row(row: Any) -> Run:
    return Run(
        seq=row[0],
        env=row[1],
        id=row[2],
        job_id=row[3],
        job_version=row[4],
        event_id=row[5],
        status=RunStatus(row[6]),
        attempt=row[7],
        created_at=row[8],
        updated_at=row[9],
        started_at=row[10],
        completed_at=row[11],
        output=loads_or_none(row[12]),
        error=loads_or_none(row[13]),
        validation_errors=loads_or_none(row[14]) or [],
        account_id=row[15],
        wait_until=row[16],
        # Files written before runs said whose they were kept it after the run ended.
        worker_id=(row[17] or "") if row[6] == RunStatus.EXECUTING.value else "",
    )


def run_params(r: Run) -> tuple[Any, ...]:
    return (
        r.env,
        r.id,
        r.job_id,
        r.job_version,
        r.event_id,
        r.status.value,
        r.attempt,
        r.created_at,
        r.updated_at,
        r.started_at,
        r.completed_at,
        None if r.output is None else dumps(r.output),
        None if r.error is None else dumps(r.error),
        dumps(r.validation_errors) if r.validation_errors else None,
        r.account_id,
        r.wait_until,
    )


JOB_COLUMNS = (
    "v.env, v.id, v.version, v.name, v.trigger, v.enabled, v.concurrency_limit, v.retry, "
    "v.max_duration_seconds, v.log_level, v.created_at, v.updated_at, "
    "j.latest_version = v.version, j.next_fire"
)


def job_from_row(row: Any) -> Job:
    return Job(
        env=row[0],
        id=row[1],
        version=row[2],
        name=row[3],
        trigger=json.loads(row[4]),
        enabled=bool(row[5]),
        concurrency_limit=row[6],
        retry=loads_or_none(row[7]),
        max_duration_seconds=row[8],
        log_level=row[9],
        created_at=row[10],
        updated_at=row[11],
        latest=bool(row[12]),
        next_fire_at=row[13] if row[12] else None,
    )


def job_params(j: Job) -> tuple[Any, ...]:
    return (
        j.env,
        j.id,
        j.version,
        j.name,
        dumps(j.trigger),
        int(j.enabled),
        j.concurrency_limit,
        None if j.retry is None else dumps(j.retry),
        j.max_duration_seconds,
        j.log_level,
        j.created_at,
        j.updated_at,
    )


TASK_COLUMNS = (
    "id, run_id, parent_id, key, idempotency_key, kind, name, status, position, attempts, "
    "params, output, error, retry, started_at, completed_at, retry_at, try_offset"
)


def task_from_row(row: Any) -> Task:
    return Task(
        id=row[0],
        run_id=row[1],
        parent_id=row[2],
        key=row[3],
        idempotency_key=row[4],
        kind=TaskKind(row[5]),
        name=row[6],
        status=TaskStatus(row[7]),
        position=row[8],
        attempts=row[9],
        params=loads_or_none(row[10]),
        output=loads_or_none(row[11]),
        error=loads_or_none(row[12]),
        retry=loads_or_none(row[13]),
        started_at=row[14],
        completed_at=row[15],
        retry_at=row[16],
        try_offset=row[17],
    )


def task_params(t: Task) -> tuple[Any, ...]:
    return (
        t.id,
        t.run_id,
        t.parent_id,
        t.key,
        t.idempotency_key,
        t.kind.value,
        t.name,
        t.status.value,
        t.position,
        t.attempts,
        None if t.params is None else dumps(t.params),
        None if t.output is None else dumps(t.output),
        None if t.error is None else dumps(t.error),
        None if t.retry is None else dumps(t.retry),
        t.started_at,
        t.completed_at,
        t.retry_at,
        t.try_offset,
    )


def log_from_row(row: Any) -> LogEntry:
    return LogEntry(
        seq=row[0], level=row[1], message=row[2], data=loads_or_none(row[3]), time=row[4]
    )


def page(found: list[T], limit: int, cursor: Callable[[T], str]) -> Page[T]:
    """The first `limit` of `found` (which has one extra row if there are more)."""
    if len(found) > limit:
        return Page(found[:limit], cursor(found[limit - 1]))
    return Page(found, "")
