"""Events: request validation, defaults, and the resend rule.

Pure functions plus `EventService`, which the gRPC edge calls. Storage and
delivery happen in one store operation so that an event, its matching and
its runs commit together.
"""

from __future__ import annotations

import asyncio
import json
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from .errors import InvalidArgument, NotFound
from .ids import new_event_id
from .matching import JobIndex, Verdict, call_budget
from .models import DEFAULT_SOURCE, Event, EventStatus, NewEvent, Page, Run

if TYPE_CHECKING:
    from .store import Store

# A pending event due at least this far ahead is rescheduled by a resend with
# the same id; one due sooner is left alone (it may be delivering right now).
RESCHEDULE_WINDOW_MS = 5_000
MAX_ID_LENGTH = 256
# What a name or id may not hold, since it could not be shown in a table or
# typed back on a command line: control characters (C0, DEL, C1), the line and
# paragraph separators, and the bidirectional controls (which reorder the rest
# of a line as shown).
_UNSHOWABLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)
# Something that shows: a value without any is blank. Not spaces, nor what has
# no glyph of its own: format characters (the soft hyphen, zero-width ones,
# word joiners, tags...), Hangul fillers, the blank braille pattern, the
# combining grapheme joiner, variation selectors.
_SHOWS = re.compile(
    "[^\\s\u00ad\u034f\u0600-\u0605\u061c\u06dd\u070f\u115f\u1160\u17b4\u17b5"
    "\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f\u2800\u3164\ufe00-\ufe0f"
    "\ufeff\uffa0\ufff9-\ufffb\U000e0000-\U000e0fff]"
)
# The range of google.protobuf.Timestamp (0001-01-01 to 9999-12-31 UTC): a time
# outside it could be stored but never shown again.
MIN_TIME_MS = -62_135_596_800_000
MAX_TIME_MS = 253_402_300_799_999


@dataclass(frozen=True)
class EventDraft:
    """An event as a request gave it, before defaults."""

    name: str
    payload: Any = None
    context: Any = None
    id: str = ""
    timestamp: int | None = None
    source: str = ""


@dataclass(frozen=True)
class DeliveryOptions:
    deliver_at: int | None = None
    deliver_after: int = 0
    account_id: str = ""
    # Where the request holds them, for the errors naming one of them.
    field: str = "options"


def json_bytes(value: Any) -> int:
    """A JSON value's size as compact UTF-8 JSON (the server measures a value as
    its request encoded it, a protobuf Value, which comes to about as much)."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


@dataclass(frozen=True)
class Limits:
    max_payload_bytes: int
    max_name_length: int
    max_batch: int
    # How many bytes a payload or context counts for against max_payload_bytes.
    value_bytes: Callable[[Any], int] = json_bytes


def resend_action(current: Event, new: NewEvent, now: int) -> Literal["unchanged", "reschedule"]:
    """What a second send of a known id does (SPEC §2; v2's reschedule, minus its revival bug)."""
    if current.status is not EventStatus.PENDING:
        return "unchanged"  # delivered or cancelled: never touched, never revived
    if current.deliver_at - now >= RESCHEDULE_WINDOW_MS:
        return "reschedule"
    return "unchanged"


def deliver_time(options: DeliveryOptions, now: int, field: str) -> int:
    if len(options.account_id) > MAX_ID_LENGTH:
        raise InvalidArgument(f"{field}.account_id", f"is longer than {MAX_ID_LENGTH} characters")
    if options.account_id:
        check_text(options.account_id, f"{field}.account_id", MAX_ID_LENGTH)
    if options.deliver_after < 0:
        raise InvalidArgument(f"{field}.deliver_after", "must not be negative")
    if options.deliver_at is not None:
        _check_time(options.deliver_at, f"{field}.deliver_at")
        return max(options.deliver_at, now)
    at = now + options.deliver_after * 1000
    if at > MAX_TIME_MS:
        raise InvalidArgument(f"{field}.deliver_after", "is past the year 9999")
    return at


def _check_time(millis: int, field: str) -> None:
    if not MIN_TIME_MS <= millis <= MAX_TIME_MS:
        raise InvalidArgument(field, "is outside the years 0001 to 9999")


def check_text(value: str, field: str, limit: int) -> None:
    """A given name, source or id: not blank, nothing that could not be shown on one
    line of a table as it is, at most `limit`."""
    if len(value) > limit:
        raise InvalidArgument(field, f"is longer than the limit of {limit} characters")
    if (found := _UNSHOWABLE.search(value)) is not None:
        char = found.group()
        kind = (
            "control character"
            if unicodedata.category(char) == "Cc"
            else "line separator"
            if char == "\u2028"
            else "paragraph separator"
            if char == "\u2029"
            else "bidirectional control"
        )
        raise InvalidArgument(field, f"holds the {kind} U+{ord(char):04X} at {found.start()}")
    if value and _SHOWS.search(value) is None:
        raise InvalidArgument(field, "is blank")


def prepare(
    draft: EventDraft, options: DeliveryOptions, now: int, limits: Limits, field: str
) -> NewEvent:
    """Validate one event and apply the defaults."""
    if not draft.name:
        raise InvalidArgument(f"{field}.name", "is required")
    check_text(draft.name, f"{field}.name", limits.max_name_length)
    if draft.id:
        check_text(draft.id, f"{field}.id", MAX_ID_LENGTH)
    if draft.source:
        check_text(draft.source, f"{field}.source", limits.max_name_length)
    if draft.timestamp is not None:
        _check_time(draft.timestamp, f"{field}.timestamp")
    return NewEvent(
        id=draft.id or new_event_id(),
        minted_id=not draft.id,
        name=draft.name,
        source=draft.source or DEFAULT_SOURCE,
        payload={} if draft.payload is None else draft.payload,
        context={} if draft.context is None else draft.context,
        timestamp=now if draft.timestamp is None else draft.timestamp,
        deliver_at=deliver_time(options, now, options.field),
        account_id=options.account_id,
        payload_given=draft.payload is not None,
        context_given=draft.context is not None,
    )


def check_kept(event: Event | NewEvent, new: NewEvent, limits: Limits, field: str) -> None:
    """A resend that reschedules a pending event but gives only its payload or only
    its context keeps the stored other: the two together are held to the limit a
    request's are, naming the part the resend gave."""
    if new.payload_given == new.context_given:
        return  # both given (checked in the request) or neither (nothing changed)
    # {} is what an absent part is stored as, and the request counted it 0.
    size = sum(limits.value_bytes(v) for v in (event.payload, event.context) if v != {})
    if size > limits.max_payload_bytes:
        given, kept = ("payload", "context") if new.payload_given else ("context", "payload")
        raise InvalidArgument(
            f"{field}.{given}",
            f"payload and context would be {size} bytes with the stored {kept} kept, "
            f"over the limit of {limits.max_payload_bytes} bytes",
        )


def check_not_a_fire_id(index: JobIndex, env: str, event_id: str, field: str) -> None:
    """`<job id>:<ms>` is the id of one fire of a scheduled job (SPEC §4). A client
    event holding it would make that fire look done already, so that it never
    happened: such an id is refused while the job has a schedule."""
    job_id, colon, millis = event_id.rpartition(":")
    if not (colon and millis.isascii() and millis.isdigit()):
        return
    compiled = index.get(env, job_id)
    if compiled is not None and compiled.job.trigger_kind in ("cron", "interval"):
        raise InvalidArgument(
            field,
            f"{event_id!r} is reserved: <job id>:<ms> names a fire of the schedule of job "
            f"{job_id!r}",
        )


class EventService:
    def __init__(self, store: Store, index: JobIndex, limits: Limits, clock: Callable[[], int]):
        self.store = store
        self.index = index
        self.limits = limits
        self.clock = clock

    async def send(
        self,
        env: str,
        drafts: Sequence[EventDraft],
        options: DeliveryOptions,
        *,
        batch: bool,
        check: Callable[[list[Event]], None] | None = None,
    ) -> list[Event]:
        """`check` sees what would be stored, before the commit: if it raises (a reply
        no client could read, say), nothing is."""
        if batch:
            if not drafts:
                raise InvalidArgument("events", "must contain at least one event")
            if len(drafts) > self.limits.max_batch:
                raise InvalidArgument(
                    "events",
                    f"{len(drafts)} events exceed the batch limit of {self.limits.max_batch}",
                )
        now = self.clock()
        prepared = [
            prepare(d, options, now, self.limits, f"events[{i}]" if batch else "event")
            for i, d in enumerate(drafts)
        ]
        for i, event in enumerate(prepared):
            if not event.minted_id:
                where = f"events[{i}].id" if batch else "event.id"
                check_not_a_fire_id(self.index, env, event.id, where)

        def kept(i: int, event: Event, new: NewEvent) -> None:
            check_kept(event, new, self.limits, f"events[{i}]" if batch else "event")

        return await self.store.ingest(env, prepared, now, check, kept)

    async def get(self, env: str, event_id: str) -> tuple[Event, list[Run]]:
        _require_id(event_id, "id")
        event = await self.store.get_event(env, event_id)
        if event is None:
            raise NotFound(f"event {event_id!r} not found")
        return event, await self.store.event_runs(env, event_id)

    async def find(
        self, env: str, *, name: str, status: str, limit: int, before: tuple[str, int] | None
    ) -> Page[Event]:
        return await self.store.list_events(
            env, name=name, status=status, limit=limit, before=before
        )

    async def cancel(self, env: str, event_id: str) -> Event:
        _require_id(event_id, "id")
        return await self.store.cancel_event(env, event_id, self.clock())

    async def cancel_runs(self, env: str, event_id: str) -> tuple[list[str], list[Run]]:
        _require_id(event_id, "id")
        return await self.store.cancel_runs_for_event(env, event_id, self.clock())

    async def match(
        self, env: str, draft: EventDraft
    ) -> tuple[NewEvent, EventStatus, list[Verdict]]:
        """Dry run: which jobs the event would trigger sent now, and why not the
        others; the event as it would stand after the send, and its status. A known
        id is treated as SendEvent would: refused if reserved; a pending event due
        later is rescheduled to now (with the payload and context the send gives);
        any other is left as it is, and no job runs."""
        now = self.clock()
        event = prepare(draft, DeliveryOptions(), now, self.limits, "event")
        known, unchanged, status = None, False, EventStatus.DELIVERED
        if not event.minted_id:
            check_not_a_fire_id(self.index, env, event.id, "event.id")
            known = await self.store.get_event(env, event.id)
        if known is not None:
            unchanged = resend_action(known, event, now) == "unchanged"
            given = event
            event = replace(
                event,
                name=known.name,
                source=known.source,
                payload=event.payload if event.payload_given and not unchanged else known.payload,
                context=event.context if event.context_given and not unchanged else known.context,
                timestamp=known.timestamp,
                account_id=known.account_id,
            )
            status = known.status if unchanged else status
            if not unchanged:  # as SendEvent would refuse it
                check_kept(event, given, self.limits, "event")
        verdicts = await asyncio.to_thread(self._explain, env, event)
        if known is None or not unchanged:
            return event, status, verdicts
        reason = (
            f"a send with id {event.id!r} creates no run: "
            + {
                EventStatus.DELIVERED: "that event was delivered already",
                EventStatus.CANCELLED: "that event was cancelled",
                EventStatus.PENDING: "that event is pending, due within "
                f"{RESCHEDULE_WINDOW_MS // 1000} s, and is matched when delivered",
            }[known.status]
        )
        unmatched = [
            replace(v, matched=False, reason=reason, validation_errors=()) for v in verdicts
        ]
        return event, status, unmatched

    def _explain(self, env: str, event: NewEvent) -> list[Verdict]:
        """On a thread of its own: the loop serves everything else meanwhile. With
        the budget of a send, so that what a send would refuse is refused here."""
        with call_budget():
            return self.index.explain(env, event.name, event.source, event.payload, event.context)


def _require_id(value: str, field: str) -> None:
    if not value:
        raise InvalidArgument(field, "is required")
