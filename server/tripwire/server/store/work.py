"""Store operations of the worker protocol: dispatch, tasks, logs, results, timers.

Every operation that a worker's message causes first checks the fencing
token: the run must be EXECUTING with exactly that attempt, otherwise the
message is stale and nothing is written.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from .. import tasks as task_rules
from ..errors import InvalidArgument, StaleAttempt
from ..hub import Hub
from ..ids import new_task_id
from ..models import (
    Event,
    KeptCheck,
    LogEntry,
    NewEvent,
    Run,
    RunChanges,
    RunStatus,
    Task,
    TaskAsk,
    TaskKind,
    TaskStatus,
)
from ..retry import RetryPolicy, next_delay_ms
from ..tasks import TaskOutcome
from . import rows
from .rows import ACTIVE, RUN_COLUMNS, TASK_COLUMNS, dumps
from .writer import Tx

_TASK_MARKS = ",".join("?" for _ in TASK_COLUMNS.split(","))

T = TypeVar("T")


class WorkOps:
    hub: Hub

    def _write(self, operation: Callable[[Tx], T], *, lazy: bool = False) -> asyncio.Future[T]:
        raise NotImplementedError

    async def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        raise NotImplementedError

    def _ingest(
        self,
        tx: Tx,
        env: str,
        events: Sequence[NewEvent],
        now: int,
        kept: KeptCheck | None = None,
    ) -> list[Event]:
        raise NotImplementedError

    def _end_runs(
        self, tx: Tx, ids: Sequence[str], status: RunStatus, now: int, kind: str, message: str
    ) -> None:
        raise NotImplementedError

    # -- dispatch ---------------------------------------------------------------

    async def announce_queued(
        self,
        env: str,
        job_id: str,
        version: str,
        *,
        after: int = 0,
        limit: int = 1000,
        token: object = None,
    ) -> int:
        """Tell the hub of the next `limit` QUEUED runs of a job version stored after
        `after` (a seq), oldest first, and of the backlog left after them (the
        last seq told, or None when that was all), naming the load by `token`;
        returns how many. Read in the
        writer's order, and told through the hub like every change, so that no
        change committed after this read can come before it."""

        def op(tx: Tx) -> int:
            cursor = tx.conn.execute(
                f"SELECT {RUN_COLUMNS} FROM runs WHERE status = 'QUEUED' AND env = ? "
                "AND job_id = ? AND job_version = ? AND seq > ? ORDER BY seq LIMIT ?",
                (env, job_id, version, after, limit + 1),
            )
            runs = [rows.run_from_row(r) for r in cursor]
            more = len(runs) > limit
            del runs[limit:]
            last = runs[-1].seq if more else None
            tx.after_commit(lambda: self.hub.backlog(env, job_id, version, last, token))
            if runs:
                tx.after_commit(lambda: self.hub.queued(runs, {}))
            return len(runs)

        return await self._write(op)

    async def orphans(self) -> list[Run]:
        """At start: the EXECUTING runs, each held by a worker of the server's last
        life whose stream broke with it. Read in a write, the server's first: where
        a read-only or locked file shows."""

        def op(tx: Tx) -> list[Run]:
            cursor = tx.conn.execute(
                f"SELECT {RUN_COLUMNS} FROM runs WHERE status = 'EXECUTING' ORDER BY seq"
            )
            return [rows.run_from_row(r) for r in cursor]

        return await self._write(op)

    def claim(
        self,
        run_id: str,
        stored_attempt: int,
        attempt: int,
        worker_id: str,
        now: int,
    ) -> asyncio.Future[bool]:
        """QUEUED at `stored_attempt` -> EXECUTING at `attempt`. Not awaited by the
        dispatcher: the writer applies operations in order, so the worker's first
        message for this attempt always finds the claim already written. The
        deadline is the run's own version's (a run stays on its version)."""

        def op(tx: Tx) -> bool:
            claimed = tx.conn.execute(
                "UPDATE runs SET status = 'EXECUTING', attempt = ?, worker_id = ?, "
                "started_at = COALESCE(started_at, ?), updated_at = ?, "
                "deadline_at = COALESCE(deadline_at, (SELECT CASE WHEN v.max_duration_seconds > 0 "
                "THEN ? + v.max_duration_seconds * 1000 END FROM job_versions v "
                "WHERE v.env = runs.env AND v.id = runs.job_id AND v.version = runs.job_version)) "
                "WHERE id = ? AND status = 'QUEUED' AND attempt = ? RETURNING deadline_at",
                (attempt, worker_id, now, now, now, run_id, stored_attempt),
            ).fetchall()
            if not claimed:
                return False
            tx.after_commit(lambda: self.hub.changed([run_id]))
            deadline = claimed[0][0]
            if deadline is not None:  # the timer loop may sleep past it
                tx.after_commit(lambda: self.hub.timer_at(deadline))
            return True

        return self._write(op, lazy=True)

    async def requeue(self, runs: Sequence[tuple[str, int]], now: int) -> list[Run]:
        """Give runs (id, attempt) back to the queue when their worker lost its lease."""

        def op(tx: Tx) -> list[Run]:
            back: list[Run] = []
            for run_id, attempt in runs:
                row = tx.conn.execute(
                    "UPDATE runs SET status = 'QUEUED', worker_id = NULL, updated_at = ? "
                    "WHERE id = ? AND attempt = ? AND status = 'EXECUTING' "
                    f"RETURNING {RUN_COLUMNS}",
                    (now, run_id, attempt),
                ).fetchone()
                if row is not None:
                    back.append(rows.run_from_row(row))
            if back:
                tx.after_commit(lambda: self.hub.queued(back, {}))
            return back

        return await self._write(op)

    async def dispatch_context(self, env: str, run: Run) -> tuple[Event | None, list[Task]]:
        def query(conn: sqlite3.Connection) -> tuple[Event | None, list[Task]]:
            event = self._events_by_id(conn, env, {run.event_id}).get(run.event_id)
            tasks = self._tasks(conn, run.id) if run.attempt else []
            return event, tasks

        return await self._read(query)

    @staticmethod
    def _events_by_id(conn: sqlite3.Connection, env: str, ids: set[str]) -> dict[str, Event]:
        raise NotImplementedError

    @staticmethod
    def _tasks(conn: sqlite3.Connection, run_id: str) -> list[Task]:
        cursor = conn.execute(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE run_id = ? ORDER BY position", (run_id,)
        )
        return [rows.task_from_row(r) for r in cursor]

    async def run_details(self, run_id: str) -> tuple[list[Task], list[LogEntry]]:
        def query(conn: sqlite3.Connection) -> tuple[list[Task], list[LogEntry]]:
            logs = conn.execute(
                "SELECT seq, level, message, data, time FROM logs WHERE run_id = ? ORDER BY seq",
                (run_id,),
            )
            return self._tasks(conn, run_id), [rows.log_from_row(r) for r in logs]

        return await self._read(query)

    async def run_changes(
        self, run_id: str, marks: Mapping[str, tuple[object, ...]], log_mark: int
    ) -> RunChanges:
        def query(conn: sqlite3.Connection) -> RunChanges:
            if marks:
                now_marks, tasks = self._changed_tasks(conn, run_id, marks)
            else:  # a first look: every task, in one pass
                tasks = self._tasks(conn, run_id)
                now_marks = {task.id: task.mark() for task in tasks}
            # Lines are never deleted nor changed, and a new one takes a rowid above
            # every stored one: past the mark is exactly what was stored since.
            lines = conn.execute(
                "SELECT rowid, seq, level, message, data, time FROM logs "
                "WHERE run_id = ? AND rowid > ? ORDER BY seq",
                (run_id, log_mark),
            ).fetchall()
            logs = [rows.log_from_row(line[1:]) for line in lines]
            mark = max((line[0] for line in lines), default=log_mark)
            return RunChanges(marks=now_marks, tasks=tasks, logs=logs, log_mark=mark)

        return await self._read(query)

    @staticmethod
    def _changed_tasks(
        conn: sqlite3.Connection, run_id: str, marks: Mapping[str, tuple[object, ...]]
    ) -> tuple[dict[str, tuple[object, ...]], list[Task]]:
        """Every task's mark (the columns of Task.mark(), without params, output
        and error), and the tasks whose mark is not the one in `marks`."""
        now_marks: dict[str, tuple[object, ...]] = {
            row[0]: row[1:]
            for row in conn.execute(
                "SELECT id, status, attempts, retry_at, started_at, completed_at "
                "FROM tasks WHERE run_id = ?",
                (run_id,),
            )
        }
        changed = [i for i, mark in now_marks.items() if marks.get(i) != mark]
        tasks: list[Task] = []
        for start in range(0, len(changed), 500):
            chunk = changed[start : start + 500]
            tasks += map(
                rows.task_from_row,
                conn.execute(
                    f"SELECT {TASK_COLUMNS} FROM tasks WHERE id IN ({','.join('?' * len(chunk))})",
                    chunk,
                ),
            )
        tasks.sort(key=lambda task: task.position)
        return now_marks, tasks

    # -- the fencing token ------------------------------------------------------

    async def check_attempt(
        self, env: str, run_id: str, attempt: int, *, suspended: bool = False
    ) -> Run:
        return await self._read(
            lambda conn: self._fenced(conn, env, run_id, attempt, suspended=suspended)
        )

    @staticmethod
    def _fenced(
        conn: sqlite3.Connection, env: str, run_id: str, attempt: int, *, suspended: bool = False
    ) -> Run:
        """The run, if `attempt` is its current one and EXECUTING. With `suspended`,
        also when that attempt suspended the run (WAITING, or QUEUED again after it)
        and no other has started since: what its functions already running report."""
        run = rows.find_run(conn, env, run_id)
        if run is None:  # a run the worker held, ended and deleted since (retention)
            raise StaleAttempt(f"run {run_id} has ended and is deleted", ended=True)
        if run.status.terminal:
            raise StaleAttempt(f"run {run_id} has ended {run.status.value}", ended=True)
        held = (RunStatus.EXECUTING, RunStatus.WAITING, RunStatus.QUEUED)
        if run.attempt != attempt or run.status not in (
            held if suspended else (RunStatus.EXECUTING,)
        ):
            raise StaleAttempt(
                f"attempt {attempt} of run {run_id} is stale (current attempt {run.attempt}, "
                f"{run.status.value})"
            )
        return run

    # -- tasks ------------------------------------------------------------------

    async def request_task(
        self,
        env: str,
        run_id: str,
        attempt: int,
        ask: TaskAsk,
        job_retry: dict[str, Any] | None,
        now: int,
    ) -> TaskOutcome:
        return await self._write(
            lambda tx: self._request_task(tx, env, run_id, attempt, ask, job_retry, now)
        )

    def _request_task(
        self,
        tx: Tx,
        env: str,
        run_id: str,
        attempt: int,
        ask: TaskAsk,
        job_retry: dict[str, Any] | None,
        now: int,
    ) -> TaskOutcome:
        conn = tx.conn
        run = self._fenced(conn, env, run_id, attempt)
        if ask.parent_id:
            parent = conn.execute(
                "SELECT kind FROM tasks WHERE id = ? AND run_id = ?", (ask.parent_id, run_id)
            ).fetchone()
            if parent is None:
                raise InvalidArgument("task.parent_id", f"no task {ask.parent_id!r} in this run")
            if parent[0] != TaskKind.RUN.value:
                raise InvalidArgument(
                    "task.parent_id",
                    f"task {ask.parent_id!r} is {parent[0]}: only a RUN task's function "
                    "opens tasks inside it",
                )
        idem = task_rules.idempotency_key(run_id, ask.parent_id, ask.key)
        row = conn.execute(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE run_id = ? AND idempotency_key = ?",
            (run_id, idem),
        ).fetchone()
        if row is not None:
            return self._replay(tx, run, rows.task_from_row(row), ask, now)
        position = conn.execute(
            "SELECT COALESCE(MAX(position), 0) + 1 FROM tasks WHERE run_id = ?", (run_id,)
        ).fetchone()[0]
        task = Task(
            id=new_task_id(),
            run_id=run_id,
            parent_id=ask.parent_id,
            key=ask.key,
            idempotency_key=idem,
            kind=ask.kind,
            status=TaskStatus.RUNNING,
            position=position,
            name=ask.name or ask.key,
            params=ask.params,
            started_at=now,
            retry=ask.retry if ask.retry is not None else job_retry,
        )
        outcome = TaskOutcome(task, run)
        if ask.kind in (TaskKind.SEND_EVENT, TaskKind.SEND_EVENTS):
            sent = self._ingest(tx, env, ask.events, now, ask.kept)
            outcome.created = [r for event in sent for r in event.runs]
            replies = [_event_json(e) for e in sent]
            task.output = replies[0] if ask.kind is TaskKind.SEND_EVENT else replies
            task.status, task.completed_at = TaskStatus.COMPLETED, now
        elif ask.kind is TaskKind.WAIT:
            seconds = float(ask.params.get("seconds", 0)) if isinstance(ask.params, dict) else 0
            task.status, task.retry_at = TaskStatus.WAITING, now + int(seconds * 1000)
            self._suspend(tx, run, task.retry_at, now)
        conn.execute(
            f"INSERT INTO tasks ({TASK_COLUMNS}) VALUES ({_TASK_MARKS})",
            rows.task_params(task),
        )
        tx.after_commit(lambda: self.hub.changed([run_id]))
        return outcome

    def _replay(self, tx: Tx, run: Run, task: Task, ask: TaskAsk, now: int) -> TaskOutcome:
        if task.kind is not ask.kind:
            # Asked for in an earlier execution, or earlier in this one: either way
            # the key no longer names what the handler means by it.
            message = (
                f"task {ask.key!r} is a {task.kind.value} task, asked for now as a "
                f"{ask.kind.value} task: a cache key names one task under its parent (the "
                "handler is not deterministic, or gives two io calls the same key)"
            )
            self._finish(
                tx, run, None, {"type": "NondeterminismError", "message": message, "stack": ""}, now
            )
            return TaskOutcome(task, run, nondeterminism=message)
        if task.status is TaskStatus.WAITING:
            if (task.retry_at or 0) > now:
                # Not due yet. For a retry: its try failed after something else had
                # suspended the run, and that woke first.
                self._suspend(tx, run, task.retry_at or now, now)
            elif task.kind is TaskKind.WAIT:
                task.status, task.completed_at = TaskStatus.COMPLETED, now
            else:  # a retry that is due: run the function again
                task.status, task.retry_at = TaskStatus.RUNNING, None
                task.started_at = self._try_start(tx, task, now)
            self._update_task(tx, task)
        elif task.status is TaskStatus.ERRORED and self._parent_tried_again(tx, task):
            # It failed in an earlier try of its parent, which is being retried (maybe
            # because of it): it runs again, from its first try, so that its own retry
            # policy applies within the parent's new try as in the first (the parent's
            # try_offset already numbers this try's log lines past the earlier ones').
            task.status, task.completed_at = TaskStatus.RUNNING, None
            task.started_at = self._try_start(tx, task, now)
            task.attempts, task.try_offset = 0, 0
            self._update_task(tx, task)
        return TaskOutcome(task, run)

    @staticmethod
    def _try_start(tx: Tx, task: Task, now: int) -> int:
        """When a new try of `task` starts: now, or just after the last of the tasks
        inside it settled if the clock has not passed that (the same millisecond, a
        retry without delay; a clock set back), so that every task of its earlier
        tries settled before this one started (see _parent_tried_again)."""
        last = tx.conn.execute(
            "SELECT MAX(completed_at) FROM tasks WHERE run_id = ? AND parent_id = ?",
            (task.run_id, task.id),
        ).fetchone()[0]
        return now if last is None or last < now else last + 1

    @staticmethod
    def _parent_tried_again(tx: Tx, task: Task) -> bool:
        """`task` (inside a RUN task) failed before its parent's current try began."""
        if task.kind is not TaskKind.RUN or not task.parent_id or task.completed_at is None:
            return False
        parent = tx.conn.execute(
            "SELECT status, started_at FROM tasks WHERE id = ? AND run_id = ?",
            (task.parent_id, task.run_id),
        ).fetchone()
        return (
            parent is not None
            and parent[0] == TaskStatus.RUNNING.value
            and parent[1] is not None
            and parent[1] > task.completed_at
        )

    def _suspend(self, tx: Tx, run: Run, until: int, now: int) -> None:
        """EXECUTING -> WAITING: the run holds no slot until `until`."""
        tx.conn.execute(
            "UPDATE runs SET status = 'WAITING', wait_until = ?, worker_id = NULL, updated_at = ? "
            "WHERE id = ?",
            (until, now, run.id),
        )
        run.status, run.wait_until = RunStatus.WAITING, until
        tx.after_commit(lambda: self.hub.released([run.id]))
        tx.after_commit(self.hub.timers)

    def _update_task(self, tx: Tx, task: Task) -> None:
        tx.conn.execute(
            "UPDATE tasks SET status = ?, attempts = ?, output = ?, error = ?, started_at = ?, "
            "completed_at = ?, retry_at = ?, try_offset = ? WHERE id = ?",
            (
                task.status.value,
                task.attempts,
                None if task.output is None else dumps(task.output),
                None if task.error is None else dumps(task.error),
                task.started_at,
                task.completed_at,
                task.retry_at,
                task.try_offset,
                task.id,
            ),
        )
        tx.after_commit(lambda: self.hub.changed([task.run_id]))

    async def complete_task(
        self,
        env: str,
        run_id: str,
        attempt: int,
        task_id: str,
        output: Any,
        error: dict[str, str] | None,
        now: int,
        rand: float,
        final: bool = False,
        next_try_offset: int = 0,
        *,
        suspended: bool = False,
    ) -> TaskOutcome:
        """`final`: an error that is not retried, whatever the task's policy.
        `next_try_offset`: kept for the next try, if there is one. `suspended`: the
        attempt may have suspended the run since (see _fenced)."""

        def op(tx: Tx) -> TaskOutcome:
            run = self._fenced(tx.conn, env, run_id, attempt, suspended=suspended)
            row = tx.conn.execute(
                f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = ? AND run_id = ?", (task_id, run_id)
            ).fetchone()
            if row is None:
                raise InvalidArgument("task_complete.task_id", f"no task {task_id!r} in this run")
            task = rows.task_from_row(row)
            if task.status is not TaskStatus.RUNNING:
                return TaskOutcome(task, run)  # already settled: a repeated completion
            if error is None:
                task.status, task.output, task.completed_at = TaskStatus.COMPLETED, output, now
            else:
                task.attempts += 1
                task.error = error
                delay = None
                if task.retry is not None and not final:
                    delay = next_delay_ms(_policy(task.retry), task.attempts, rand)
                if delay is None:
                    task.status, task.completed_at = TaskStatus.ERRORED, now
                else:
                    task.status, task.retry_at = TaskStatus.WAITING, now + delay
                    task.try_offset = next_try_offset
                    if run.status is RunStatus.EXECUTING:
                        self._suspend(tx, run, task.retry_at, now)
                    # Else the run was suspended already: the replay that reaches this
                    # task before its retry time suspends the run again until then.
            self._update_task(tx, task)
            return TaskOutcome(task, run)

        return await self._write(op)

    # -- logs and results -------------------------------------------------------

    async def append_log(
        self, env: str, run_id: str, attempt: int, entry: LogEntry, *, suspended: bool = False
    ) -> bool:
        def op(tx: Tx) -> bool:
            self._fenced(tx.conn, env, run_id, attempt, suspended=suspended)
            level = tx.conn.execute(
                "SELECT v.log_level FROM runs r JOIN job_versions v ON v.env = r.env "
                "AND v.id = r.job_id AND v.version = r.job_version WHERE r.id = ?",
                (run_id,),
            ).fetchone()
            if level is not None and not task_rules.log_recorded(entry.level, level[0]):
                return False
            cursor = tx.conn.execute(
                "INSERT OR IGNORE INTO logs (run_id, seq, level, message, data, time) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    entry.seq,
                    entry.level,
                    entry.message,
                    None if entry.data is None else dumps(entry.data),
                    entry.time,
                ),
            )
            if cursor.rowcount:
                tx.after_commit(lambda: self.hub.changed([run_id]))
            return bool(cursor.rowcount)

        return await self._write(op, lazy=True)

    async def finish_run(
        self,
        env: str,
        run_id: str,
        attempt: int,
        output: Any,
        error: dict[str, str] | None,
        now: int,
    ) -> Run:
        def op(tx: Tx) -> Run:
            run = self._fenced(tx.conn, env, run_id, attempt)
            self._finish(tx, run, output, error, now)
            return run

        # Nobody waits on a run's result (the worker gets no reply), so it shares
        # the next commit; it is durable within LAZY_SECONDS (10 ms).
        return await self._write(op, lazy=True)

    def _finish(
        self, tx: Tx, run: Run, output: Any, error: dict[str, str] | None, now: int
    ) -> None:
        run.status = RunStatus.FAILURE if error is not None else RunStatus.SUCCESS
        run.output, run.error = output, error
        run.completed_at = run.updated_at = now
        ended = tx.conn.execute(
            "UPDATE runs SET status = ?, output = ?, error = ?, completed_at = ?, updated_at = ?, "
            f"worker_id = NULL WHERE id = ? AND status IN {ACTIVE}",
            (
                run.status.value,
                None if output is None else dumps(output),
                None if error is None else dumps(error),
                now,
                now,
                run.id,
            ),
        ).rowcount
        if ended:  # tasks the handler left open end with the run, as on a cancel
            tx.conn.execute(
                "UPDATE tasks SET status = 'CANCELED', completed_at = ? "
                "WHERE run_id = ? AND status IN ('RUNNING', 'WAITING')",
                (now, run.id),
            )
        tx.after_commit(lambda: self.hub.released([run.id]))

    # -- timers -----------------------------------------------------------------

    async def wake_due(self, now: int) -> list[Run]:
        """WAITING runs whose wait or retry time has come go back to QUEUED."""

        def op(tx: Tx) -> list[Run]:
            conn = tx.conn
            due = [
                rows.run_from_row(r)
                for r in conn.execute(
                    f"SELECT {RUN_COLUMNS} FROM runs WHERE status = 'WAITING' AND wait_until <= ? "
                    "ORDER BY wait_until",
                    (now,),
                )
            ]
            for run in due:
                conn.execute(
                    "UPDATE tasks SET status = 'COMPLETED', completed_at = ? WHERE run_id = ? "
                    "AND kind = 'WAIT' AND status = 'WAITING' AND retry_at <= ?",
                    (now, run.id, now),
                )
                conn.execute(
                    "UPDATE runs SET status = 'QUEUED', wait_until = NULL, updated_at = ? "
                    "WHERE id = ?",
                    (now, run.id),
                )
                run.status, run.wait_until, run.updated_at = RunStatus.QUEUED, None, now
            if due:
                tx.after_commit(lambda: self.hub.queued(due, {}))
            return due

        return await self._write(op)

    async def time_out_due(self, now: int) -> list[str]:
        """Active runs past their job's max duration end TIMED_OUT."""

        def op(tx: Tx) -> list[str]:
            ids = [
                r[0]
                for r in tx.conn.execute(
                    f"SELECT id FROM runs WHERE status IN {ACTIVE} AND deadline_at IS NOT NULL "
                    "AND deadline_at <= ?",
                    (now,),
                )
            ]
            self._end_runs(
                tx,
                ids,
                RunStatus.TIMED_OUT,
                now,
                "TimeoutError",
                "the run exceeded the job's max_duration_seconds",
            )
            return ids

        return await self._write(op)


def _policy(spec: dict[str, Any]) -> RetryPolicy:
    fields = {"limit", "factor", "min_timeout_ms", "max_timeout_ms", "randomize"}
    return RetryPolicy(**{k: v for k, v in spec.items() if k in fields})


def _event_json(event: Event) -> dict[str, Any]:
    """An event as a task output: what SendEvent replies, in the proto JSON mapping."""
    from datetime import UTC, datetime, timedelta

    epoch = datetime(1970, 1, 1, tzinfo=UTC)

    def iso(ms: int | None) -> str | None:
        if ms is None:
            return None
        # In whole milliseconds: through a float, times past ~2240 came out 1 ms early.
        text = (epoch + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds")[:-6]
        # A whole second has no fraction in the JSON mapping (as GetEvent shows it).
        return text.removesuffix(".000") + "Z"

    out = {
        "id": event.id,
        "name": event.name,
        "source": event.source,
        "payload": event.payload,
        "context": event.context,
        "timestamp": iso(event.timestamp),
        "deliverAt": iso(event.deliver_at),
        "deliveredAt": iso(event.delivered_at),
        "cancelledAt": iso(event.cancelled_at),
        "createdAt": iso(event.created_at),
        "status": f"EVENT_STATUS_{event.status.value}",
        "accountId": event.account_id or None,
        "deduplicated": event.deduplicated,
        "runs": [
            {
                k: v
                for k, v in {
                    "id": r.id,
                    "jobId": r.job_id,
                    "jobVersion": r.job_version,
                    "eventId": r.event_id,
                    "status": f"RUN_STATUS_{r.status.value}",
                    "attempt": r.attempt or None,
                    "createdAt": iso(r.created_at),
                    "updatedAt": iso(r.updated_at),
                    "startedAt": iso(r.started_at),
                    "completedAt": iso(r.completed_at),
                    "waitUntil": iso(r.wait_until),
                    # As the JSON mapping shows them: an empty path (the payload) is left out.
                    "validationErrors": [
                        {k: e[k] for k in ("path", "message") if e[k]} for e in r.validation_errors
                    ]
                    or None,
                    "accountId": r.account_id or None,
                    "workerId": r.worker_id or None,
                }.items()
                if v is not None
            }
            for r in event.runs
        ],
    }
    return {k: v for k, v in out.items() if v is not None}
