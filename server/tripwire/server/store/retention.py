"""Store operations of retention: finished events deleted with their runs."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import TypeVar

from ..models import EventStatus, Purged, RunStatus
from .writer import Tx

T = TypeVar("T")
# Events examined by one write, and rows (runs, tasks, log lines) it deletes at
# most, so that one step holds the writer (and the event loop) a few
# milliseconds: an event is deleted whole, so one whose runs hold more rows than
# this goes alone, in a step of its own.
PURGE_STEP = 50
PURGE_ROWS = 1_000
# Events are numbered as they are stored, so those created since the cutoff come
# last: a scan ends after this many in a row (not at the first, which a clock
# set ahead for a while could have dated past the cutoff).
NEW_IN_A_ROW = 1_000


class RetentionOps:
    def _write(self, operation: Callable[[Tx], T], *, lazy: bool = False) -> asyncio.Future[T]:
        raise NotImplementedError

    async def purge(
        self, cutoff: int, after_seq: int = 0, limit: int = PURGE_STEP, new_in_a_row: int = 0
    ) -> Purged:
        """Delete, of the `limit` events after `after_seq` (oldest first), each one
        that was delivered or cancelled before `cutoff` (ms) and whose runs all
        ended before it, with those runs, their tasks and their logs, stopping
        early past PURGE_ROWS rows. A pending event, or one with a run still active
        or ended since, is kept. In one transaction, so that nothing is ever
        half-deleted. `new_in_a_row`: events created since the cutoff met just
        before `after_seq` (Purged.new_in_a_row carries it from step to step)."""

        def op(tx: Tx) -> Purged:
            conn = tx.conn
            found = conn.execute(
                "SELECT seq, env, id, status, delivered_at, cancelled_at, created_at "
                "FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
            events: list[tuple[int]] = []
            runs: list[tuple[str]] = []
            rows = 0
            new = new_in_a_row
            next_seq: int | None = found[-1][0] if len(found) == limit else None
            for seq, env, event_id, status, delivered_at, cancelled_at, created_at in found:
                if created_at >= cutoff:
                    new += 1
                    if new >= NEW_IN_A_ROW:
                        next_seq = None
                        break
                    continue
                new = 0
                ended_at = delivered_at if status == EventStatus.DELIVERED else cancelled_at
                if status == EventStatus.PENDING or ended_at is None or ended_at >= cutoff:
                    continue
                its_runs = conn.execute(
                    "SELECT id, status, completed_at FROM runs WHERE env = ? AND event_id = ?",
                    (env, event_id),
                ).fetchall()
                if any(
                    not RunStatus(run_status).terminal
                    or completed_at is None
                    or completed_at >= cutoff
                    for _, run_status, completed_at in its_runs
                ):
                    continue
                weight = 1 + sum(
                    1 + _count(conn, "tasks", run_id) + _count(conn, "logs", run_id)
                    for run_id, _, _ in its_runs
                )
                if events and rows + weight > PURGE_ROWS:
                    next_seq = events[-1][0]  # this one starts the next step
                    break
                rows += weight
                events.append((seq,))
                runs += [(run_id,) for run_id, _, _ in its_runs]
            conn.executemany("DELETE FROM logs WHERE run_id = ?", runs)
            conn.executemany("DELETE FROM tasks WHERE run_id = ?", runs)
            conn.executemany("DELETE FROM runs WHERE id = ?", runs)
            conn.executemany("DELETE FROM events WHERE seq = ?", events)
            return Purged(events=len(events), runs=len(runs), next_seq=next_seq, new_in_a_row=new)

        return await self._write(op, lazy=True)


def _count(conn: sqlite3.Connection, table: str, run_id: str) -> int:
    return int(
        conn.execute(f"SELECT COUNT(*) FROM {table} WHERE run_id = ?", (run_id,)).fetchone()[0]
    )
