"""The files a local server leaves in the repository (`make run`: ./tripwire.db) are
ignored by git."""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path

import pytest

GITIGNORE = Path(__file__).resolve().parents[2] / ".gitignore"


def ignored(name: str) -> bool:
    patterns = [line.strip() for line in GITIGNORE.read_text().splitlines()]
    return any(p and not p.startswith("#") and fnmatchcase(name, p) for p in patterns)


# The database, SQLite's WAL and shared-memory files, and the lock that keeps a second
# server off the database (store/sqlite.py: `<db>.lock`).
@pytest.mark.parametrize(
    "name", ["tripwire.db", "tripwire.db-wal", "tripwire.db-shm", "tripwire.db.lock"]
)
def test_what_make_run_leaves_is_ignored(name: str) -> None:
    assert ignored(name)
