"""Domain errors of the server.

One root, small subclasses, the docstring as the default message. The servicers
map them to gRPC status codes in one table (`tripwire.server.rpc`); nothing
else in the server knows about gRPC codes.
"""

from __future__ import annotations

# Kept well under the 8 KiB gRPC allows a status message.
MAX_MESSAGE_BYTES = 4000


class TripwireError(Exception):
    """Internal error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        """The message, cut to MAX_MESSAGE_BYTES: it may quote a bad value at length,
        and gRPC ends a call whose status message is over 8 KiB with another error."""
        text = str(self.args[0])
        encoded = text.encode(errors="replace")
        if len(encoded) <= MAX_MESSAGE_BYTES:
            return text
        return encoded[: MAX_MESSAGE_BYTES - 20].decode(errors="ignore") + " … (cut)"


class InvalidArgument(TripwireError):
    """Invalid argument."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(f"{field}: {problem}" if field else problem)


class NotFound(TripwireError):
    """Not found."""


class AlreadyExists(TripwireError):
    """Already exists."""


class FailedPrecondition(TripwireError):
    """The object is not in a state that allows this."""


class Unauthenticated(TripwireError):
    """Missing or unknown API key: send 'authorization: Bearer <key>'."""


class PermissionDenied(TripwireError):
    """This API key may not do that."""


class ResourceExhausted(TripwireError):
    """A limit was exceeded."""


class Unavailable(TripwireError):
    """The server is shutting down; retry on another replica or later."""


class StaleAttempt(FailedPrecondition):
    """This attempt of the run is no longer current; abandon it."""

    def __init__(self, message: str, *, ended: bool = False) -> None:
        super().__init__(message)
        # True when the run has ended (cancelled, timed out...), not merely re-dispatched.
        self.ended = ended
