"""The event rules of SPEC §2 as pure functions: defaults, delivery time, resends."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tripwire.server.errors import InvalidArgument
from tripwire.server.events import (
    RESCHEDULE_WINDOW_MS,
    DeliveryOptions,
    EventDraft,
    Limits,
    check_kept,
    deliver_time,
    prepare,
    resend_action,
)
from tripwire.server.models import Event, EventStatus, NewEvent

NOW = 1_700_000_000_000
LIMITS = Limits(max_payload_bytes=1024, max_name_length=10, max_batch=5)


def stored(status: EventStatus, deliver_at: int) -> Event:
    return Event(
        env="default",
        id="e",
        name="n",
        source="s",
        payload={},
        context={},
        timestamp=NOW,
        deliver_at=deliver_at,
        created_at=NOW,
        status=status,
    )


def new(deliver_at: int) -> NewEvent:
    return NewEvent(
        id="e",
        name="n",
        source="s",
        payload={"v": 2},
        context={},
        timestamp=NOW,
        deliver_at=deliver_at,
        account_id="",
    )


@pytest.mark.parametrize(
    ("status", "due_in_ms", "expected"),
    [
        (EventStatus.DELIVERED, 60_000, "unchanged"),
        (EventStatus.CANCELLED, 60_000, "unchanged"),
        (EventStatus.PENDING, 60_000, "reschedule"),
        (EventStatus.PENDING, RESCHEDULE_WINDOW_MS, "reschedule"),
        (EventStatus.PENDING, RESCHEDULE_WINDOW_MS - 1, "unchanged"),
        (EventStatus.PENDING, 0, "unchanged"),
        (EventStatus.PENDING, -10_000, "unchanged"),
    ],
)
def test_resend_action(status: EventStatus, due_in_ms: int, expected: str) -> None:
    assert resend_action(stored(status, NOW + due_in_ms), new(NOW), NOW) == expected


@given(
    status=st.sampled_from(list(EventStatus)),
    due_in=st.integers(-(10**9), 10**9),
    new_due=st.integers(NOW, NOW + 10**9),
)
def test_only_pending_events_far_enough_ahead_are_rescheduled(
    status: EventStatus, due_in: int, new_due: int
) -> None:
    action = resend_action(stored(status, NOW + due_in), new(new_due), NOW)
    assert (action == "reschedule") == (
        status is EventStatus.PENDING and due_in >= RESCHEDULE_WINDOW_MS
    )


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (DeliveryOptions(), NOW),
        (DeliveryOptions(deliver_after=10), NOW + 10_000),
        (DeliveryOptions(deliver_at=NOW + 5), NOW + 5),
        (DeliveryOptions(deliver_at=NOW + 5, deliver_after=100), NOW + 5),
        (DeliveryOptions(deliver_at=NOW - 50_000), NOW),
    ],
)
def test_deliver_time(options: DeliveryOptions, expected: int) -> None:
    assert deliver_time(options, NOW, "options") == expected


def test_negative_deliver_after_names_the_field() -> None:
    with pytest.raises(InvalidArgument, match=r"^options\.deliver_after"):
        deliver_time(DeliveryOptions(deliver_after=-1), NOW, "options")


def test_prepare_applies_defaults() -> None:
    event = prepare(EventDraft(name="n"), DeliveryOptions(), NOW, LIMITS, "event")
    assert len(event.id) == 26 and event.source == "trigger.dev"
    assert event.payload == {} and event.context == {}
    assert event.timestamp == NOW and event.deliver_at == NOW


def test_prepare_keeps_given_values() -> None:
    draft = EventDraft(name="n", payload=[1], context=None, id="x", timestamp=5, source="src")
    event = prepare(draft, DeliveryOptions(account_id="acc"), NOW, LIMITS, "event")
    assert (
        event.id,
        event.payload,
        event.context,
        event.timestamp,
        event.source,
        event.account_id,
    ) == ("x", [1], {}, 5, "src", "acc")


@pytest.mark.parametrize(
    ("draft", "field"),
    [
        (EventDraft(name=""), "events[3].name"),
        (EventDraft(name="x" * 11), "events[3].name"),
        (EventDraft(name="n", id="i" * 257), "events[3].id"),
        (EventDraft(name="n", source="s" * 11), "events[3].source"),
    ],
)
def test_prepare_rejects_naming_the_field(draft: EventDraft, field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        prepare(draft, DeliveryOptions(), NOW, LIMITS, "events[3]")
    assert err.value.field == field


@pytest.mark.parametrize(
    "payload_given, context_given, payload, context, refused",
    [
        # Only one part given: the two together are counted (as JSON here: 512 + 512).
        (True, False, {"p": "x" * 504}, {"c": "y" * 504}, ""),
        (True, False, {"p": "x" * 504}, {"c": "y" * 505}, "e.payload"),
        (False, True, {"p": "x" * 505}, {"c": "y" * 504}, "e.context"),
        # Both given: the request was counted already. Neither: nothing changed.
        (True, True, {"p": "x" * 2000}, {}, ""),
        (False, False, {"p": "x" * 2000}, {}, ""),
    ],
)
def test_a_reschedule_keeping_a_stored_part_is_counted_whole(
    payload_given: bool, context_given: bool, payload: object, context: object, refused: str
) -> None:
    event = stored(EventStatus.PENDING, NOW + 60_000)
    event.payload, event.context = payload, context
    resend = replace(new(NOW + 90_000), payload_given=payload_given, context_given=context_given)
    if not refused:
        check_kept(event, resend, LIMITS, "e")
        return
    with pytest.raises(InvalidArgument) as err:
        check_kept(event, resend, LIMITS, "e")
    kept = "context" if refused == "e.payload" else "payload"
    assert err.value.message == (
        f"{refused}: payload and context would be 1025 bytes with the stored {kept} kept, "
        "over the limit of 1024 bytes"
    )
