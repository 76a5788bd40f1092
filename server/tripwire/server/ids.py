"""Identifiers: ULIDs (sortable by creation time), prefixed for the kinds we mint."""

from __future__ import annotations

from ulid import ULID


def new_event_id() -> str:
    return str(ULID())


def new_run_id() -> str:
    return f"run_{ULID()}"


def new_task_id() -> str:
    return f"task_{ULID()}"
