"""Typed errors of the tripwire client.

Every failed call raises a subclass of :class:`TripwireError`. This module is the only
place that knows gRPC status codes: :func:`from_rpc_error` turns a ``grpc.RpcError`` (sync
or asyncio) into the typed error, and each subclass carries the code it stands for, so an
error the client raises itself (a bad argument caught before the call) looks exactly like
the one the server would have sent.
"""

from __future__ import annotations

from typing import ClassVar

import grpc

__all__ = [
    "AlreadyExists",
    "Cancelled",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "JobDefinitionError",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "TripwireError",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "error_class",
    "from_rpc_error",
]


class TripwireError(Exception):
    """The tripwire call failed."""

    #: The status code this class stands for; None for the root.
    status_code: ClassVar[grpc.StatusCode | None] = None

    code: grpc.StatusCode | None
    details: str
    #: From ``send_event(s)``: the ids of the events it sent, the ones the client made
    #: included. A send that failed (DEADLINE_EXCEEDED, say) may still have been
    #: stored: sent again with these ids, it cannot be stored twice.
    event_ids: tuple[str, ...]

    def __init__(self, details: str | None = None, *, code: grpc.StatusCode | None = None):
        self.details = details or (self.__doc__ or "").strip()
        self.code = code if code is not None else self.status_code
        self.event_ids = ()
        super().__init__(self.details)

    @property
    def code_name(self) -> str:
        """The code's name (``"NOT_FOUND"``), or ``"ERROR"`` when there is none."""
        return self.code.name if self.code is not None else "ERROR"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.details!r}, code={self.code_name})"


class InvalidArgument(TripwireError):
    """The request was invalid."""

    status_code = grpc.StatusCode.INVALID_ARGUMENT


class JobDefinitionError(InvalidArgument, ValueError):
    """The job definition is invalid (raised where the job or its trigger is defined,
    before anything reaches the server; also a ValueError)."""


class NotFound(TripwireError):
    """Not found."""

    status_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(TripwireError):
    """Already exists."""

    status_code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(TripwireError):
    """The object is not in a state that allows this call."""

    status_code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(TripwireError):
    """The call needs a valid API key."""

    status_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(TripwireError):
    """The API key does not allow this call."""

    status_code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(TripwireError):
    """A limit was exceeded."""

    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(TripwireError):
    """The server is unavailable (not reachable or shutting down)."""

    status_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(TripwireError, TimeoutError):
    """The call did not finish in time (also a TimeoutError)."""

    status_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Internal(TripwireError):
    """The server failed unexpectedly."""

    status_code = grpc.StatusCode.INTERNAL


class Cancelled(TripwireError):
    """The call was cancelled before it finished (the client was closed under it,
    say); whether a write it carried was stored is not known."""

    status_code = grpc.StatusCode.CANCELLED


class Unimplemented(TripwireError):
    """The server does not have this method (an older tripwire, or not tripwire)."""

    status_code = grpc.StatusCode.UNIMPLEMENTED


_BY_CODE: dict[grpc.StatusCode, type[TripwireError]] = {
    cls.status_code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Unauthenticated,
        PermissionDenied,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
        Internal,
        Cancelled,
        Unimplemented,
    )
    if cls.status_code is not None
}
# Codes with no class of their own that still mean "the server broke", not "you did".
_BY_CODE[grpc.StatusCode.DATA_LOSS] = Internal
_BY_CODE[grpc.StatusCode.UNKNOWN] = Internal


def error_class(code: grpc.StatusCode | None) -> type[TripwireError]:
    """The error class for a status code (the root class for codes with no subclass)."""
    if code is None:
        return TripwireError
    return _BY_CODE.get(code, TripwireError)


def from_rpc_error(error: grpc.RpcError) -> TripwireError:
    """The typed error for a failed gRPC call (``grpc.RpcError`` or ``AioRpcError``)."""
    code_fn = getattr(error, "code", None)
    details_fn = getattr(error, "details", None)
    code = code_fn() if callable(code_fn) else None
    details = details_fn() if callable(details_fn) else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    return error_class(code)(details or None, code=code)
