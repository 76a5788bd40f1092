"""The SQLite backend: the only module of the server that holds SQL.

Writes are operations queued on the group-commit writer (`writer.py`); reads
run on a small pool of threads with read-only connections, which in WAL mode
see every committed write without blocking the writer.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Literal, TypeVar

from sqlite_utils import Database

from ..errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from ..events import resend_action
from ..hub import Hub
from ..ids import new_run_id
from ..matching import JobIndex, call_budget
from ..models import (
    Event,
    EventStatus,
    KeptCheck,
    NewEvent,
    Page,
    Run,
    RunSpec,
    RunStatus,
)
from . import rows
from .jobs import JobOps
from .retention import RetentionOps
from .rows import ACTIVE, EVENT_COLUMNS, RUN_COLUMNS, dumps
from .schema import migrate
from .work import WorkOps
from .writer import Tx, Writer, passing

T = TypeVar("T")
_INSERT_EVENT = (
    "INSERT INTO events (env, id, name, source, payload, context, timestamp, deliver_at, "
    "delivered_at, cancelled_at, created_at, status, account_id) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_RUN = (
    "INSERT OR IGNORE INTO runs (env, id, job_id, job_version, event_id, status, attempt, "
    "created_at, updated_at, started_at, completed_at, output, error, validation_errors, "
    "account_id, wait_until) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# What a SendEvent(s) call did with each of its events.
Resend = Literal["new", "rescheduled", "unchanged"]
_JOB_FROM = "FROM job_versions v JOIN jobs j ON j.env = v.env AND j.id = v.id"
WAL_SIZE_LIMIT = 8 * 1024 * 1024
# Opening the database for longer than this is logged (a lock, a long migration).
OPEN_NOTICE_SECONDS = 2.0

log = logging.getLogger(__name__)


def _connect(path: str, *, readonly: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA busy_timeout = 30000")
    if readonly:
        conn.execute("PRAGMA query_only = ON")
    else:
        conn.execute("PRAGMA journal_mode = WAL")
        # FULL: the WAL is synced at every commit, so an acknowledged write
        # survives power loss too; group commit keeps that to one sync per batch.
        conn.execute("PRAGMA synchronous = FULL")
        # A burst of large transactions grows the WAL; once a checkpoint has
        # copied it back, the next write cuts it to this size instead of the
        # file keeping its largest size for good.
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
    return conn


def _why_unopenable(path: str) -> str:
    """What about a file path SQLite could not open (its error says only "unable to
    open database file" or "readonly") is at fault, if anything visible is."""
    if path.startswith("file:"):  # a URI: its options may be the cause
        return ""
    where = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        return "it is a directory"
    if not os.path.isdir(where):
        if os.path.exists(where):
            return f"{where!r} is not a directory"
        return f"its directory {where!r} does not exist"
    if not os.access(where, os.W_OK | os.X_OK):
        # WAL mode keeps two files beside the database, created as it opens.
        name = os.path.basename(path)
        return (
            f"no permission to create files in {where!r}: SQLite keeps {name}-wal and "
            f"{name}-shm there"
        )
    if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
        return "no permission to read and write it"
    return ""


class SQLiteStore(JobOps, WorkOps, RetentionOps):
    def __init__(self, path: str, index: JobIndex, hub: Hub) -> None:
        self.path = path
        self.index = index
        self.hub = hub
        self._writer = Writer(self._open_writer)
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tripwire-store-read")
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._lock_fd: int | None = None

    def _open_writer(self) -> sqlite3.Connection:
        conn = _connect(self.path, readonly=False)
        try:
            self._claim(conn)
            migrate(Database(conn))
            self.index.load(self._latest_jobs(conn))
            # From now on the writer waits for another process's lock without
            # blocking the loop (Writer._begin).
            conn.execute("PRAGMA busy_timeout = 0")
        except BaseException:
            conn.close()
            self._unclaim()
            raise
        return conn

    def _claim(self, conn: sqlite3.Connection) -> None:
        """One server per database: its jobs, queues and schedules live in its memory,
        so a second would deliver events against stale jobs and take runs from under
        the first. Held (a lock on `<db>.lock`) until close, or the process's end."""
        # Named after the file SQLite opened, however --db named it (a relative
        # path, a symlink, a file: URI).
        name = conn.execute("PRAGMA database_list").fetchone()[2]
        if not name:  # in memory, or a temporary file: no other process can open it
            return
        fd = os.open(f"{os.path.realpath(name)}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            which = f" (pid {holder})" if holder.isdigit() else ""
            raise sqlite3.OperationalError(
                f"it is in use by another tripwire server{which}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _unclaim(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None

    async def open(self) -> None:
        # Opening waits up to 30 s for a write lock another process holds: say so
        # rather than sit silent.
        slow = asyncio.get_running_loop().call_later(
            OPEN_NOTICE_SECONDS,
            log.warning,
            "still opening the database %r after %g s: migrating it, or waiting (up to "
            "30 s) for a write lock another process holds (an sqlite3 shell, a backup)",
            self.path,
            OPEN_NOTICE_SECONDS,
        )
        try:
            await self._writer.start()
        except (sqlite3.Error, OSError) as exc:  # a missing directory, no permission,
            # not a database, another server on it
            code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
            if code in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY):
                why = _why_unopenable(self.path)
            elif code == sqlite3.SQLITE_BUSY:
                why = "another process held its write lock for 30 s: an sqlite3 shell, a backup?"
            else:
                why = ""
            raise OSError(
                f"cannot open the database {self.path!r}: {exc}{f' ({why})' if why else ''}"
            ) from exc
        finally:
            slow.cancel()

    async def close(self) -> None:
        await self._writer.stop()
        self._readers.shutdown(wait=True)
        with self._lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()
        self._unclaim()

    def wait_at_most(self, seconds: float) -> None:
        self._writer.wait_at_most(seconds)

    def _write(self, operation: Callable[[Tx], T], *, lazy: bool = False) -> asyncio.Future[T]:
        return self._writer.submit(operation, lazy=lazy)

    async def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = _connect(self.path, readonly=True)
                self._local.conn = conn
                with self._lock:
                    self._reader_conns.append(conn)
            return query(conn)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._readers, run)
        except sqlite3.OperationalError as exc:
            if (translated := passing(exc, "be read")) is exc:
                raise
            raise translated from exc

    # -- events ---------------------------------------------------------------

    async def ingest(
        self,
        env: str,
        events: Sequence[NewEvent],
        now: int,
        check: Callable[[list[Event]], None] | None = None,
        kept: KeptCheck | None = None,
    ) -> list[Event]:
        """Store a batch atomically: dedup by id, deliver what is due, create runs.
        `check` sees the result before the commit, `kept` each event a resend
        rescheduled keeping its stored payload or context; if either raises,
        nothing is stored."""

        def op(tx: Tx) -> list[Event]:
            stored = self._ingest(tx, env, events, now, kept)
            if check is not None:
                check(stored)
            return stored

        return await self._write(op)

    def _ingest(
        self,
        tx: Tx,
        env: str,
        events: Sequence[NewEvent],
        now: int,
        kept: KeptCheck | None = None,
    ) -> list[Event]:
        conn = tx.conn
        known = self._events_by_id(conn, env, {e.id for e in events if not e.minted_id})
        inserted: dict[str, Event] = {}
        updated: dict[str, Event] = {}
        results: list[tuple[Event, Resend]] = []
        for i, new in enumerate(events):
            current = known.get(new.id)
            if current is None:
                current = Event(
                    env=env,
                    id=new.id,
                    name=new.name,
                    source=new.source,
                    payload=new.payload,
                    context=new.context,
                    timestamp=new.timestamp,
                    deliver_at=new.deliver_at,
                    created_at=now,
                    status=EventStatus.PENDING,
                    account_id=new.account_id,
                )
                known[new.id] = inserted[new.id] = current
                results.append((current, "new"))
                continue
            if resend_action(current, new, now) == "reschedule":
                if new.payload_given:
                    current.payload = new.payload
                if new.context_given:
                    current.context = new.context
                current.deliver_at = new.deliver_at
                if kept is not None:
                    kept(i, current, new)
                if current.id not in inserted:
                    updated[current.id] = current
                results.append((current, "rescheduled"))
            else:
                results.append((current, "unchanged"))
        created: list[Run] = []
        delivered: list[Event] = []
        # In request order (dict keys keep the first occurrence of each id): an
        # event the batch rescheduled is delivered where it stands in the batch.
        touched = {**inserted, **updated}
        in_order = [touched[i] for i in dict.fromkeys(e.id for e in events) if i in touched]
        with call_budget():  # past it, ResourceExhausted: the call stores nothing
            for event in in_order:
                if event.status is EventStatus.PENDING and event.deliver_at <= now:
                    created += self._deliver(event, now)
                    delivered.append(event)
        _insert(conn, _INSERT_EVENT, [rows.event_params(e) for e in inserted.values()])
        for event in updated.values():
            conn.execute(
                "UPDATE events SET payload = ?, context = ?, deliver_at = ?, delivered_at = ?, "
                "status = ? WHERE env = ? AND id = ?",
                (
                    dumps(event.payload),
                    dumps(event.context),
                    event.deliver_at,
                    event.delivered_at,
                    event.status.value,
                    env,
                    event.id,
                ),
            )
        self._insert_runs(tx, created, delivered)
        if any(e.status is EventStatus.PENDING for e in (*inserted.values(), *updated.values())):
            tx.after_commit(self.hub.timers)
        return [_reply(event, resend) for event, resend in results]

    def _deliver(self, event: Event, now: int) -> list[Run]:
        """Match a due event; mark it delivered. The caller writes both."""
        specs = self.index.match(event.env, event.name, event.source, event.payload, event.context)
        event.runs = [self._new_run(event, spec, now) for spec in specs]
        event.status = EventStatus.DELIVERED
        event.delivered_at = now
        return event.runs

    @staticmethod
    def _new_run(event: Event, spec: RunSpec, now: int) -> Run:
        invalid = bool(spec.validation_errors)
        return Run(
            env=event.env,
            id=new_run_id(),
            job_id=spec.job_id,
            job_version=spec.job_version,
            event_id=event.id,
            status=RunStatus.INVALID_PAYLOAD if invalid else RunStatus.QUEUED,
            attempt=0,
            created_at=now,
            updated_at=now,
            completed_at=now if invalid else None,
            validation_errors=list(spec.validation_errors),
            account_id=event.account_id,
        )

    def _insert_event(self, tx: Tx, event: Event, *, or_ignore: bool = False) -> bool:
        sql = _INSERT_EVENT.replace("INSERT", "INSERT OR IGNORE", 1) if or_ignore else _INSERT_EVENT
        return bool(tx.conn.execute(sql, rows.event_params(event)).rowcount)

    def _insert_runs(self, tx: Tx, runs: Sequence[Run], events: Sequence[Event] = ()) -> None:
        if not runs:
            return
        _insert(tx.conn, _INSERT_RUN, [rows.run_params(r) for r in runs])
        queued = [r for r in runs if r.status is RunStatus.QUEUED]
        if queued:
            at_hand = {(e.env, e.id): e for e in events}
            tx.after_commit(lambda: self.hub.queued(queued, at_hand))

    @staticmethod
    def _events_by_id(conn: sqlite3.Connection, env: str, ids: set[str]) -> dict[str, Event]:
        found: dict[str, Event] = {}
        wanted = list(ids)
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in conn.execute(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE env = ? AND id IN ({marks})",
                (env, *chunk),
            ):
                event = rows.event_from_row(row)
                found[event.id] = event
        return found

    async def deliver_due(self, now: int, limit: int = 500) -> list[Event]:
        """Deliver delayed events whose time has come (the scheduler calls this)."""

        def op(tx: Tx) -> list[Event]:
            due = [
                rows.event_from_row(row)
                for row in tx.conn.execute(
                    f"SELECT {EVENT_COLUMNS} FROM events WHERE status = 'PENDING' "
                    "AND deliver_at <= ? ORDER BY deliver_at, seq LIMIT ?",
                    (now, limit),
                )
            ]
            created: list[Run] = []
            with call_budget():
                for i, event in enumerate(due):
                    try:
                        created += self._deliver(event, now)
                    except ResourceExhausted:
                        if i:  # the rest waits for the next round
                            due = due[:i]
                            break
                        with call_budget(shared=False):  # one event always goes, on its own budgets
                            created += self._deliver(event, now)
                    tx.conn.execute(
                        "UPDATE events SET status = 'DELIVERED', delivered_at = ? WHERE seq = ?",
                        (now, event.seq),
                    )
            self._insert_runs(tx, created, due)
            return due

        return await self._write(op)

    async def next_timer(self) -> int | None:
        """The earliest time a delayed event or a schedule is due."""

        def query(conn: sqlite3.Connection) -> int | None:
            row = conn.execute(
                "SELECT MIN(t) FROM (SELECT MIN(deliver_at) AS t FROM events "
                "WHERE status = 'PENDING' UNION ALL "
                "SELECT MIN(MAX(next_fire, COALESCE(retry_at, 0))) FROM jobs "
                "WHERE next_fire IS NOT NULL UNION ALL SELECT MIN(wait_until) FROM runs "
                "WHERE status = 'WAITING' UNION ALL SELECT MIN(deadline_at) FROM runs "
                f"WHERE status IN {ACTIVE} AND deadline_at IS NOT NULL)"
            ).fetchone()
            return None if row[0] is None else int(row[0])

        return await self._read(query)

    async def get_event(self, env: str, event_id: str) -> Event | None:
        def query(conn: sqlite3.Connection) -> Event | None:
            return self._events_by_id(conn, env, {event_id}).get(event_id)

        return await self._read(query)

    async def event_runs(self, env: str, event_id: str) -> list[Run]:
        def query(conn: sqlite3.Connection) -> list[Run]:
            cursor = conn.execute(
                f"SELECT {RUN_COLUMNS} FROM runs WHERE env = ? AND event_id = ? ORDER BY seq",
                (env, event_id),
            )
            return [rows.run_from_row(r) for r in cursor]

        return await self._read(query)

    async def list_events(
        self, env: str, *, name: str, status: str, limit: int, before: tuple[str, int] | None
    ) -> Page[Event]:
        def query(conn: sqlite3.Connection) -> Page[Event]:
            # Without a name, newest first is the table's own order: walked from
            # the end (`+env` keeps SQLite from reading the whole environment
            # through an index to sort it), it stops after a page.
            where = ["env = ?" if name else "+env = ?"]
            params: list[object] = [env]
            if name:
                where.append("name = ?")
                params.append(name)
            if status:
                where.append("status = ?")
                params.append(status)
            if before is not None:
                where.append("seq < ?")
                params.append(_seq_of(conn, "events", "an event", env, before))
            cursor = conn.execute(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} "
                "ORDER BY seq DESC LIMIT ?",
                (*params, limit + 1),
            )
            found = [rows.event_from_row(r) for r in cursor]
            return rows.page(found, limit, lambda e: e.id)

        return await self._read(query)

    async def cancel_event(self, env: str, event_id: str, now: int) -> Event:
        def op(tx: Tx) -> Event:
            event = self._events_by_id(tx.conn, env, {event_id}).get(event_id)
            if event is None:
                raise NotFound(f"event {event_id!r} not found")
            if event.status is EventStatus.DELIVERED:
                raise FailedPrecondition(
                    f"event {event_id!r} was already delivered; cancel its runs with "
                    "CancelRunsForEvent"
                )
            if event.status is EventStatus.PENDING:
                event.status, event.cancelled_at = EventStatus.CANCELLED, now
                tx.conn.execute(
                    "UPDATE events SET status = 'CANCELLED', cancelled_at = ? WHERE seq = ?",
                    (now, event.seq),
                )
            return event

        return await self._write(op)

    # -- runs -------------------------------------------------------------------

    async def get_run(self, env: str, run_id: str) -> Run | None:
        return await self._read(lambda conn: rows.find_run(conn, env, run_id))

    async def list_runs(
        self,
        env: str,
        *,
        job_id: str,
        event_id: str,
        status: str,
        limit: int,
        before: tuple[str, int] | None,
    ) -> Page[Run]:
        def query(conn: sqlite3.Connection) -> Page[Run]:
            # As for events: without a job or event, the table's own order.
            where = ["env = ?" if job_id or event_id else "+env = ?"]
            params: list[object] = [env]
            for column, value in (("job_id", job_id), ("event_id", event_id), ("status", status)):
                if value:
                    where.append(f"{column} = ?")
                    params.append(value)
            if before is not None:
                where.append("seq < ?")
                params.append(_seq_of(conn, "runs", "a run", env, before))
            cursor = conn.execute(
                f"SELECT {RUN_COLUMNS} FROM runs WHERE {' AND '.join(where)} "
                "ORDER BY seq DESC LIMIT ?",
                (*params, limit + 1),
            )
            found = [rows.run_from_row(r) for r in cursor]
            return rows.page(found, limit, lambda r: r.id)

        return await self._read(query)

    async def cancel_run(self, env: str, run_id: str, now: int, reason: str) -> Run:
        def op(tx: Tx) -> Run:
            run = rows.find_run(tx.conn, env, run_id)
            if run is None:
                raise NotFound(f"run {run_id!r} not found")
            if run.status.terminal:
                raise FailedPrecondition(
                    f"run {run_id!r} already ended {run.status.value}; a terminal run keeps "
                    "its status"
                )
            self._end_runs(tx, [run.id], RunStatus.CANCELED, now, "Canceled", reason)
            ended = rows.find_run(tx.conn, env, run_id)  # as stored: wait_until cleared too
            assert ended is not None
            return ended

        return await self._write(op)

    async def cancel_runs_for_event(
        self, env: str, event_id: str, now: int
    ) -> tuple[list[str], list[Run]]:
        def op(tx: Tx) -> tuple[list[str], list[Run]]:
            if not self._events_by_id(tx.conn, env, {event_id}):
                raise NotFound(f"event {event_id!r} not found")
            ids = [
                r[0]
                for r in tx.conn.execute(
                    f"SELECT id FROM runs WHERE env = ? AND event_id = ? AND status IN {ACTIVE} "
                    "ORDER BY seq",
                    (env, event_id),
                )
            ]
            self._end_runs(
                tx, ids, RunStatus.CANCELED, now, "Canceled", "cancelled by CancelRunsForEvent"
            )
            cursor = tx.conn.execute(
                f"SELECT {RUN_COLUMNS} FROM runs WHERE env = ? AND event_id = ? ORDER BY seq",
                (env, event_id),
            )
            return ids, [rows.run_from_row(r) for r in cursor]

        return await self._write(op)

    def _end_runs(
        self, tx: Tx, ids: Sequence[str], status: RunStatus, now: int, kind: str, message: str
    ) -> None:
        """Move active runs to a terminal status; a terminal run is never touched."""
        if not ids:
            return
        error = dumps({"type": kind, "message": message, "stack": ""})
        tx.conn.executemany(
            f"UPDATE runs SET status = ?, completed_at = ?, updated_at = ?, error = ?, "
            f"wait_until = NULL, worker_id = NULL WHERE id = ? AND status IN {ACTIVE}",
            [(status.value, now, now, error, run_id) for run_id in ids],
        )
        # Open tasks end with the run.
        tx.conn.executemany(
            "UPDATE tasks SET status = 'CANCELED', completed_at = ? "
            "WHERE run_id = ? AND status IN ('RUNNING', 'WAITING')",
            [(now, run_id) for run_id in ids],
        )
        done = list(ids)
        tx.after_commit(lambda: self.hub.released(done, stop_reason=message))


def _reply(event: Event, resend: Resend) -> Event:
    """A reply lists the runs its own call's delivery created: a resend that
    rescheduled the event to now delivered it, any other resend created none."""
    if resend == "new":
        return event
    return replace(event, runs=event.runs if resend == "rescheduled" else [], deduplicated=True)


def _seq_of(
    conn: sqlite3.Connection, table: str, what: str, env: str, before: tuple[str, int]
) -> int:
    """Where a list page continues from: before this event or run of `env`, the one
    made at that time (an event id sent again after retention deleted its event
    names another)."""
    item_id, created_at = before
    row = conn.execute(
        f"SELECT seq, created_at FROM {table} WHERE env = ? AND id = ?", (env, item_id)
    ).fetchone()
    if row is None or row[1] != created_at:
        raise InvalidArgument(
            "page_token",
            f"continues from {what} this environment does not have (deleted by retention "
            f"since, or the token is another list's or environment's): list again from "
            "the first page",
        )
    return int(row[0])


def _insert(conn: sqlite3.Connection, sql: str, params: list[tuple[Any, ...]]) -> None:
    if len(params) == 1:
        conn.execute(sql, params[0])  # cheaper than executemany for the common single row
    elif params:
        conn.executemany(sql, params)
