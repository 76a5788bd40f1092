"""Keyword options of the client methods, as typed dicts (for ``**options``).

Both client flavours take them as keyword arguments, e.g.
``client.send_event(event, deliver_after=60)``; type checkers know every key. Send
options may also come as a dict after the event:
``client.send_event(event, {"deliver_after": 60})``, and ``io.send_event`` likewise.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypedDict

__all__ = [
    "EventFilters",
    "InvokeOptions",
    "JobOptions",
    "PageOptions",
    "RunFilters",
    "SendOptions",
]


class SendOptions(TypedDict, total=False):
    """Delivery options of ``send_event`` and ``send_events``."""

    deliver_at: datetime | None
    deliver_after: int | None
    account_id: str | None


def send_options(given: SendOptions | None, more: SendOptions) -> SendOptions:
    """Send options as a dict after the event, as keywords, or both (keywords win)."""
    if given is None:
        return more
    if not isinstance(given, Mapping):
        raise TypeError(f"options must be a dict such as {{'deliver_after': 60}}, got {given!r}")
    merged: dict[str, Any] = {**given, **more}
    return merged  # type: ignore[return-value]


class PageOptions(TypedDict, total=False):
    page_size: int | None
    page_token: str | None


class EventFilters(PageOptions, total=False):
    """Options of ``list_events``; ``status`` is PENDING, DELIVERED or CANCELLED."""

    name: str | None
    status: str | None


class RunFilters(PageOptions, total=False):
    """Options of ``list_runs``; ``status`` is a run status such as QUEUED or SUCCESS."""

    job_id: str | None
    event_id: str | None
    status: str | None


class JobOptions(TypedDict, total=False):
    """Options of ``register_job`` besides the required ``version`` and ``trigger``.

    ``retry`` takes some of limit, factor, min_timeout_ms, max_timeout_ms, randomize;
    ``log_level`` is LOG, ERROR, WARN, INFO or DEBUG.
    """

    name: str | None
    enabled: bool
    concurrency_limit: int
    max_duration_seconds: int
    retry: Mapping[str, Any] | None
    log_level: str | None


class InvokeOptions(TypedDict, total=False):
    """Options of ``invoke_job``: the same ``idempotency_key`` returns the first run."""

    context: Any
    idempotency_key: str | None
    account_id: str | None
