"""Cron and interval schedules: planned fire times, and what to fire after a delay.

Every function is pure: the clock is an argument. All datetimes are timezone-aware and
returned in UTC; a cron expression is evaluated on the wall clock of its time zone.

A cron expression plans wall-clock times (croniter's arithmetic, on naive local
time); an instant is planned when the zone's clocks show a planned time then. Around
daylight-saving changes that means a time inside a skipped stretch fires at the
moment the clocks jump forward, and a time inside a repeated stretch fires at both of
its instants, whatever the size of the change (an hour; half of one on Lord Howe).

Interval planned times are `anchor + k * seconds` for k >= 1; the anchor (the time the
schedule was registered) is stored, so restarts do not shift the grid.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

from .errors import InvalidArgument

MAX_INTERVAL_SECONDS = 31_536_000  # one year
# Every value of every field written out is ~350 characters; the longest IANA time
# zone name ~30. Longer is refused before any parsing (which costs time with length,
# and the parsed expressions are cached).
MAX_CRON_LENGTH = 1024
MAX_TIMEZONE_LENGTH = 64
# Counting a cron's missed ticks walks them one by one (~0.1 ms each), inside
# the transaction that fires the schedules: after a long downtime it stops here.
MAX_MISSED_COUNT = 100
# A tick found this late is on time, whatever --schedule-grace says: the timer
# loop wakes a little after the tick, later under load.
ON_TIME = timedelta(seconds=1)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
# croniter's hashed ("H") and random ("R") fields pick a value per iterator instance,
# which would move the planned times between calls; only plain cron is accepted.
_NONDETERMINISTIC = re.compile(r"^[hr](?:$|[(/])", re.IGNORECASE)
# One comma-separated item of a standard cron field.
_CRON_ITEM = re.compile(
    r"(?:\*|(?P<lo>[0-9]+|[A-Za-z]{3})(?:-(?P<hi>[0-9]+|[A-Za-z]{3}))?)(?:/(?P<step>[0-9]+))?"
)
_MONTHS = "JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split()
_DAYS = "SUN MON TUE WED THU FRI SAT".split()
# A name's number in its field: months from 1, days of the week from 0 (Sunday).
_CRON_NAMES = {name: i + 1 for i, name in enumerate(_MONTHS)} | {
    name: i for i, name in enumerate(_DAYS)
}

# Each field: what it counts, its values (7 is Sunday too) and its names.
_FIELDS: tuple[tuple[str, tuple[int, int], frozenset[str]], ...] = (
    ("minute", (0, 59), frozenset()),
    ("hour", (0, 23), frozenset()),
    ("day of the month", (1, 31), frozenset()),
    ("month", (1, 12), frozenset(_MONTHS)),
    ("day of the week", (0, 7), frozenset(_DAYS)),
)


@dataclass(frozen=True)
class Schedule:
    kind: Literal["cron", "interval"]
    cron: str = ""
    timezone: str = ""
    seconds: int = 0
    catch_up: bool = False


@dataclass(frozen=True)
class Decision:
    """What to do with a schedule whose next planned time has come.

    `fire_at`: the planned time to fire now, or None when every due tick is skipped.
    `next_fire`: the next planned time, always after `now`.
    `missed`: due ticks that are not fired (capped at MAX_MISSED_COUNT for cron).
    """

    fire_at: datetime | None
    next_fire: datetime
    missed: int


def validate(schedule: Schedule, field: str) -> None:
    """Raise InvalidArgument naming `field.cron`, `field.timezone` or `field.seconds`."""
    if schedule.kind == "interval":
        if not 1 <= schedule.seconds <= MAX_INTERVAL_SECONDS:
            raise InvalidArgument(
                f"{field}.seconds",
                f"must be between 1 and {MAX_INTERVAL_SECONDS} (one year), got {schedule.seconds}",
            )
        return
    if schedule.kind != "cron":
        raise InvalidArgument(f"{field}.kind", f"unknown schedule kind {schedule.kind!r}")
    tz = _validate_timezone(schedule.timezone, f"{field}.timezone")
    _validate_cron(schedule.cron, tz, f"{field}.cron")


def _validate_timezone(name: str, field: str) -> ZoneInfo:
    if not name:
        return ZoneInfo("UTC")
    if len(name) > MAX_TIMEZONE_LENGTH:
        raise InvalidArgument(
            field,
            f"is {len(name)} characters, longer than any IANA time zone name "
            f"(at most {MAX_TIMEZONE_LENGTH} are taken)",
        )
    if name in ("localtime", "posixrules") or name.startswith(("posix/", "right/")):
        # Files of the host's zoneinfo directory: what they mean depends on the machine.
        raise InvalidArgument(
            field,
            f"{name!r} is the host's own setting, not an IANA time zone name (e.g. 'Europe/Paris')",
        )
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # ValueError and OSError: names that are paths ("../x", "/etc", "Europe").
        raise InvalidArgument(
            field, f"{name!r} is not an IANA time zone name (e.g. 'Europe/Paris')"
        ) from None


def _validate_cron(expr: str, tz: ZoneInfo, field: str) -> None:
    if len(expr) > MAX_CRON_LENGTH:
        raise InvalidArgument(
            field, f"is {len(expr)} characters, over the limit of {MAX_CRON_LENGTH}"
        )
    fields = expr.split()
    if len(fields) != 5:
        raise InvalidArgument(
            field,
            f"{expr!r} has {len(fields)} fields; expected 5 (minute hour day-of-month month "
            f"day-of-week), e.g. '0 9 * * 1-5'",
        )
    for (what, (low, high), names), text in zip(_FIELDS, fields, strict=True):
        for part in text.split(","):
            _validate_cron_item(expr, part, what, low, high, names, field)
    try:
        # A syntactically valid expression can still never match (e.g. 30 February).
        croniter(_standard(expr), datetime(2000, 1, 1, tzinfo=tz)).get_next(datetime)
    except CroniterBadDateError:
        raise InvalidArgument(field, f"{expr!r} can never fire: no date matches it") from None
    except CroniterError as exc:
        raise InvalidArgument(field, f"{expr!r} is not a valid cron expression: {exc}") from None


def _validate_cron_item(
    expr: str, part: str, what: str, low: int, high: int, names: frozenset[str], field: str
) -> None:
    if _NONDETERMINISTIC.match(part):
        raise InvalidArgument(field, f"{expr!r}: hashed/random fields (H, R) are not supported")
    item = _CRON_ITEM.fullmatch(part)
    if item is None:
        raise InvalidArgument(
            field,
            f"{expr!r} is not a valid cron expression: {part!r} is not standard cron "
            "(*, N, N-M or names such as JAN and MON, each with an optional /step; "
            "L, W, # and ? are not supported)",
        )
    for value in (item["lo"], item["hi"]):
        if value is None:
            continue
        if not value.isdigit() and value.upper() not in names:
            kind = "a number" + (
                f" or a name such as {min(names, key=_CRON_NAMES.__getitem__)}" if names else ""
            )
            raise InvalidArgument(field, f"{expr!r}: {value!r} is not a {what}: expected {kind}")
        if not low <= _cron_number(value) <= high:
            raise InvalidArgument(
                field, f"{expr!r}: {value} is not a {what}: expected {low} to {high}"
            )
    if item["step"] is not None and int(item["step"]) == 0:
        raise InvalidArgument(field, f"{expr!r}: {part!r} steps by 0; a step is 1 or more")
    if item["lo"] and item["hi"] and _cron_number(item["lo"]) > _cron_number(item["hi"]):
        # croniter would wrap it around; v2's cron-parser refuses it, and so do we.
        raise InvalidArgument(
            field,
            f"{expr!r}: the range {part.split('/')[0]!r} runs backwards (for one that "
            "wraps around, list both parts, e.g. '22-23,0-2')",
        )


def _cron_number(value: str) -> int:
    return int(value) if value.isdigit() else _CRON_NAMES[value.upper()]


@functools.lru_cache(maxsize=1024)
def _standard(expr: str) -> str:
    """A valid expression as croniter reads it right: each field spelled out as its
    values, or `*` when they are all of its values. croniter takes a range of one
    value (`5-5`) for the whole field, `7/2` in the day of week for every other day,
    and `*/1` in a day field for a restriction (so that the other day field alone no
    longer decides); v2's cron-parser, like crontab, reads them as 5, Sunday and `*`.
    A day field is restricted when it leaves a value out, as in cron-parser, whose
    day of the week is whole only with 7 written in it (`*`, `1-7`, not `0-6`)."""
    spelled = []
    for (_, (low, high), _), text in zip(_FIELDS, expr.split(), strict=True):
        values: set[int] = set()
        for part in text.split(","):
            item = _CRON_ITEM.fullmatch(part)
            assert item is not None  # validated
            first = _cron_number(item["lo"]) if item["lo"] else low
            if item["hi"]:
                last = _cron_number(item["hi"])
            else:  # `*`, and `N/step`, run to the end of the field; `N` is itself
                last = high if item["step"] or not item["lo"] else first
            values.update(range(first, last + 1, int(item["step"] or 1)))
        every = set(range(low, high + 1))
        if high == 7 and 7 in values:  # Sunday, as 0; `*` only if written with 7
            values = (values - {7}) | {0}
            every = values if values == set(range(7)) else every
        spelled.append("*" if values == every else ",".join(map(str, sorted(values))))
    return " ".join(spelled)


def _zone(schedule: Schedule) -> ZoneInfo:
    return ZoneInfo(schedule.timezone or "UTC")


def _require_aware(*moments: datetime) -> None:
    for m in moments:
        if m.tzinfo is None or m.utcoffset() is None:
            raise ValueError(f"naive datetime {m!r}; pass a timezone-aware one")


# Longer than any daylight-saving change (the largest are 2 h); and no zone changes
# its offset twice within it.
_SHIFT = timedelta(hours=3)


def _offset(moment: datetime, tz: ZoneInfo) -> timedelta:
    return moment.astimezone(tz).utcoffset() or timedelta(0)


def _set_back(tz: ZoneInfo, early: datetime, late: datetime) -> tuple[datetime, datetime] | None:
    """Where the zone's clocks are set back between two instants (< _SHIFT apart), if
    they are: the naive wall-clock times the repeated stretch runs from and to."""
    before, after = _offset(early, tz), _offset(late, tz)
    if after >= before:
        return None
    change = _change(tz, early, late)
    return (change + after).replace(tzinfo=None), (change + before).replace(tzinfo=None)


def _instants(wall: datetime, tz: ZoneInfo) -> tuple[datetime, ...]:
    """The instants at which the clocks of `tz` show the naive `wall`: one; two when
    the clocks were set back over it; none when they jumped over it, and then the
    jump stands in for it (the time is passed at that moment)."""
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    if first == second:
        return (first,)
    if first < second:
        return first, second
    return (_change(tz, second, first),)


# Offset changes found so far, per zone (a jump is shared by every time it skips).
_CHANGES: dict[str, list[datetime]] = {}


def _change(tz: ZoneInfo, low: datetime, high: datetime) -> datetime:
    """The instant in (low, high] at which the zone's offset becomes high's."""
    known = _CHANGES.setdefault(str(tz), [])
    for change in known:
        if low < change <= high:  # no zone changes its offset twice within _SHIFT
            return change
    after = _offset(high, tz)
    while high - low > _MS:
        middle = low + (high - low) / 2
        if _offset(middle, tz) == after:
            high = middle
        else:
            low = middle
    change = high.replace(microsecond=high.microsecond // 1000 * 1000)
    known.append(change)
    del known[:-64]
    return change


def _cron_next(schedule: Schedule, after: datetime) -> datetime:
    """The first instant after `after` whose wall-clock time is planned. Wall times are
    croniter's, on naive local time; instants come from the zone, so a stretch the
    clocks repeat (by an hour or by half of one) fires twice, and one they skip fires
    once, at the jump."""
    tz = _zone(schedule)
    start = after.astimezone(tz).replace(tzinfo=None)
    # Wall times before `after`'s come again after it if the clocks are set back soon.
    repeated = _set_back(tz, after, after + _SHIFT)
    if repeated is not None:
        start = min(start, repeated[0] - _MS)
    walls = croniter(_standard(schedule.cron), start)
    best: datetime | None = None
    bound = datetime.max
    while True:
        wall: datetime = walls.get_next(datetime)
        if wall > bound:
            assert best is not None
            return best
        for instant in _instants(wall, tz):
            if instant > after and (best is None or instant < best):
                best = instant
                # A later wall time comes earlier only in a stretch repeated lately.
                repeated = _set_back(tz, instant - _SHIFT, instant)
                bound = max(wall, repeated[1] - _MS) if repeated else wall


def _cron_latest(schedule: Schedule, now: datetime) -> datetime:
    """The last instant at or before `now` whose wall-clock time is planned."""
    tz = _zone(schedule)
    start = now.astimezone(tz).replace(tzinfo=None) + _MS
    # Wall times after `now`'s came already if the clocks were set back lately.
    repeated = _set_back(tz, now - _SHIFT, now)
    if repeated is not None:
        start = max(start, repeated[1])
    walls = croniter(_standard(schedule.cron), start)
    best: datetime | None = None
    bound = datetime.min
    while True:
        wall: datetime = walls.get_prev(datetime)
        if wall < bound:
            assert best is not None
            return best
        for instant in _instants(wall, tz):
            if instant <= now and (best is None or instant > best):
                best = instant
                # An earlier wall time comes later only in a stretch repeated soon.
                repeated = _set_back(tz, instant, instant + _SHIFT)
                bound = min(wall, repeated[0]) if repeated else wall


def next_after(schedule: Schedule, after: datetime, anchor: datetime) -> datetime:
    """The first planned time strictly after `after`."""
    _require_aware(after, anchor)
    if schedule.kind == "interval":
        step = timedelta(seconds=schedule.seconds)
        k = max((after - anchor) // step + 1, 1)
        return (anchor + k * step).astimezone(UTC)
    return _cron_next(schedule, after)


def first_fire(schedule: Schedule, registered_at: datetime) -> datetime:
    """The first planned time of a schedule registered at `registered_at`."""
    return next_after(schedule, registered_at, anchor=registered_at)


def _latest(schedule: Schedule, now: datetime, anchor: datetime) -> datetime | None:
    """The last planned time <= now (None when there is none yet)."""
    if schedule.kind == "interval":
        step = timedelta(seconds=schedule.seconds)
        k = (now - anchor) // step
        return (anchor + k * step).astimezone(UTC) if k >= 1 else None
    return _cron_latest(schedule, now)


def _count_due(schedule: Schedule, first: datetime, last: datetime, anchor: datetime) -> int:
    """How many planned times lie in [first, last], capped just above MAX_MISSED_COUNT."""
    if schedule.kind == "interval":
        step = timedelta(seconds=schedule.seconds)
        k_first = max(-((anchor - first) // step), 1)  # ceil((first - anchor) / step)
        k_last = (last - anchor) // step
        return max(k_last - k_first + 1, 0)
    count = 0
    t = next_after(schedule, first - timedelta(microseconds=1), anchor)
    while t <= last and count <= MAX_MISSED_COUNT:
        count += 1
        t = next_after(schedule, t, anchor)
    return count


def decide(
    schedule: Schedule,
    next_fire: datetime,
    now: datetime,
    anchor: datetime,
    grace: timedelta,
    tried: datetime | None = None,
) -> Decision | None:
    """What to fire at `now`, given the stored `next_fire`; None when it is not due yet.

    Of all due ticks only the latest may fire: on time or within `grace` of it, or at any
    delay with `catch_up`. Within ON_TIME of it is on time whatever `grace` says: the
    timer loop finds a tick a little after it (a grace of 0 would skip them all). Older
    ones are skipped, as in v2, so a long downtime never produces a burst. The returned
    `next_fire` is after `now`, so applying `decide` again with the returned value never
    fires the same tick twice. `tried`: when the schedule could not be computed at an
    earlier try (the first of those that failed), the latest tick is judged late or
    not as of that try, if it was due then.
    """
    _require_aware(next_fire, now, anchor)
    if next_fire > now:
        return None
    latest = _latest(schedule, now, anchor)
    if latest is None or latest < next_fire:
        # Nothing planned in [next_fire, now]: next_fire was not on the grid (the schedule
        # changed under it). Move it onto the grid without firing anything.
        return Decision(fire_at=None, next_fire=next_after(schedule, now, anchor), missed=0)
    # Judged as of the failed try only if the tick was due then; not one planned since.
    judged = tried if tried is not None and latest <= tried <= now else now
    fire = schedule.catch_up or judged - latest <= max(grace, ON_TIME)
    due = _count_due(schedule, next_fire, latest, anchor)
    missed = due - 1 if fire else due
    if schedule.kind == "cron":
        missed = min(missed, MAX_MISSED_COUNT)
    return Decision(
        fire_at=latest if fire else None,
        next_fire=next_after(schedule, latest, anchor),
        missed=missed,
    )


def epoch_ms(moment: datetime) -> int:
    """Milliseconds since the Unix epoch, rounded down like a JavaScript Date."""
    return (moment - _EPOCH) // _MS


def scheduled_event_id(job_id: str, planned: datetime) -> str:
    """The id of the event of one planned fire; the same tick always gets the same id."""
    return f"{job_id}:{epoch_ms(planned)}"


def _iso_ms(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def scheduled_payload(planned: datetime, last: datetime | None) -> dict[str, Any]:
    """`{"ts": planned, "lastTimestamp": last}` as ISO-8601 UTC strings, v2's payload."""
    payload: dict[str, Any] = {"ts": _iso_ms(planned)}
    if last is not None:
        payload["lastTimestamp"] = _iso_ms(last)
    return payload
