"""Schedules: planned times of cron and interval triggers, and what fires after a delay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tripwire.server import schedules
from tripwire.server.errors import InvalidArgument
from tripwire.server.schedules import (
    MAX_MISSED_COUNT,
    ON_TIME,
    Decision,
    Schedule,
    decide,
    first_fire,
    next_after,
    scheduled_event_id,
    scheduled_payload,
    validate,
)


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, us: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, us, tzinfo=UTC)


def cron(expr: str, tz: str = "", catch_up: bool = False) -> Schedule:
    return Schedule(kind="cron", cron=expr, timezone=tz, catch_up=catch_up)


def every(seconds: int, catch_up: bool = False) -> Schedule:
    return Schedule(kind="interval", seconds=seconds, catch_up=catch_up)


ANCHOR = utc(2024, 1, 1, 10, 0)
SEC = timedelta(seconds=1)


MINUTE = timedelta(minutes=1)
_HOUR = timedelta(hours=1)


def walls_passed(t: datetime, tz: ZoneInfo) -> list[datetime]:
    """The wall-clock minutes the clocks of `tz` pass at the whole UTC minute `t`: the
    one they show, and when they have just jumped forward, every one they skipped."""
    shown = t.astimezone(tz).replace(tzinfo=None)
    before = (t - MINUTE).astimezone(tz).replace(tzinfo=None)
    walls, wall = [shown], shown - MINUTE
    while wall > before:
        walls.append(wall)
        wall -= MINUTE
    return walls


def is_planned(schedule: Schedule, t: datetime, anchor: datetime) -> bool:
    """The definition, checked by brute force: a cron instant is planned when a wall
    time the clocks pass then matches the expression."""
    if schedule.kind == "interval":
        return t > anchor and (t - anchor) % timedelta(seconds=schedule.seconds) == timedelta(0)
    if t.second or t.microsecond:
        return False
    walls = walls_passed(t, ZONES[schedule.timezone])
    return any(cron_matches(schedule.cron, wall) for wall in walls)


def cron_values(text: str, low: int, high: int) -> set[int]:
    """One field's values, read as crontab(5) and v2's cron-parser read it."""
    values: set[int] = set()
    for part in text.split(","):
        span, _, step = part.partition("/")
        if span == "*":
            first, last = low, high
        elif "-" in span:
            first, last = (int(n) for n in span.split("-"))
        else:
            first = int(span)
            last = high if step else first
        values |= set(range(first, last + 1, int(step or 1)))
    return values


def cron_matches(expr: str, wall: datetime) -> bool:
    """Whether a wall-clock minute matches a numeric 5-field expression; the days
    match as in cron-parser: both day fields when either leaves no value out, else
    either of them."""
    minute, hour, dom, month, dow = expr.split()
    days = cron_values(dom, 1, 31)
    written = cron_values(dow, 0, 7)
    weekdays = {d % 7 for d in written}
    on_day, on_weekday = wall.day in days, wall.isoweekday() % 7 in weekdays
    # cron-parser's day of the week is whole only with 7 written in it.
    if days == set(range(1, 32)) or (7 in written and weekdays == set(range(7))):
        day = on_day and on_weekday
    else:
        day = on_day or on_weekday
    return (
        day
        and wall.minute in cron_values(minute, 0, 59)
        and wall.hour in cron_values(hour, 0, 23)
        and wall.month in cron_values(month, 1, 12)
    )


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "schedule",
    [
        cron("* * * * *"),
        cron("0 9 * * 1-5", "Europe/Paris"),
        cron("0 0 29 2 *"),
        cron("*/15 8-18 * jan,mar mon-fri", "America/New_York"),
        cron("0 0 * * thu"),
        cron("  0   0 * * *  ", "UTC"),
        every(1),
        every(31_536_000),
    ],
    ids=lambda s: f"{s.kind}:{s.cron or s.seconds}:{s.timezone}",
)
def test_validate_accepts(schedule: Schedule) -> None:
    validate(schedule, "job.trigger")


@pytest.mark.parametrize(
    ("schedule", "path", "words"),
    [
        (cron(""), "job.trigger.cron", "has 0 fields"),
        (cron("* * * *"), "job.trigger.cron", "has 4 fields"),
        (cron("0 * * * * *"), "job.trigger.cron", "has 6 fields"),
        (cron("0 0 * * * * 2030"), "job.trigger.cron", "has 7 fields"),
        (cron("@daily"), "job.trigger.cron", "has 1 fields"),
        (cron("61 * * * *"), "job.trigger.cron", "61 is not a minute: expected 0 to 59"),
        (cron("*/0 * * * *"), "job.trigger.cron", "steps by 0"),
        (cron("0 0 * * 8"), "job.trigger.cron", "8 is not a day of the week"),
        (cron("0 0 * mon *"), "job.trigger.cron", "'mon' is not a month"),
        (cron("0 0 * * jan"), "job.trigger.cron", "'jan' is not a day of the week"),
        (cron("0-99999999 * * * *"), "job.trigger.cron", "99999999 is not a minute"),
        (cron("a b c d e"), "job.trigger.cron", "not a valid cron"),
        (cron("0 0 31 2 *"), "job.trigger.cron", "can never fire: no date matches it"),
        (cron("0 0 L * *"), "job.trigger.cron", "L, W, # and ?"),
        (cron("0 0 * * 1#2"), "job.trigger.cron", "L, W, # and ?"),
        (cron("0 0 15W * *"), "job.trigger.cron", "L, W, # and ?"),
        (cron("0 0 ? * *"), "job.trigger.cron", "L, W, # and ?"),
        (cron("5-1 * * * *"), "job.trigger.cron", "'5-1' runs backwards"),
        (cron("0 23-2/2 * * *"), "job.trigger.cron", "'23-2' runs backwards"),
        (cron("0 0 * * fri-mon"), "job.trigger.cron", "'fri-mon' runs backwards"),
        (cron("0 0 * dec-jan *"), "job.trigger.cron", "'dec-jan' runs backwards"),
        (cron("H * * * *"), "job.trigger.cron", "H, R"),
        (cron("0 R * * *"), "job.trigger.cron", "H, R"),
        (cron("0 0 * * *", "Mars/Olympus"), "job.trigger.timezone", "IANA"),
        (cron("0 0 * * *", "../../etc/passwd"), "job.trigger.timezone", "IANA"),
        (cron("0 0 * * *", "localtime"), "job.trigger.timezone", "the host's own setting"),
        (cron("0 0 * * *", "posixrules"), "job.trigger.timezone", "the host's own setting"),
        (cron("0 0 * * *", "right/UTC"), "job.trigger.timezone", "the host's own setting"),
        (cron("0 0 * * *", "/etc/localtime"), "job.trigger.timezone", "IANA"),
        (cron("0 0 * * *", "Europe"), "job.trigger.timezone", "IANA"),
        (cron("0 9 * * " + "1," * 600 + "2"), "job.trigger.cron", "over the limit of 1024"),
        (cron("0 0 * * *", "Europe/" + "x" * 60), "job.trigger.timezone", "longer than any IANA"),
        (every(0), "job.trigger.seconds", "between 1 and"),
        (every(-5), "job.trigger.seconds", "between 1 and"),
        (every(31_536_001), "job.trigger.seconds", "between 1 and"),
    ],
    ids=lambda x: x if isinstance(x, str) and x.startswith("job") else None,
)
def test_validate_rejects(schedule: Schedule, path: str, words: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate(schedule, "job.trigger")
    assert info.value.field == path
    assert words in str(info.value)


def test_a_cron_over_the_length_limit_is_refused_before_it_is_parsed_or_cached() -> None:
    # Parsing costs time with length, and what is parsed is cached.
    before = schedules._standard.cache_info().currsize
    never = ",".join(["0"] * 600) + " 0 30 2 *"  # would never fire, too
    with pytest.raises(InvalidArgument, match="over the limit"):
        validate(cron(never), "job.trigger")
    assert schedules._standard.cache_info().currsize == before


# --- next_after ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "tz", "after", "expected"),
    [
        ("*/15 * * * *", "", utc(2024, 1, 1, 10, 7), utc(2024, 1, 1, 10, 15)),
        ("*/15 * * * *", "", utc(2024, 1, 1, 10, 15), utc(2024, 1, 1, 10, 30)),
        ("*/15 * * * *", "", utc(2024, 1, 1, 10, 14, 59, 999999), utc(2024, 1, 1, 10, 15)),
        ("*/15 * * * *", "", utc(2024, 1, 1, 10, 15, 0, 1), utc(2024, 1, 1, 10, 30)),
        ("0 9 * * 1-5", "", utc(2024, 1, 5, 9), utc(2024, 1, 8, 9)),  # Friday -> Monday
        ("0 0 29 2 *", "", utc(2024, 3, 1), utc(2028, 2, 29)),
        ("0 0 1 1 *", "", utc(2024, 12, 31, 23, 59, 59), utc(2025, 1, 1)),
        ("0 9 * * *", "Europe/Paris", utc(2024, 1, 15), utc(2024, 1, 15, 8)),  # CET
        ("0 9 * * *", "Europe/Paris", utc(2024, 7, 15), utc(2024, 7, 15, 7)),  # CEST
        # Spring forward in Paris (02:00 -> 03:00 on 2024-03-31): a time in the gap fires
        # at the jump, and only that day.
        ("30 2 * * *", "Europe/Paris", utc(2024, 3, 30, 12), utc(2024, 3, 31, 1)),
        ("30 2 * * *", "Europe/Paris", utc(2024, 3, 31, 1), utc(2024, 4, 1, 0, 30)),
        ("0 * * * *", "Europe/Paris", utc(2024, 3, 31, 0, 30), utc(2024, 3, 31, 1)),
        ("0 * * * *", "Europe/Paris", utc(2024, 3, 31, 1), utc(2024, 3, 31, 2)),
        # Fall back in Paris (03:00 -> 02:00 on 2024-10-27): 02:30 happens twice.
        ("30 2 * * *", "Europe/Paris", utc(2024, 10, 26, 12), utc(2024, 10, 27, 0, 30)),
        ("30 2 * * *", "Europe/Paris", utc(2024, 10, 27, 0, 30), utc(2024, 10, 27, 1, 30)),
        ("30 2 * * *", "Europe/Paris", utc(2024, 10, 27, 1, 30), utc(2024, 10, 28, 1, 30)),
        # New York: 09:00 is 14:00Z in EST and 13:00Z in EDT (from 2024-03-10).
        ("0 9 * * *", "America/New_York", utc(2024, 3, 8, 20), utc(2024, 3, 9, 14)),
        ("0 9 * * *", "America/New_York", utc(2024, 3, 9, 20), utc(2024, 3, 10, 13)),
        ("30 1 * * *", "America/New_York", utc(2024, 11, 3), utc(2024, 11, 3, 5, 30)),
        ("30 1 * * *", "America/New_York", utc(2024, 11, 3, 5, 30), utc(2024, 11, 3, 6, 30)),
        ("0 12 * * *", "Asia/Kolkata", utc(2024, 6, 1), utc(2024, 6, 1, 6, 30)),
    ],
)
def test_cron_next_after(expr: str, tz: str, after: datetime, expected: datetime) -> None:
    got = next_after(cron(expr, tz), after, ANCHOR)
    assert got == expected
    assert got.tzinfo is UTC


def test_next_after_accepts_any_aware_datetime_and_returns_utc() -> None:
    paris_noon = datetime(2024, 1, 15, 12, tzinfo=timezone(timedelta(hours=1)))
    got = next_after(cron("0 * * * *"), paris_noon, ANCHOR)
    assert got == utc(2024, 1, 15, 12)
    assert got.tzinfo is UTC


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        next_after(every(60), datetime(2024, 1, 1), ANCHOR)


@pytest.mark.parametrize(
    ("seconds", "after", "expected"),
    [
        (60, ANCHOR, ANCHOR + 60 * SEC),  # k >= 1: the anchor itself is not planned
        (60, ANCHOR - timedelta(days=3), ANCHOR + 60 * SEC),
        (60, ANCHOR + 59.999 * SEC, ANCHOR + 60 * SEC),
        (60, ANCHOR + 60 * SEC, ANCHOR + 120 * SEC),
        (60, ANCHOR + 61 * SEC, ANCHOR + 120 * SEC),
        (7, ANCHOR + timedelta(days=365), ANCHOR + (365 * 86400 // 7 + 1) * 7 * SEC),
        (31_536_000, ANCHOR, ANCHOR + 31_536_000 * SEC),
    ],
)
def test_interval_next_after(seconds: int, after: datetime, expected: datetime) -> None:
    assert next_after(every(seconds), after, ANCHOR) == expected


def test_interval_keeps_the_anchors_sub_second_offset() -> None:
    anchor = utc(2024, 1, 1, 10, 0, 0, 123456)
    assert next_after(every(30), utc(2024, 1, 1, 10, 5), anchor) == utc(
        2024, 1, 1, 10, 5, 0, 123456
    )


def test_first_fire() -> None:
    assert first_fire(every(20), ANCHOR) == ANCHOR + 20 * SEC
    assert first_fire(cron("0 * * * *"), ANCHOR) == ANCHOR + timedelta(hours=1)
    assert first_fire(cron("0 * * * *"), ANCHOR + SEC) == ANCHOR + timedelta(hours=1)


# --- decide ---------------------------------------------------------------------------------

GRACE = timedelta(seconds=10)
T = ANCHOR


@pytest.mark.parametrize(
    ("schedule", "next_fire", "now", "expected"),
    [
        pytest.param(every(60), T + 60 * SEC, T + 59 * SEC, None, id="not due"),
        pytest.param(
            every(60),
            T + 60 * SEC,
            T + 60 * SEC,
            Decision(T + 60 * SEC, T + 120 * SEC, 0),
            id="on time",
        ),
        pytest.param(
            every(60),
            T + 60 * SEC,
            T + 70 * SEC,
            Decision(T + 60 * SEC, T + 120 * SEC, 0),
            id="late within grace",
        ),
        pytest.param(
            every(60),
            T + 60 * SEC,
            T + 71 * SEC,
            Decision(None, T + 120 * SEC, 1),
            id="late beyond grace",
        ),
        pytest.param(
            every(60),
            T + 60 * SEC,
            T + 3605 * SEC,
            Decision(T + 3600 * SEC, T + 3660 * SEC, 59),
            id="downtime, latest within grace",
        ),
        pytest.param(
            every(60),
            T + 60 * SEC,
            T + 3630 * SEC,
            Decision(None, T + 3660 * SEC, 60),
            id="downtime skips everything",
        ),
        pytest.param(
            every(60, catch_up=True),
            T + 60 * SEC,
            T + 3630 * SEC,
            Decision(T + 3600 * SEC, T + 3660 * SEC, 59),
            id="downtime with catch-up fires the last tick",
        ),
        pytest.param(
            every(60),
            T + 90 * SEC,
            T + 100 * SEC,
            Decision(None, T + 120 * SEC, 0),
            id="next_fire off the grid",
        ),
        pytest.param(
            cron("0 * * * *"),
            utc(2024, 1, 1, 10),
            utc(2024, 1, 1, 10),
            Decision(utc(2024, 1, 1, 10), utc(2024, 1, 1, 11), 0),
            id="cron exactly on the tick",
        ),
        pytest.param(
            cron("0 * * * *"),
            utc(2024, 1, 1, 10),
            utc(2024, 1, 1, 10, 0, 9),
            Decision(utc(2024, 1, 1, 10), utc(2024, 1, 1, 11), 0),
            id="cron late within grace",
        ),
        pytest.param(
            cron("0 * * * *"),
            utc(2024, 1, 1, 10),
            utc(2024, 1, 1, 13, 30),
            Decision(None, utc(2024, 1, 1, 14), 4),
            id="cron downtime",
        ),
        pytest.param(
            cron("0 * * * *", catch_up=True),
            utc(2024, 1, 1, 10),
            utc(2024, 1, 1, 13, 30),
            Decision(utc(2024, 1, 1, 13), utc(2024, 1, 1, 14), 3),
            id="cron downtime with catch-up",
        ),
        pytest.param(
            cron("* * * * *"),
            utc(2024, 1, 1),
            utc(2024, 1, 10),
            Decision(utc(2024, 1, 10), utc(2024, 1, 10, 0, 1), MAX_MISSED_COUNT),
            id="cron missed count is capped",
        ),
        pytest.param(
            cron("30 2 * * *", "Europe/Paris"),
            utc(2024, 10, 27, 0, 30),
            utc(2024, 10, 27, 1, 30),
            Decision(utc(2024, 10, 27, 1, 30), utc(2024, 10, 28, 1, 30), 1),
            id="cron repeated hour",
        ),
    ],
)
def test_decide(
    schedule: Schedule, next_fire: datetime, now: datetime, expected: Decision | None
) -> None:
    assert decide(schedule, next_fire, now, ANCHOR, GRACE) == expected


@pytest.mark.parametrize(
    ("now", "tried", "expected"),
    [
        # The tick was due, and on time, at the failed try: it fires at the retry.
        pytest.param(
            utc(2024, 1, 1, 11, 2),
            utc(2024, 1, 1, 11, 0, 1),
            Decision(utc(2024, 1, 1, 11), utc(2024, 1, 1, 12), 0),
            id="on time at the failed try",
        ),
        # Already past the grace at the failed try: skipped, as it would have been.
        pytest.param(
            utc(2024, 1, 1, 11, 3),
            utc(2024, 1, 1, 11, 2),
            Decision(None, utc(2024, 1, 1, 12), 1),
            id="late at the failed try",
        ),
        # The retry comes a day late (the server was down): the latest tick, planned
        # after the failed try, is judged now, and skipped like any late one.
        pytest.param(
            utc(2024, 1, 2, 11, 30),
            utc(2024, 1, 1, 11, 0, 1),
            Decision(None, utc(2024, 1, 2, 12), 25),
            id="a newer tick is judged now",
        ),
    ],
)
def test_a_retry_judges_the_tick_due_at_the_failed_try_as_of_then(
    now: datetime, tried: datetime, expected: Decision
) -> None:
    hourly = every(3600)
    assert decide(hourly, utc(2024, 1, 1, 11), now, ANCHOR, GRACE, tried) == expected


# --- event id and payload -------------------------------------------------------------------


def test_scheduled_event_id() -> None:
    assert scheduled_event_id("daily-report", utc(2024, 1, 1)) == "daily-report:1704067200000"
    assert scheduled_event_id("j", utc(2024, 1, 1, 0, 0, 0, 1999)) == "j:1704067200001"
    assert scheduled_event_id("j", utc(1970, 1, 1)) == "j:0"


def test_scheduled_payload() -> None:
    assert scheduled_payload(utc(2024, 1, 1, 10, 0, 0, 123456), None) == {
        "ts": "2024-01-01T10:00:00.123Z"
    }
    plus_two = timezone(timedelta(hours=2))
    assert scheduled_payload(utc(2024, 1, 1, 10), datetime(2024, 1, 1, 11, tzinfo=plus_two)) == {
        "ts": "2024-01-01T10:00:00.000Z",
        "lastTimestamp": "2024-01-01T09:00:00.000Z",
    }


# --- properties -------------------------------------------------------------------------------

ZONES = {
    name: ZoneInfo(name or "UTC")
    for name in [
        "",
        "Europe/Paris",
        "America/New_York",
        "Australia/Lord_Howe",
        "Asia/Kolkata",
        "Pacific/Chatham",
    ]
}
EXPRESSIONS = [
    "* * * * *",
    "*/7 * * * *",
    "0 * * * *",
    "30 2 * * *",
    "15 1,2,3 * * *",
    "0 9 * * 1-5",
    "45 23 28-31 * *",
    "0 0 1 */3 *",
    # What croniter reads otherwise: a one-value range, 7 with a step, */1 in a day field.
    "5-5 * * * *",
    "0 3-3 * * 7/2",
    "0 0 1 * */1",
    "0 12 */1 * 1",
    "0 6 13 * 5",
    "0 0 13 * 0-6",  # every day, restricted: with the 13th, either decides
    "0 0 13 * 1-7",  # 7 written: the whole week, so the 13th alone decides
]
# Instants near daylight-saving changes, where cron arithmetic usually breaks.
TRANSITIONS = [
    utc(2024, 3, 31, 1),
    utc(2024, 10, 27, 1),
    utc(2024, 3, 10, 7),
    utc(2024, 11, 3, 6),
    utc(2024, 4, 6, 15),
    utc(2024, 10, 5, 15),
    utc(2024, 4, 6, 14),
    utc(2024, 9, 28, 14),
]
MOMENTS = st.one_of(
    st.builds(
        lambda base, offset: base + timedelta(microseconds=offset),
        st.sampled_from(TRANSITIONS),
        st.integers(-2 * 86400 * 10**6, 2 * 86400 * 10**6),
    ),
    st.builds(
        lambda base, minutes: base + timedelta(minutes=minutes),
        st.sampled_from(TRANSITIONS),
        st.integers(-3000, 3000),
    ),
    st.datetimes(datetime(2020, 1, 1), datetime(2030, 1, 1), timezones=st.just(UTC)),
)
CRONS = st.builds(cron, st.sampled_from(EXPRESSIONS), st.sampled_from(sorted(ZONES)), st.booleans())
INTERVALS = st.builds(every, st.integers(1, 200_000), st.booleans())
SCHEDULES = st.one_of(CRONS, INTERVALS)
FAST = settings(max_examples=150, deadline=None)


@FAST
@given(SCHEDULES, MOMENTS, MOMENTS)
def test_next_after_is_the_next_planned_time(
    schedule: Schedule, after: datetime, anchor: datetime
) -> None:
    got = next_after(schedule, after, anchor)
    assert got > after
    assert got.tzinfo is UTC
    assert is_planned(schedule, got, anchor)
    if schedule.kind == "interval":
        # The first one: one step earlier is not after `after` (or not after the anchor).
        earlier = got - timedelta(seconds=schedule.seconds)
        assert earlier <= after or earlier <= anchor
    # Nothing planned is skipped: from just before `got`, `got` comes next.
    assert next_after(schedule, got - timedelta(microseconds=1), anchor) == got


@FAST
@given(SCHEDULES, MOMENTS, st.integers(0, 10**6), st.integers(0, 3600))
def test_decide_fires_the_past_and_plans_the_future(
    schedule: Schedule, anchor: datetime, delay_s: int, grace_s: int
) -> None:
    next_fire = first_fire(schedule, anchor)
    now = next_fire + timedelta(seconds=delay_s)
    decision = decide(schedule, next_fire, now, anchor, timedelta(seconds=grace_s))
    assert decision is not None
    assert decision.next_fire > now
    assert is_planned(schedule, decision.next_fire, anchor)
    assert decision.missed >= 0
    if decision.fire_at is not None:
        assert next_fire <= decision.fire_at <= now
        assert decision.next_fire > decision.fire_at
        assert is_planned(schedule, decision.fire_at, anchor)
        allowed = max(timedelta(seconds=grace_s), ON_TIME)
        assert schedule.catch_up or now - decision.fire_at <= allowed
    elif schedule.catch_up:
        raise AssertionError("catch-up must fire the latest due tick")
    assert decide(schedule, decision.next_fire, now, anchor, timedelta(seconds=grace_s)) is None


# Each daylight-saving change of TRANSITIONS with its zone, whole hours and half.
CHANGES = [
    ("Europe/Paris", utc(2024, 3, 31, 1)),
    ("Europe/Paris", utc(2024, 10, 27, 1)),
    ("America/New_York", utc(2024, 3, 10, 7)),
    ("America/New_York", utc(2024, 11, 3, 6)),
    ("Australia/Lord_Howe", utc(2024, 4, 6, 15)),
    ("Australia/Lord_Howe", utc(2024, 10, 5, 15)),
    ("Pacific/Chatham", utc(2024, 4, 6, 14)),
    ("Pacific/Chatham", utc(2024, 9, 28, 14)),
]


@pytest.mark.parametrize(
    "expr", ["*/7 * * * *", "0 * * * *", "30 * * * *", "45 1 * * *", "15 2 * * *", "30 2 * * *"]
)
@pytest.mark.parametrize("zone, change", CHANGES, ids=lambda v: str(v)[:16])
def test_around_a_clock_change_every_planned_instant_fires_once(
    expr: str, zone: str, change: datetime
) -> None:
    schedule = cron(expr, zone)
    start, end = change - 4 * _HOUR, change + 4 * _HOUR
    planned = []
    t = start + MINUTE
    while t <= end:
        if is_planned(schedule, t, ANCHOR):
            planned.append(t)
        t += MINUTE
    fired, t = [], start
    while (t := next_after(schedule, t, ANCHOR)) <= end:
        fired.append(t)
    assert fired == planned
    for t in planned:  # and at each, that is the tick to fire
        decision = decide(schedule, t, t + 2 * SEC, ANCHOR, timedelta(0))
        assert decision is not None and decision.fire_at is None  # 2 s late, no grace
        decision = decide(schedule, t, t, ANCHOR, timedelta(0))
        assert decision is not None and decision.fire_at == t and decision.next_fire > t


STEPS = st.lists(st.one_of(st.integers(1, 120), st.integers(1, 3 * 86400)), min_size=1, max_size=25)


@settings(max_examples=60, deadline=None)
@given(SCHEDULES, MOMENTS, STEPS, st.integers(0, 600))
def test_an_advancing_clock_never_fires_a_tick_twice(
    schedule: Schedule, anchor: datetime, steps: list[int], grace_s: int
) -> None:
    grace = timedelta(seconds=grace_s)
    next_fire = first_fire(schedule, anchor)
    now = anchor
    fires: list[datetime] = []
    missed = 0
    for step in steps:
        now += timedelta(seconds=step)
        decision = decide(schedule, next_fire, now, anchor, grace)
        if decision is None:
            assert next_fire > now
            continue
        if decision.fire_at is not None:
            assert decision.fire_at <= now
            fires.append(decision.fire_at)
        missed += decision.missed
        next_fire = decision.next_fire
    assert fires == sorted(set(fires))
    assert all(is_planned(schedule, t, anchor) for t in fires)
    if schedule.kind == "interval":
        # Every planned tick before next_fire was either fired or counted as missed.
        ticks = (next_fire - anchor) // timedelta(seconds=schedule.seconds) - 1
        assert len(fires) + missed == ticks
