"""Server settings: one frozen dataclass built from flags and TRIPWIRE_* variables."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

DEFAULT_ENVIRONMENT = "default"
MAX_LEASE_SECONDS = 86_400
MAX_GRACE_SECONDS = 86_400
# Retention in days: 0 keeps everything; otherwise one hour to a hundred years.
MIN_RETENTION_DAYS = 1 / 24
MAX_RETENTION_DAYS = 36_500
# uvloop: the same asyncio API on libuv, ~10% less CPU per call here; asyncio:
# the standard library's loop (what the in-process tests run on).
EVENT_LOOPS = ("uvloop", "asyncio")


@dataclass(frozen=True)
class Settings:
    address: str = "127.0.0.1:50051"
    db_path: str = "./tripwire.db"
    # API key -> environment. Empty: no auth, everything in "default".
    api_keys: Mapping[str, str] = field(default_factory=dict)
    max_payload_bytes: int = 1024 * 1024
    max_name_length: int = 256
    max_batch: int = 1000
    # A SendEvents batch's events, as encoded in the request. The reply echoes
    # them (with ids, times and runs added), and most gRPC clients refuse replies
    # over 4 MiB: a batch stored but never acknowledged would be sent again.
    max_batch_bytes: int = 3 * 1024 * 1024
    max_message_bytes: int = 64 * 1024 * 1024
    heartbeat_interval: float = 5.0
    lease: float = 15.0
    # A schedule tick this late (e.g. just after a restart) still fires; older
    # ticks count as missed and are skipped unless the trigger asks to catch up.
    schedule_grace: float = 60.0
    shutdown_grace: float = 10.0
    event_loop: str = "uvloop"
    # Events finished (delivered or cancelled, every run ended) longer ago than
    # this are deleted with their runs, tasks and logs. 0: nothing is deleted.
    retention_days: float = 0.0
    # Setting -> where it was given (its flag or TRIPWIRE_* variable), so that an
    # error names what the operator wrote; a setting not in it is named by its flag.
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def _named(self, setting: str) -> str:
        flag = {"db_path": "--db"}.get(setting, "--" + setting.replace("_", "-"))
        return self.sources.get(setting, flag)

    def __post_init__(self) -> None:
        host, sep, port = self.address.rpartition(":")
        if not sep or not host or not (port.isascii() and port.isdigit()):
            raise ValueError(f"{self._named('address')} must be HOST:PORT, got {self.address!r}")
        if int(port) > 65535:
            raise ValueError(f"{self._named('address')} port must be 0 to 65535, got {port}")
        for key, env in self.api_keys.items():
            if not key or not env:
                raise ValueError("API keys must be KEY=ENV with both parts non-empty")
            if not (key.isascii() and key.isprintable()) or " " in key:
                # What `authorization: Bearer KEY` can carry, as the server reads it.
                raise ValueError(
                    f"the API key for environment {env!r} holds a space or a character "
                    "other than printable ASCII: no client could present it"
                )
        for name in ("max_payload_bytes", "max_batch", "max_name_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{self._named(name)} must be positive, got {getattr(self, name)}")
        # Half the message size limit: a payload travels inside other messages (a
        # run request, a task's output), and a batch's reply echoes the batch.
        half = self.max_message_bytes // 2
        for name in ("max_payload_bytes", "max_batch_bytes"):
            value = getattr(self, name)
            if value > half:
                raise ValueError(
                    f"{self._named(name)} must be at most {half} ({half // 2**20} MiB, half the "
                    f"{self.max_message_bytes // 2**20} MiB message limit), got {value}"
                )
        if self.max_batch_bytes < 1:
            raise ValueError(
                f"{self._named('max_batch_bytes')} must be positive, got {self.max_batch_bytes}"
            )
        if (
            not self.db_path
            or self.db_path == ":memory:"
            or self.db_path.startswith("file::memory:")
        ):
            raise ValueError(
                f"{self._named('db_path')} must be a file path (every connection needs the "
                f"same database), got {self.db_path!r}"
            )
        if not 0 < self.heartbeat_interval < self.lease <= MAX_LEASE_SECONDS:
            heartbeat, lease = self._named("heartbeat_interval"), self._named("lease")
            raise ValueError(
                f"{heartbeat} must be positive and shorter than {lease}, and {lease} at most "
                f"{MAX_LEASE_SECONDS} s (one day); got {self.heartbeat_interval:g} and "
                f"{self.lease:g}"
            )
        for name in ("schedule_grace", "shutdown_grace"):
            value = getattr(self, name)
            if not 0 <= value <= MAX_GRACE_SECONDS:  # NaN fails this too
                raise ValueError(
                    f"{self._named(name)} must be 0 to {MAX_GRACE_SECONDS} s, got {value:g}"
                )
        if self.retention_days != 0 and not (
            MIN_RETENTION_DAYS <= self.retention_days <= MAX_RETENTION_DAYS  # NaN fails this too
        ):
            raise ValueError(
                f"{self._named('retention_days')} must be 0 (keep everything) or 1/24 (one "
                f"hour) to {MAX_RETENTION_DAYS} days, got {self.retention_days:g}"
            )
        if self.event_loop not in EVENT_LOOPS:
            raise ValueError(
                f"{self._named('event_loop')} must be {' or '.join(EVENT_LOOPS)}, "
                f"got {self.event_loop!r}"
            )

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)


def parse_api_keys(items: Sequence[str]) -> dict[str, str]:
    """KEY=ENV items (each may be a comma-separated list). Given any item at all,
    at least one key must come out of it: an empty list never turns auth off.
    Errors name a key by its place and its environment, never by its text: they
    end up in terminals and logs."""
    keys: dict[str, str] = {}
    place = 0
    for item in items:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            place += 1
            # At the last '=': keys often end in base64 padding ('=='), names never do.
            key, sep, env = part.rpartition("=")
            if not sep or not key or not env:
                raise ValueError(
                    f"the {_nth(place)} API key is not KEY=ENV (a key, '=', an environment name)"
                )
            if keys.get(key, env) != env:
                raise ValueError(
                    f"the {_nth(place)} API key is also given for another environment: "
                    f"one key, two environments ({keys[key]!r} and {env!r})"
                )
            keys[key] = env
    if items and not keys:
        raise ValueError("no KEY=ENV in the API keys given: every one is empty")
    return keys


def _nth(place: int) -> str:
    suffix = "th" if 10 <= place % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(place % 10, "th")
    return f"{place}{suffix}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tripwire serve", description="Run the tripwire server.")
    parser.add_argument("--address", help="HOST:PORT to listen on (port 0 picks a free one)")
    parser.add_argument("--db", dest="db_path", help="SQLite file, created if missing")
    parser.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY=ENV",
        help="accept this key for environment ENV (repeatable; split at the last '='); "
        "none: no auth",
    )
    parser.add_argument("--max-payload-bytes", type=int)
    parser.add_argument(
        "--max-name-length",
        type=int,
        help="characters of an event's name or source (and a trigger's names and source)",
    )
    parser.add_argument("--max-batch", type=int)
    parser.add_argument(
        "--max-batch-bytes",
        type=int,
        help="bytes of the events of one SendEvents call (half that for a send_events task), "
        "as encoded (the reply echoes them; most gRPC clients refuse replies over 4 MiB)",
    )
    parser.add_argument("--heartbeat-interval", type=float, help="seconds")
    parser.add_argument("--lease", type=float, help="seconds")
    parser.add_argument(
        "--schedule-grace",
        type=float,
        help="seconds a schedule's tick may be found late and still fire (1 at least)",
    )
    parser.add_argument("--shutdown-grace", type=float, help="seconds")
    parser.add_argument(
        "--retention-days",
        type=float,
        help="delete events finished (delivered or cancelled, every run ended) this many "
        "days ago, with their runs, tasks and logs; an event id can be sent again after "
        "that (default 0: keep everything)",
    )
    parser.add_argument(
        "--event-loop",
        help=f"{' or '.join(EVENT_LOOPS)} (default uvloop: the same server, less CPU per call)",
    )
    return parser


def settings_from(argv: Sequence[str] | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Flags win over TRIPWIRE_* variables, which win over defaults."""
    env = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    values: dict[str, object] = {}
    sources = {
        "address": ("TRIPWIRE_ADDRESS", str),
        "db_path": ("TRIPWIRE_DB", str),
        "max_payload_bytes": ("TRIPWIRE_MAX_PAYLOAD_BYTES", int),
        "max_name_length": ("TRIPWIRE_MAX_NAME_LENGTH", int),
        "max_batch": ("TRIPWIRE_MAX_BATCH", int),
        "max_batch_bytes": ("TRIPWIRE_MAX_BATCH_BYTES", int),
        "heartbeat_interval": ("TRIPWIRE_HEARTBEAT_INTERVAL", float),
        "lease": ("TRIPWIRE_LEASE", float),
        "schedule_grace": ("TRIPWIRE_SCHEDULE_GRACE", float),
        "shutdown_grace": ("TRIPWIRE_SHUTDOWN_GRACE", float),
        "event_loop": ("TRIPWIRE_EVENT_LOOP", str),
        "retention_days": ("TRIPWIRE_RETENTION_DAYS", float),
    }
    given: dict[str, str] = {}
    for name, (var, kind) in sources.items():
        flag = getattr(args, name)
        if flag is not None:
            values[name] = flag
        elif var in env:
            if not env[var].strip():
                # An unrendered template (TRIPWIRE_DB=${DB_PATH}) is not the default:
                # the server would start on ./tripwire.db, wherever it was started.
                raise ValueError(
                    f"{var} is set but empty: give it a value, or unset it for the default"
                )
            try:
                values[name] = kind(env[var])
            except ValueError:
                what = {int: "a whole number", float: "a number"}.get(kind, kind.__name__)
                raise ValueError(f"{var} must be {what}, got {env[var]!r}") from None
            given[name] = var
    values["sources"] = given
    if args.api_key:
        values["api_keys"] = parse_api_keys(args.api_key)
    elif "TRIPWIRE_API_KEYS" in env:
        # Set but empty (a secret that did not render, say) is refused, not taken
        # for "no keys": that would open the server to anyone.
        try:
            values["api_keys"] = parse_api_keys([env["TRIPWIRE_API_KEYS"]])
        except ValueError as exc:
            raise ValueError(
                f"TRIPWIRE_API_KEYS: {exc} (unset it to run without API keys)"
            ) from None
    return Settings(**values)  # type: ignore[arg-type]
