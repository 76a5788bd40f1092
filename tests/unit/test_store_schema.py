"""The schema migrates forward: a file written by an older server keeps its rows."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlite_utils import Database
from tripwire.server.store.schema import MIGRATIONS, migrate


def _at_version(path: Path, version: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    for script in MIGRATIONS[:version]:
        for statement in (s.strip() for s in script.split(";")):
            if statement:
                conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.close()


def test_every_older_file_migrates_to_the_latest_and_keeps_its_rows(tmp_path: Path) -> None:
    for version in range(1, len(MIGRATIONS)):
        path = tmp_path / f"v{version}.db"
        _at_version(path, version)
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute(
            "INSERT INTO jobs (env, id, latest_version, next_fire) "
            "VALUES ('default', 'j', '1.0.0', 5)"
        )
        migrate(Database(conn))
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        row = conn.execute("SELECT id, latest_version, next_fire, retry_at FROM jobs").fetchone()
        assert row == ("j", "1.0.0", 5, None)
        migrate(Database(conn))  # already current: nothing to do, nothing fails
        conn.close()
