"""gRPC status codes -> typed errors, in one table."""

from __future__ import annotations

import grpc
import pytest
from tripwire.client import errors
from tripwire.client.errors import (
    AlreadyExists,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    TripwireError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    from_rpc_error,
)


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str | None) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str | None:
        return self._details


TABLE = [
    (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
    (grpc.StatusCode.NOT_FOUND, NotFound),
    (grpc.StatusCode.ALREADY_EXISTS, AlreadyExists),
    (grpc.StatusCode.FAILED_PRECONDITION, FailedPrecondition),
    (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
    (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhausted),
    (grpc.StatusCode.UNAVAILABLE, Unavailable),
    (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
    (grpc.StatusCode.INTERNAL, Internal),
    (grpc.StatusCode.UNKNOWN, Internal),
    (grpc.StatusCode.DATA_LOSS, Internal),
    (grpc.StatusCode.CANCELLED, Cancelled),
    (grpc.StatusCode.ABORTED, TripwireError),
    (grpc.StatusCode.OUT_OF_RANGE, TripwireError),
    (grpc.StatusCode.UNIMPLEMENTED, Unimplemented),
]


@pytest.mark.parametrize(("code", "cls"), TABLE, ids=[c.name for c, _ in TABLE])
def test_status_code_maps_to_class(code: grpc.StatusCode, cls: type[TripwireError]) -> None:
    error = from_rpc_error(FakeRpcError(code, "what went wrong"))
    assert type(error) is cls
    assert error.code is code
    assert error.details == "what went wrong"
    assert str(error) == "what went wrong"
    assert error.code_name == code.name


def test_every_status_code_maps_to_a_tripwire_error() -> None:
    for code in grpc.StatusCode:
        if code is not grpc.StatusCode.OK:
            assert isinstance(from_rpc_error(FakeRpcError(code, "x")), TripwireError)


def test_asyncio_errors_map_too() -> None:
    aio_error = grpc.aio.AioRpcError(
        grpc.StatusCode.NOT_FOUND, grpc.aio.Metadata(), grpc.aio.Metadata(), details="no run r1"
    )
    error = from_rpc_error(aio_error)
    assert isinstance(error, NotFound)
    assert error.details == "no run r1"


def test_missing_details_fall_back_to_the_docstring() -> None:
    error = from_rpc_error(FakeRpcError(grpc.StatusCode.NOT_FOUND, None))
    assert error.details == "Not found."


def test_an_error_without_a_code_is_unknown_and_internal() -> None:
    error = from_rpc_error(grpc.RpcError())
    assert isinstance(error, Internal)
    assert error.code is grpc.StatusCode.UNKNOWN


def test_raised_client_side_an_error_carries_its_class_code() -> None:
    error = InvalidArgument("event.name: is required")
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert TripwireError("x").code is None
    assert TripwireError("x").code_name == "ERROR"
    assert repr(error) == "InvalidArgument('event.name: is required', code=INVALID_ARGUMENT)"


def test_every_class_is_a_tripwire_error_with_its_own_code() -> None:
    classes = [cls for _, cls in TABLE if cls is not TripwireError]
    for cls in classes:
        assert issubclass(cls, TripwireError)
        assert errors.error_class(cls.status_code) is cls
    assert errors.error_class(None) is TripwireError


@pytest.mark.parametrize("flavour", ["Client", "AsyncClient"])
def test_a_url_naming_no_server_is_refused_by_the_constructor(flavour: str) -> None:
    """Not at the first call, as an AttributeError or gRPC's UNKNOWN."""
    import tripwire.client

    cls = getattr(tripwire.client, flavour)
    with pytest.raises(TypeError, match="url: must be a string such as 'localhost:50051'"):
        cls("a", url=None)  # os.environ.get("TRIPWIRE_URL"), unset
    for url in ("", "  ", "http://", "grpcs:///"):
        with pytest.raises(ValueError, match="url: names no server: give host:port"):
            cls("a", url=url)
    assert cls("a", url="https://h:1/").url == "https://h:1/"


def test_an_api_key_is_stripped_and_must_be_printable_ascii() -> None:
    from tripwire.client._channel import Settings

    assert Settings("a", "u", "key\n", None).metadata == (("authorization", "Bearer key"),)
    with pytest.raises(ValueError, match="printable ASCII"):
        Settings("a", "u", "k\u00e9y", None)
