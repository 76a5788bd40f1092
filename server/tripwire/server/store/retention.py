"""Store operations of retention: finished events deleted with their runs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from ..models import EventStatus, Purged, RunStatus
from .writer import Tx

T = TypeVar("T")
# Events examined by one write: each is a few deletes, so that one step holds the
# writer (and the event loop) for a few milliseconds at most.
PURGE_STEP = 200


class RetentionOps:
    def _write(self, operation: Callable[[Tx], T], *, lazy: bool = False) -> asyncio.Future[T]:
        raise NotImplementedError

    async def purge(self, cutoff: int, after_seq: int = 0, limit: int = PURGE_STEP) -> Purged:
        """Delete, of the `limit` events after `after_seq` (oldest first), each one
        that was delivered or cancelled before `cutoff` (ms) and whose runs all
        ended before it, with those runs, their tasks and their logs. A pending
        event, or one with a run still active or ended since, is kept. In one
        transaction, so that nothing is ever half-deleted."""

        def op(tx: Tx) -> Purged:
            conn = tx.conn
            found = conn.execute(
                "SELECT seq, env, id, status, delivered_at, cancelled_at, created_at "
                "FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
            events: list[tuple[int]] = []
            runs: list[tuple[str]] = []
            next_seq: int | None = found[-1][0] if len(found) == limit else None
            for seq, env, event_id, status, delivered_at, cancelled_at, created_at in found:
                if created_at >= cutoff:
                    # Events are numbered as they are stored: the rest are newer.
                    next_seq = None
                    break
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
                events.append((seq,))
                runs += [(run_id,) for run_id, _, _ in its_runs]
            conn.executemany("DELETE FROM logs WHERE run_id = ?", runs)
            conn.executemany("DELETE FROM tasks WHERE run_id = ?", runs)
            conn.executemany("DELETE FROM runs WHERE id = ?", runs)
            conn.executemany("DELETE FROM events WHERE seq = ?", events)
            return Purged(events=len(events), runs=len(runs), next_seq=next_seq)

        return await self._write(op, lazy=True)
