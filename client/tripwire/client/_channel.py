"""Channels, call metadata and the retry policy shared by both client flavours."""

from __future__ import annotations

import decimal
import math
import numbers
import random
from dataclasses import dataclass, field
from typing import Any

import grpc
from tripwire.client.errors import TripwireError, Unavailable
from tripwire.v1 import event_service_pb2_grpc, job_service_pb2_grpc, run_service_pb2_grpc

DEFAULT_URL = "localhost:50051"

#: Attempts in all (the first included) for a call that is safe to repeat.
RETRY_ATTEMPTS = 4
#: First backoff delay in seconds; it doubles per attempt up to BACKOFF_CAP.
BACKOFF_BASE = 0.1
BACKOFF_CAP = 2.0
#: The longest gRPC waits between attempts to reach a server it lost (seconds).
#: Its default grows to two minutes, failing every call meanwhile: a client that
#: lived through a long outage would keep failing long after the server is back.
RECONNECT_CAP = 2.0

# Replies carry whole runs with their tasks and logs; 4 MiB (gRPC's default) is too tight.
_MAX_RECEIVE = 64 * 1024 * 1024
_SECURE_SCHEMES = ("https://", "grpcs://")
_PLAIN_SCHEMES = ("http://", "grpc://")


#: The longest timeout taken (ten years): gRPC fails at once a deadline past what
#: it can count.
MAX_TIMEOUT = 10 * 365 * 86400


def check_timeout(timeout: float | None, *, spent: bool = False) -> None:
    """A timeout in seconds, or None; ``spent``: one of 0 or less (what is left of a
    budget, say) is taken too, as over already."""
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real | decimal.Decimal):
        raise TypeError(f"timeout: must be a number of seconds or None, got {timeout!r}")
    low = -math.inf if spent else 0
    if not low < timeout <= MAX_TIMEOUT:  # NaN and infinity too
        least = "" if spent else " > 0 and"
        raise ValueError(
            f"timeout: must be a number of seconds{least} at most {MAX_TIMEOUT} (ten "
            f"years), or None for no deadline: got {timeout!r}"
        )


@dataclass(frozen=True, slots=True)
class Settings:
    """What both flavours need to open a channel and make calls."""

    name: str
    url: str
    api_key: str | None
    timeout: float | None
    metadata: tuple[tuple[str, str], ...] = field(init=False)

    def __post_init__(self) -> None:
        # Checked here, not at the first call (an AttributeError from deep inside, or
        # gRPC's UNKNOWN "the target uri is not valid" for an empty one).
        if not isinstance(self.url, str):
            raise TypeError(f"url: must be a string such as {DEFAULT_URL!r}, got {self.url!r}")
        if not self.target()[0]:
            raise ValueError(f"url: names no server: give host:port, e.g. {DEFAULT_URL!r}")
        check_timeout(self.timeout)
        if self.timeout is not None:  # gRPC takes a float (not a Decimal, say)
            object.__setattr__(self, "timeout", float(self.timeout))
        if self.api_key:
            # A key read from a file keeps its newline; gRPC would refuse every call
            # with INTERNAL "Invalid metadata". The server strips the token too.
            object.__setattr__(self, "api_key", self.api_key.strip())
            if not all(" " <= char <= "~" for char in self.api_key):
                raise ValueError(
                    "api_key: must be printable ASCII (it travels in an HTTP/2 header)"
                )
        auth = (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()
        object.__setattr__(self, "metadata", auth)

    def target(self) -> tuple[str, bool]:
        """The gRPC target and whether it needs TLS (``https://`` or ``grpcs://`` URLs)."""
        url = self.url.strip()
        for scheme in _SECURE_SCHEMES:
            if url.startswith(scheme):
                return url.removeprefix(scheme).rstrip("/"), True
        for scheme in _PLAIN_SCHEMES:
            if url.startswith(scheme):
                return url.removeprefix(scheme).rstrip("/"), False
        return url.rstrip("/"), False

    def options(self) -> list[tuple[str, Any]]:
        return [
            ("grpc.max_receive_message_length", _MAX_RECEIVE),
            ("grpc.primary_user_agent", f"tripwire-python ({self.name})"),
        ]


class ClientBase:
    """Settings shared by both client flavours."""

    def __init__(
        self,
        name: str,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float | None = 30,
    ) -> None:
        self._settings = Settings(name=name, url=url, api_key=api_key, timeout=timeout)

    @property
    def name(self) -> str:
        """This application's name (sent in the user agent; workers use it too)."""
        return self._settings.name

    @property
    def url(self) -> str:
        return self._settings.url

    @property
    def api_key(self) -> str | None:
        return self._settings.api_key

    @property
    def timeout(self) -> float | None:
        """Deadline in seconds of each unary call (None: no deadline)."""
        return self._settings.timeout

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, url={self.url!r})"


def _reconnect_options(cap: float) -> list[tuple[str, Any]]:
    """gRPC's own reconnect backoff, which otherwise grows to two minutes and fails
    every call meanwhile, waiting no longer than ``cap`` seconds."""
    # Not grpc.min_reconnect_backoff_ms: that is the connect timeout (20 s), and
    # a short one would never let a slow link finish its handshake.
    return [
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", max(int(cap * 1000), 100)),
    ]


def open_sync(settings: Settings) -> grpc.Channel:
    target, secure = settings.target()
    options = settings.options() + _reconnect_options(RECONNECT_CAP)
    if secure:
        return grpc.secure_channel(target, grpc.ssl_channel_credentials(), options)
    return grpc.insecure_channel(target, options)


def open_async(
    settings: Settings, *, own_connection: bool = False, reconnect_cap: float = RECONNECT_CAP
) -> grpc.aio.Channel:
    """An asyncio channel; with ``own_connection`` it shares no connection with other
    channels (gRPC pools them per process), so a new one really reconnects. gRPC's
    reconnect backoff waits at most ``reconnect_cap`` seconds."""
    target, secure = settings.target()
    options = settings.options() + _reconnect_options(reconnect_cap)
    if own_connection:
        options.append(("grpc.use_local_subchannel_pool", 1))
    if secure:
        credentials = grpc.ssl_channel_credentials()
        return grpc.aio.secure_channel(target, credentials, options)
    return grpc.aio.insecure_channel(target, options)


class Stubs:
    """The three service stubs of one channel, by the names ``Call.service`` uses."""

    __slots__ = ("events", "jobs", "runs")

    def __init__(self, channel: Any) -> None:
        self.events: Any = event_service_pb2_grpc.EventServiceStub(channel)
        self.jobs: Any = job_service_pb2_grpc.JobServiceStub(channel)
        self.runs: Any = run_service_pb2_grpc.RunServiceStub(channel)


def retry_delay(idempotent: bool, error: TripwireError, attempt: int) -> float | None:
    """Seconds to wait before repeating a failed call, or None to give up.

    Only UNAVAILABLE is retried (the server was not reached or is shutting down, so the
    call had no effect or is safe to repeat), only for idempotent calls, and only
    ``RETRY_ATTEMPTS`` times in all. ``attempt`` counts from 0 for the first call.
    """
    if not idempotent or not isinstance(error, Unavailable) or attempt + 1 >= RETRY_ATTEMPTS:
        return None
    return _backoff(attempt)


def rewatch_delay(
    error: TripwireError, attempt: int, *, watched: bool, resume: bool, deadline: bool = False
) -> float | None:
    """Seconds to wait before watching a run again after ``error``, or None to give up.

    Opening a watch is retried as any idempotent call. Once a watch has delivered
    updates, watching again would repeat them, so it is not, unless the caller only
    wants the run's latest state (``resume``): then an UNAVAILABLE server (one that
    restarts, say) is watched again for as long as the caller waits. With a
    ``deadline`` too, so is one that could not be reached from the start."""
    if not isinstance(error, Unavailable):
        return None
    if resume and (watched or deadline):
        return _backoff(attempt)
    return None if watched else retry_delay(True, error, attempt)


def _backoff(attempt: int) -> float:
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2.0**attempt)
    return ceiling / 2 + random.random() * ceiling / 2
