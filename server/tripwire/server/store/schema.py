"""The SQLite schema, migrated forward on start (PRAGMA user_version)."""

from __future__ import annotations

import sqlite3

from sqlite_utils import Database

MIGRATIONS: list[str] = [
    # 1: events, jobs, runs.
    """
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        env TEXT NOT NULL,
        id TEXT NOT NULL,
        name TEXT NOT NULL,
        source TEXT NOT NULL,
        payload TEXT NOT NULL,
        context TEXT NOT NULL,
        timestamp INTEGER NOT NULL,
        deliver_at INTEGER NOT NULL,
        delivered_at INTEGER,
        cancelled_at INTEGER,
        created_at INTEGER NOT NULL,
        status TEXT NOT NULL,
        account_id TEXT NOT NULL DEFAULT '',
        UNIQUE (env, id)
    );
    CREATE INDEX events_due ON events (deliver_at) WHERE status = 'PENDING';
    CREATE INDEX events_by_name ON events (env, name, seq);

    CREATE TABLE job_versions (
        env TEXT NOT NULL,
        id TEXT NOT NULL,
        version TEXT NOT NULL,
        name TEXT NOT NULL,
        trigger TEXT NOT NULL,
        enabled INTEGER NOT NULL,
        concurrency_limit INTEGER NOT NULL,
        retry TEXT,
        max_duration_seconds INTEGER NOT NULL,
        log_level TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (env, id, version)
    );

    -- One row per job id: its latest version and, for cron/interval jobs, the
    -- schedule's state.
    CREATE TABLE jobs (
        env TEXT NOT NULL,
        id TEXT NOT NULL,
        latest_version TEXT NOT NULL,
        schedule TEXT,
        anchor INTEGER,
        next_fire INTEGER,
        last_fire INTEGER,
        PRIMARY KEY (env, id)
    );
    CREATE INDEX jobs_next_fire ON jobs (next_fire) WHERE next_fire IS NOT NULL;

    CREATE TABLE runs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        env TEXT NOT NULL,
        id TEXT NOT NULL UNIQUE,
        job_id TEXT NOT NULL,
        job_version TEXT NOT NULL,
        event_id TEXT NOT NULL,
        status TEXT NOT NULL,
        attempt INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        started_at INTEGER,
        completed_at INTEGER,
        output TEXT,
        error TEXT,
        validation_errors TEXT,
        account_id TEXT NOT NULL DEFAULT '',
        wait_until INTEGER,
        -- One run per job per event, whatever redelivers the event.
        UNIQUE (env, event_id, job_id)
    );
    CREATE INDEX runs_by_job ON runs (env, job_id, seq);
    """,
    # 2: what workers need: tasks, logs, run deadlines and owners.
    """
    CREATE TABLE tasks (
        id TEXT PRIMARY KEY,
        run_id TEXT NOT NULL,
        parent_id TEXT NOT NULL,
        key TEXT NOT NULL,
        idempotency_key TEXT NOT NULL,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        position INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        params TEXT,
        output TEXT,
        error TEXT,
        retry TEXT,
        started_at INTEGER,
        completed_at INTEGER,
        retry_at INTEGER,
        UNIQUE (run_id, idempotency_key),
        UNIQUE (run_id, position)
    );
    CREATE TABLE logs (
        run_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        level TEXT NOT NULL,
        message TEXT NOT NULL,
        data TEXT,
        time INTEGER NOT NULL,
        PRIMARY KEY (run_id, seq)
    );
    ALTER TABLE runs ADD COLUMN deadline_at INTEGER;
    ALTER TABLE runs ADD COLUMN worker_id TEXT;
    CREATE INDEX runs_waiting ON runs (wait_until) WHERE status = 'WAITING';
    CREATE INDEX runs_deadline ON runs (deadline_at)
        WHERE status IN ('QUEUED', 'EXECUTING', 'WAITING') AND deadline_at IS NOT NULL
    """,
    # 3: a schedule whose next fire could not be computed is tried again at
    # retry_at; next_fire keeps the planned tick, so the retry can still fire it.
    """
    ALTER TABLE jobs ADD COLUMN retry_at INTEGER
    """,
    # 4: where a retried task's next try starts numbering log lines, as the
    # worker that failed the last try said (TaskComplete.next_try_offset).
    """
    ALTER TABLE tasks ADD COLUMN try_offset INTEGER NOT NULL DEFAULT 0
    """,
    # 5: a job version's queue, read a page at a time when workers serve it,
    # without walking the job's finished runs.
    """
    CREATE INDEX runs_queued ON runs (env, job_id, job_version, seq) WHERE status = 'QUEUED'
    """,
    # 6: when a schedule's next fire first failed to compute (retried since at
    # retry_at): the tick it was planning is judged late or not as of then.
    """
    ALTER TABLE jobs ADD COLUMN failed_at INTEGER
    """,
]


def migrate(db: Database) -> None:
    """Apply every migration newer than the file's user_version, each atomically.
    A file a newer server has migrated past what this one knows is refused: this
    code would misread, or write rows the newer code does not expect."""
    current = db.execute("PRAGMA user_version").fetchone()[0]
    if current > len(MIGRATIONS):
        raise sqlite3.DatabaseError(
            f"its schema is version {current}, newer than the {len(MIGRATIONS)} this "
            "server knows: a newer tripwire has used it; run that one"
        )
    for number, script in enumerate(MIGRATIONS, start=1):
        if number <= current:
            continue
        statements = [s.strip() for s in script.split(";") if s.strip()]
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in statements:
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {number}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
