"""Authentication and the one table from domain errors to gRPC status codes."""

from __future__ import annotations

import base64
import binascii
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import grpc

from ..config import DEFAULT_ENVIRONMENT
from ..errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    TripwireError,
    Unauthenticated,
    Unavailable,
)

log = logging.getLogger(__name__)

STATUS: Mapping[type[TripwireError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def status_of(exc: TripwireError) -> grpc.StatusCode:
    for kind in type(exc).__mro__:
        code = STATUS.get(kind)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


class Authenticator:
    """API key -> environment. With no keys configured everything is `default`.
    Every call starts here: once the server shuts down (`closing`), a new one is
    refused UNAVAILABLE, so that it is retried later, not cut off halfway."""

    def __init__(self, api_keys: Mapping[str, str]) -> None:
        self._keys = dict(api_keys)
        self.closing = False

    def environment(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        if self.closing:
            raise Unavailable("the server is shutting down; try again later")
        if not self._keys:
            return DEFAULT_ENVIRONMENT
        given = [v for k, v in context.invocation_metadata() or () if k == "authorization"]
        if not given:
            raise Unauthenticated()
        if len(given) > 1:
            # Which one would count? A proxy that adds its own header after the
            # client's must not leave the choice to the order of the two.
            raise Unauthenticated(
                f"authorization is given {len(given)} times: send one 'Bearer <key>'"
            )
        scheme, _, token = str(given[0]).partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("authorization must be 'Bearer <key>'")
        env = self._keys.get(token.strip())
        if env is None:
            raise Unauthenticated("unknown API key")
        return env


Req = TypeVar("Req")
Resp = TypeVar("Resp")
T = TypeVar("T")
Handler = Callable[[Any, Req, Any, str], Awaitable[Resp]]


def unary(method: Handler[Req, Resp]) -> Callable[[Any, Req, Any], Awaitable[Resp]]:
    """Authenticate, call the domain, and turn domain errors into statuses."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: Any) -> Resp:
        try:
            env = self.auth.environment(context)
            return await method(self, request, context, env)
        except TripwireError as exc:
            await context.abort(status_of(exc), exc.message)
        except Exception:
            await abort_internal(context, method.__qualname__)
        raise AssertionError("unreachable")  # abort() always raises

    return wrapper


async def abort_internal(context: Any, what: str) -> None:
    """End a call that failed by no fault of the caller (a bug, a store that failed):
    INTERNAL, the cause in the server log rather than in the reply. Always raises."""
    log.exception("%s failed", what)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")


def check_payload_size(message: Any, limit: int, field: str) -> None:
    """`message` has `payload` and `context` Values. Measured on the wire encoding,
    before any conversion work is spent on it."""
    size = message.payload.ByteSize() + message.context.ByteSize()
    if size > limit:
        raise InvalidArgument(
            f"{field}.payload" if field else "payload",
            f"payload and context are {size} bytes, over the limit of {limit} bytes",
        )


def check_job_size(job: Any, limit: int, field: str) -> None:
    """A job version (its filters and schema, mostly) within the payload limit: it is
    sent back whole by RegisterJob, GetJob and ListJobs."""
    size = job.ByteSize()
    if size > limit:
        raise InvalidArgument(field, f"is {size} bytes, over the limit of {limit} bytes")


def check_batch_size(size: int, limit: int, field: str) -> None:
    """`size`: the wire size of a batch's events. Their reply echoes them: a batch
    stored whose reply the client then refuses (most refuse over 4 MiB) would be
    sent again, so it is refused before anything is spent on it."""
    if size > limit:
        raise InvalidArgument(
            field,
            f"are {size} bytes, over the limit of {limit} bytes; send fewer events per call",
        )


def check_batch_count(count: int, limit: int, field: str) -> None:
    """Before any event of a batch is looked at: a batch of half a million tiny
    events fits the byte limit, and converting them all would hold the loop."""
    if count > limit:
        raise InvalidArgument(field, f"{count} events exceed the batch limit of {limit}")


# A list page ends early rather than pass this: grpcurl and most gRPC clients
# refuse replies over 4 MiB unless told otherwise.
PAGE_BYTES = 3 * 1024 * 1024
# The largest reply a write may give (4 MiB, less room for gRPC's framing).
MAX_REPLY_BYTES = 4 * 1024 * 1024 - 1024


def check_reply_size(size: int, field: str) -> None:
    """A write whose reply most clients would refuse is refused instead, before it
    is stored: a stored write that looked failed would be sent again."""
    if size > MAX_REPLY_BYTES:
        raise InvalidArgument(
            field,
            f"the reply would be {size} bytes, over the {MAX_REPLY_BYTES} bytes most "
            "clients accept (the runs' schema errors count); send fewer events per call",
        )


def fill_page(
    items: Sequence[T],
    repeated: Any,
    to_pb: Callable[[T, Any], Any],
    next_cursor: str,
    cursor: Callable[[T], str],
) -> str:
    """Add `items` to the `repeated` field of a reply, but stop (after at least one)
    before the page's messages pass PAGE_BYTES; returns the next page token."""
    added = fill(items, repeated, to_pb)
    return cursor(items[added - 1]) if added < len(items) else next_cursor


def fill(
    items: Sequence[T],
    repeated: Any,
    to_pb: Callable[[T, Any], Any],
    used: int = 0,
    at_least: int = 1,
) -> int:
    """Add `items` to the `repeated` field of a reply while the reply, `used` bytes
    before them, stays within PAGE_BYTES (but `at_least` of them whatever their
    size); returns how many were added."""
    size = used
    for i, item in enumerate(items):
        size += to_pb(item, repeated.add()).ByteSize() + 8  # + its tag and length
        if size > PAGE_BYTES and i >= at_least:
            del repeated[-1]
            return i
    return len(items)


def page_size(requested: int, default: int = 50, maximum: int = 1000) -> int:
    return default if requested == 0 else min(requested, maximum)


def offset_token(token: str) -> int:
    """A token that pages through one object's list: how many came before."""
    if not token:
        return 0
    if not (token.isascii() and token.isdigit()) or len(token) > 9:
        raise InvalidArgument("page_token", "is not a token this server issued")
    return int(token)


_AFTER = "after:"
_BEFORE = "before:"


def _wrap(prefix: str, text: str) -> str:
    return base64.urlsafe_b64encode(f"{prefix}{text}".encode()).decode().rstrip("=")


def _unwrap(prefix: str, token: str) -> str:
    try:
        padded = token + "=" * (-len(token) % 4)
        text = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeError, ValueError):
        text = ""
    if not text.startswith(prefix) or len(text) == len(prefix):
        raise InvalidArgument("page_token", "is not a token this server issued")
    return text[len(prefix) :]


def item_token(item_id: str, created_at: int) -> str:
    """A token that pages on, newest first, from before the event or run `item_id`
    (the last of a page), made at `created_at` (an event id sent again after
    retention deleted its event names another event). Opaque, and about nothing but
    what the page showed: the store's row numbers are shared by every environment,
    and how far they moved between two pages would tell how much other
    environments wrote."""
    return _wrap(_BEFORE, f"{created_at}:{item_id}")


def item_before(token: str) -> tuple[str, int] | None:
    """The (id, created_at) an `item_token` pages on from; None for the first page."""
    if not token:
        return None
    created_at, _, item_id = _unwrap(_BEFORE, token).partition(":")
    if not item_id or not (created_at.isascii() and created_at.isdigit()):
        raise InvalidArgument("page_token", "is not a token this server issued")
    return item_id, int(created_at)


def name_token(name: str) -> str:
    """A token that pages on after `name` (a job id). Opaque, so that a mistyped
    token is refused rather than taken for a name to list from."""
    return _wrap(_AFTER, name)


def name_after(token: str) -> str:
    """The name a `name_token` pages on after; "" for the first page."""
    return _unwrap(_AFTER, token) if token else ""
