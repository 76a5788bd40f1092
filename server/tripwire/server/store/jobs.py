"""SQLite operations on jobs and their schedules (part of the SQLite store)."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from .. import schedules, versions
from ..errors import AlreadyExists, FailedPrecondition, NotFound
from ..hub import Hub
from ..matching import JobIndex, run_spec
from ..models import (
    INTERNAL_SOURCE,
    INVOKE_EVENT,
    SCHEDULED_EVENT,
    Event,
    EventStatus,
    Job,
    NewEvent,
    Page,
    Run,
    RunSpec,
    RunStatus,
)
from . import rows
from .rows import ACTIVE, JOB_COLUMNS, RUN_COLUMNS, dumps
from .writer import Tx

log = logging.getLogger(__name__)
# How long a schedule whose next fire could not be computed waits to be tried again.
SCHEDULE_RETRY_MS = 60_000

T = TypeVar("T")
_JOB_FROM = "FROM job_versions v JOIN jobs j ON j.env = v.env AND j.id = v.id"


class JobOps:
    """Jobs, versions and schedules. Mixed into `SQLiteStore`, which provides the
    writer, the readers and the event/run helpers declared below."""

    hub: Hub
    index: JobIndex

    def _write(self, operation: Callable[[Tx], T], *, lazy: bool = False) -> asyncio.Future[T]:
        raise NotImplementedError

    async def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        raise NotImplementedError

    @staticmethod
    def _events_by_id(conn: sqlite3.Connection, env: str, ids: set[str]) -> dict[str, Event]:
        raise NotImplementedError

    def _new_run(self, event: Event, spec: RunSpec, now: int) -> Run:
        raise NotImplementedError

    def _insert_runs(self, tx: Tx, runs: Sequence[Run], events: Sequence[Event] = ()) -> None:
        raise NotImplementedError

    def _insert_event(self, tx: Tx, event: Event, *, or_ignore: bool = False) -> bool:
        raise NotImplementedError

    def _end_runs(
        self, tx: Tx, ids: Sequence[str], status: RunStatus, now: int, kind: str, message: str
    ) -> None:
        raise NotImplementedError

    # -- jobs -------------------------------------------------------------------

    async def register_job(self, job: Job, now: int, *, keep_enabled: bool = False) -> Job:
        """Upsert one version. `keep_enabled`: a version already stored keeps its
        enabled switch whatever `job` says (a worker's hello)."""
        return await self._write(lambda tx: self._register(tx, job, now, keep_enabled))

    async def register_jobs(
        self, jobs: Sequence[Job], now: int, *, keep_enabled: bool = False
    ) -> list[Job]:
        """Upsert several versions in one transaction: all of them or none."""
        return await self._write(
            lambda tx: [self._register(tx, job, now, keep_enabled) for job in jobs]
        )

    def _register(self, tx: Tx, job: Job, now: int, keep_enabled: bool) -> Job:
        conn = tx.conn
        old = conn.execute(
            "SELECT env, id, version, name, trigger, enabled, concurrency_limit, retry, "
            "max_duration_seconds, log_level, created_at FROM job_versions "
            "WHERE env = ? AND id = ? AND version = ?",
            (job.env, job.id, job.version),
        ).fetchone()
        job.created_at = old[-1] if old else now
        if old and keep_enabled:
            job.enabled = bool(old[5])
        job.updated_at = now
        params = rows.job_params(job)
        if old and keep_enabled and tuple(old) == params[:-1]:
            # A worker's hello with a version as stored (a reconnect, a restart of the
            # server): it keeps its place among the versions that differ only in
            # +build, so an old build's worker reconnecting does not take new events
            # back from the build registered after it.
            conn.execute(
                "UPDATE job_versions SET updated_at = ? WHERE env = ? AND id = ? AND version = ?",
                (now, job.env, job.id, job.version),
            )
        else:
            conn.execute(
                "INSERT OR REPLACE INTO job_versions (env, id, version, name, trigger, enabled, "
                "concurrency_limit, retry, max_duration_seconds, log_level, created_at, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                params,
            )
        if old and old[5] and not job.enabled:  # disabled as SetJobEnabled would
            self._abort_runs_of(tx, job.env, job.id, [job.version], now)
        self._refresh_head(tx, job.env, job.id, now)
        return self._job(conn, job.env, job.id, job.version)

    def _refresh_head(self, tx: Tx, env: str, job_id: str, now: int) -> None:
        """Point the job at its highest version and keep its schedule in step."""
        conn = tx.conn
        # Newest registration first: among versions of equal precedence (they differ
        # only in +build metadata, which semver ignores) the latest registered wins.
        # A registration is an INSERT OR REPLACE, which gives the row a rowid above
        # all others; SetJobEnabled's UPDATE keeps it, as does a hello's unchanged one.
        found = [
            r[0]
            for r in conn.execute(
                "SELECT version FROM job_versions WHERE env = ? AND id = ? ORDER BY rowid DESC",
                (env, job_id),
            )
        ]
        latest_version = max(found, key=lambda v: versions.parse(v, "version"))
        head = conn.execute(
            "SELECT schedule, anchor, next_fire FROM jobs WHERE env = ? AND id = ?", (env, job_id)
        ).fetchone()
        conn.execute(
            "INSERT INTO jobs (env, id, latest_version) VALUES (?, ?, ?) "
            "ON CONFLICT (env, id) DO UPDATE SET latest_version = excluded.latest_version",
            (env, job_id, latest_version),
        )
        latest = self._job(conn, env, job_id, latest_version)
        schedule = _schedule_of(latest)
        spec = dumps(schedule.__dict__) if schedule else None
        if head is not None and head[0] != spec and _same_plan(head[0], schedule):
            # Only catch_up changed: it decides what happens to missed ticks, not
            # when ticks are planned, so the grid, next fire and last fire stay.
            conn.execute(
                "UPDATE jobs SET schedule = ? WHERE env = ? AND id = ?", (spec, env, job_id)
            )
            latest = self._job(conn, env, job_id, latest_version)
        elif head is None or head[0] != spec:
            # A new or changed schedule starts from now; an unchanged one keeps
            # its next fire, so re-registering never resets or skips a tick.
            next_fire = schedules.first_fire(schedule, _dt(now)) if schedule else None
            conn.execute(
                "UPDATE jobs SET schedule = ?, anchor = ?, next_fire = ?, last_fire = NULL, "
                "retry_at = NULL, failed_at = NULL WHERE env = ? AND id = ?",
                (spec, now, _ms(next_fire) if next_fire else None, env, job_id),
            )
            latest = self._job(conn, env, job_id, latest_version)
        previous = self.index.get(env, job_id)
        self.index.put(latest)  # now: later writes of this transaction must see it
        tx.on_rollback(lambda: self.index.restore(env, job_id, previous))
        tx.after_commit(self.hub.timers)
        tx.after_commit(lambda: self.hub.job_changed(env, job_id))

    def _job(self, conn: sqlite3.Connection, env: str, job_id: str, version: str) -> Job:
        row = conn.execute(
            f"SELECT {JOB_COLUMNS} {_JOB_FROM} WHERE v.env = ? AND v.id = ? AND v.version = ?",
            (env, job_id, version),
        ).fetchone()
        return rows.job_from_row(row)

    @staticmethod
    def _latest_jobs(conn: sqlite3.Connection) -> list[Job]:
        cursor = conn.execute(
            f"SELECT {JOB_COLUMNS} {_JOB_FROM} WHERE v.version = j.latest_version"
        )
        return [rows.job_from_row(r) for r in cursor]

    async def get_job(self, env: str, job_id: str, version: str | None) -> Job | None:
        def query(conn: sqlite3.Connection) -> Job | None:
            sql = f"SELECT {JOB_COLUMNS} {_JOB_FROM} WHERE v.env = ? AND v.id = ? AND "
            sql += "v.version = ?" if version else "v.version = j.latest_version"
            row = conn.execute(sql, (env, job_id, version) if version else (env, job_id))
            found = row.fetchone()
            return None if found is None else rows.job_from_row(found)

        return await self._read(query)

    async def job_versions(self, env: str, job_id: str) -> list[Job]:
        def query(conn: sqlite3.Connection) -> list[Job]:
            # Newest registration first, kept by the (stable) sort among versions that
            # differ only in +build: the latest of them, as _refresh_head picks it, first.
            cursor = conn.execute(
                f"SELECT {JOB_COLUMNS} {_JOB_FROM} WHERE v.env = ? AND v.id = ? "
                "ORDER BY v.rowid DESC",
                (env, job_id),
            )
            found = [rows.job_from_row(r) for r in cursor]
            found.sort(key=lambda j: versions.parse(j.version, "version"), reverse=True)
            return found

        return await self._read(query)

    async def list_jobs(self, env: str, *, limit: int, after: str) -> Page[Job]:
        def query(conn: sqlite3.Connection) -> Page[Job]:
            cursor = conn.execute(
                f"SELECT {JOB_COLUMNS} {_JOB_FROM} WHERE v.env = ? "
                "AND v.version = j.latest_version AND v.id > ? ORDER BY v.id LIMIT ?",
                (env, after, limit + 1),
            )
            return rows.page([rows.job_from_row(r) for r in cursor], limit, lambda j: j.id)

        return await self._read(query)

    async def set_job_enabled(
        self, env: str, job_id: str, version: str | None, enabled: bool, now: int
    ) -> tuple[list[Job], list[str]]:
        def op(tx: Tx) -> tuple[list[Job], list[str]]:
            conn = tx.conn
            sql = "SELECT version FROM job_versions WHERE env = ? AND id = ?"
            params: tuple[str, ...] = (env, job_id)
            if version:
                sql += " AND version = ?"
                params = (env, job_id, version)
            sql += " ORDER BY rowid DESC"  # as job_versions lists them
            targets = [r[0] for r in conn.execute(sql, params)]
            if not targets:
                what = f"version {version!r} of job" if version else "job"
                raise NotFound(f"{what} {job_id!r} not found")
            conn.executemany(
                "UPDATE job_versions SET enabled = ?, updated_at = ? "
                "WHERE env = ? AND id = ? AND version = ?",
                [(int(enabled), now, env, job_id, v) for v in targets],
            )
            aborted = [] if enabled else self._abort_runs_of(tx, env, job_id, targets, now)
            self._refresh_head(tx, env, job_id, now)
            jobs = [self._job(conn, env, job_id, v) for v in targets]
            jobs.sort(key=lambda j: versions.parse(j.version, "version"), reverse=True)
            return jobs, aborted

        return await self._write(op)

    def _abort_runs_of(
        self, tx: Tx, env: str, job_id: str, job_versions: Sequence[str], now: int
    ) -> list[str]:
        """End the active runs of disabled versions ABORTED; returns their ids."""
        marks = ",".join("?" * len(job_versions))
        aborted = [
            r[0]
            for r in tx.conn.execute(
                f"SELECT id FROM runs WHERE env = ? AND job_id = ? AND job_version IN "
                f"({marks}) AND status IN {ACTIVE} ORDER BY seq",
                (env, job_id, *job_versions),
            )
        ]
        self._end_runs(
            tx, aborted, RunStatus.ABORTED, now, "Aborted", "the job version was disabled"
        )
        return aborted

    async def invoke(self, env: str, job_id: str, event: NewEvent, now: int) -> tuple[Run, bool]:
        """Create the invoke event and its one run; an existing event id returns its run."""

        def op(tx: Tx) -> tuple[Run, bool]:
            conn = tx.conn
            compiled = self.index.get(env, job_id)
            if compiled is None:
                raise NotFound(f"job {job_id!r} not found")
            existing = self._events_by_id(conn, env, {event.id}).get(event.id)
            if existing is not None:
                row = conn.execute(
                    f"SELECT {RUN_COLUMNS} FROM runs WHERE env = ? AND event_id = ? AND job_id = ?",
                    (env, event.id, job_id),
                ).fetchone()
                invoked = existing.name == INVOKE_EVENT and existing.source == INTERNAL_SOURCE
                if row is None or not invoked:  # a sent event's run is not this invoke's
                    raise AlreadyExists(
                        f"idempotency_key {event.id!r} is already the id of another event"
                    )
                return rows.run_from_row(row), True
            if not compiled.job.enabled:
                raise FailedPrecondition(
                    f"job {job_id!r} version {compiled.job.version} is disabled"
                )
            stored = Event(
                env=env,
                id=event.id,
                name=INVOKE_EVENT,
                source=INTERNAL_SOURCE,
                payload=event.payload,
                context=event.context,
                timestamp=event.timestamp,
                deliver_at=now,
                created_at=now,
                status=EventStatus.DELIVERED,
                delivered_at=now,
                account_id=event.account_id,
            )
            run = self._new_run(stored, run_spec(compiled, event.payload), now)
            self._insert_event(tx, stored)
            self._insert_runs(tx, [run], [stored])
            return run, False

        return await self._write(op)

    # -- schedules --------------------------------------------------------------

    async def fire_schedules(self, now: int, grace_ms: int) -> list[Run]:
        """Fire every due cron/interval tick; the event id makes each fire happen once."""

        def op(tx: Tx) -> list[Run]:
            conn = tx.conn
            due = conn.execute(
                "SELECT env, id, anchor, next_fire, last_fire, failed_at FROM jobs "
                "WHERE next_fire IS NOT NULL AND next_fire <= ? AND COALESCE(retry_at, 0) <= ? "
                "ORDER BY next_fire",
                (now, now),
            ).fetchall()
            created: list[Run] = []
            for env, job_id, anchor, next_fire, last_fire, failed_at in due:
                compiled = self.index.get(env, job_id)
                schedule = _schedule_of(compiled.job) if compiled else None
                if compiled is None or schedule is None:
                    conn.execute(
                        "UPDATE jobs SET next_fire = NULL WHERE env = ? AND id = ?", (env, job_id)
                    )
                    continue
                # A retry judges the tick it was planning as of the first try that
                # failed: on time then, it still fires, though the retry is past the
                # grace (a tick planned since is judged as any other).
                tried = None if failed_at is None else _dt(failed_at)
                try:
                    decision = schedules.decide(
                        schedule, _dt(next_fire), _dt(now), _dt(anchor), _td(grace_ms), tried
                    )
                except Exception:
                    # E.g. a time zone gone from the system's tzdata. One job's
                    # schedule must not stop the others (nor the server): it is
                    # tried again a minute from now, for the same planned tick.
                    log.exception(
                        "job %r (env %r): its schedule cannot be computed; retrying in %d s",
                        job_id,
                        env,
                        SCHEDULE_RETRY_MS // 1000,
                    )
                    conn.execute(
                        "UPDATE jobs SET retry_at = ?, failed_at = COALESCE(failed_at, ?) "
                        "WHERE env = ? AND id = ?",
                        (now + SCHEDULE_RETRY_MS, now, env, job_id),
                    )
                    continue
                if decision is None:
                    continue
                if decision.missed and compiled.job.enabled:
                    capped = (
                        schedule.kind == "cron" and decision.missed >= schedules.MAX_MISSED_COUNT
                    )
                    tx.after_commit(functools.partial(_log_skipped, env, job_id, decision, capped))
                fired = last_fire
                if decision.fire_at is not None and compiled.job.enabled:
                    planned = decision.fire_at
                    run, made = self._fire(tx, compiled.job, planned, last_fire, now)
                    if run is not None:
                        created.append(run)
                    if made:  # not a tick whose id a client's event holds: no fire
                        fired = _ms(planned)
                conn.execute(
                    "UPDATE jobs SET next_fire = ?, last_fire = ?, retry_at = NULL, "
                    "failed_at = NULL WHERE env = ? AND id = ?",
                    (_ms(decision.next_fire), fired, env, job_id),
                )
            self._insert_runs(tx, created)
            return created

        return await self._write(op)

    def _fire(
        self, tx: Tx, job: Job, planned: Any, last_fire: int | None, now: int
    ) -> tuple[Run | None, bool]:
        """The run of this tick's fire (None if it was made already), and whether the
        tick is a fire at all: not when a client's event holds its id."""
        event = Event(
            env=job.env,
            id=schedules.scheduled_event_id(job.id, planned),
            name=SCHEDULED_EVENT,
            source=INTERNAL_SOURCE,
            payload=schedules.scheduled_payload(planned, _dt(last_fire) if last_fire else None),
            context={},
            timestamp=_ms(planned),
            deliver_at=_ms(planned),
            created_at=now,
            status=EventStatus.DELIVERED,
            delivered_at=now,
        )
        if not self._insert_event(tx, event, or_ignore=True):
            fired = tx.conn.execute(
                "SELECT 1 FROM runs WHERE env = ? AND event_id = ? AND job_id = ?",
                (event.env, event.id, job.id),
            ).fetchone()
            if fired is None:
                # Not this tick's earlier fire (that made a run of the job): an event
                # a client sent with this id before the job had a schedule (such ids
                # are refused while it has one), whatever its name and source.
                held = tx.conn.execute(
                    "SELECT name, source FROM events WHERE env = ? AND id = ?",
                    (event.env, event.id),
                ).fetchone()
                log.warning(
                    "job %r (env %r): the fire %s is skipped: its event id is held by an "
                    "event named %r from source %r",
                    job.id,
                    job.env,
                    event.id,
                    *(held if held else (None, None)),
                )
            return None, fired is not None
        return self._new_run(event, RunSpec(job.id, job.version), now), True


def _schedule_of(job: Job) -> schedules.Schedule | None:
    kind, spec = next(iter(job.trigger.items()))
    if kind == "cron":
        return schedules.Schedule(
            kind="cron",
            cron=spec.get("cron", ""),
            timezone=spec.get("timezone", ""),
            catch_up=bool(spec.get("catch_up")),
        )
    if kind == "interval":
        return schedules.Schedule(
            kind="interval",
            seconds=int(spec.get("seconds", 0)),
            catch_up=bool(spec.get("catch_up")),
        )
    return None


def _same_plan(stored: str | None, schedule: schedules.Schedule | None) -> bool:
    """Whether a stored schedule plans the same ticks as `schedule` (catch_up aside),
    however each is spelled: a cron's spaces and letter case, UTC named or not."""
    if stored is None or schedule is None:
        return False
    return _plan(json.loads(stored)) == _plan(dict(schedule.__dict__))


def _plan(spec: dict[str, Any]) -> dict[str, Any]:
    plan = {k: v for k, v in spec.items() if k != "catch_up"}
    if plan.get("kind") == "cron":
        plan["cron"] = " ".join(str(plan.get("cron", "")).upper().split())
        plan["timezone"] = plan.get("timezone") or "UTC"
    return plan


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _ms(when: datetime) -> int:
    return round(when.timestamp() * 1000)


def _td(ms: int) -> timedelta:
    return timedelta(milliseconds=ms)


def _log_skipped(env: str, job_id: str, decision: schedules.Decision, capped: bool) -> None:
    why = (
        "only the latest due tick fires"
        if decision.fire_at is not None
        else "the latest was more than the grace period late"
    )
    log.warning(
        "job %r (env %r): %d%s planned tick(s) skipped: %s",
        job_id,
        env,
        decision.missed,
        " or more" if capped else "",
        why,
    )
