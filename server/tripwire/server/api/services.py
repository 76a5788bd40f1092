"""Putting the services on the gRPC server.

Built from each service's descriptor, as the generated `add_*_to_server`
functions build them, with two differences: a request is decoded only once
the call's API key is checked (a caller without one cannot make the server
spend time decoding up to 64 MiB), and one that cannot be decoded (corrupt
bytes, a string field that is not UTF-8) is answered INVALID_ARGUMENT naming
its message type. gRPC's own decoding answered UNKNOWN and logged a traceback
at ERROR for every such call. A stream's requests (RunJob) are decoded by
gRPC as they are read, which its handler does only once it has checked the key.

Also grpc's asyncio health servicer with `List`, which it leaves
unimplemented while reflection lists it.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import descriptor, message, message_factory
from grpc_health.v1 import health, health_pb2

from ..errors import TripwireError
from .rpc import Authenticator, status_of


class Undecodable:
    """What an undecodable request becomes, so that the call can refuse it."""

    def __init__(self, type_name: str, error: Exception) -> None:
        if "MaxDepth" in str(error):
            # Protobuf decodes messages nested at most 100 deep; a JSON value (an event's
            # payload, a job's filter or schema) costs three levels per object.
            self.message = (
                f"the request is not a valid {type_name}: it nests messages more than "
                "100 levels deep, which protobuf does not decode; a JSON value in it (a "
                "payload, context, filter or schema) nests objects and arrays too deep "
                "(30 levels at most)"
            )
        else:
            self.message = f"the request is not a valid {type_name}: {error}"


def _decoder(cls: type[message.Message]) -> Callable[[bytes], Any]:
    name = cls.DESCRIPTOR.full_name

    def decode(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except message.DecodeError as exc:
            return Undecodable(name, exc)

    return decode


async def _admit(auth: Authenticator, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """The key checked before the request is decoded: decoding a large request
    costs the loop time, which a caller without a key must not get to spend."""
    try:
        auth.environment(context)
    except TripwireError as exc:
        await context.abort(status_of(exc), exc.message)


def _unary(
    behavior: Callable[[Any, Any], Any], decode: Callable[[bytes], Any], auth: Authenticator
) -> Callable[[Any, Any], Any]:
    @functools.wraps(behavior)
    async def call(data: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await _admit(auth, context)
        request = decode(data)
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await behavior(request, context)

    return call


def _server_stream(
    behavior: Callable[[Any, Any], Any], decode: Callable[[bytes], Any], auth: Authenticator
) -> Callable[[Any, Any], Any]:
    @functools.wraps(behavior)
    async def call(data: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        await _admit(auth, context)
        request = decode(data)
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        async for reply in behavior(request, context):
            yield reply

    return call


def add(
    server: grpc.aio.Server,
    service: descriptor.ServiceDescriptor,
    servicer: object,
    auth: Authenticator,
) -> None:
    """A unary or server-streaming call's request arrives as bytes and is decoded
    once `auth` has admitted the call; a stream's requests (RunJob) as they are
    read, which its handler does only after checking the key."""
    handlers = {}
    for method in service.methods:
        request = message_factory.GetMessageClass(method.input_type)
        reply = message_factory.GetMessageClass(method.output_type).SerializeToString
        behavior = getattr(servicer, method.name)
        if method.client_streaming:
            make = (
                grpc.stream_stream_rpc_method_handler
                if method.server_streaming
                else grpc.stream_unary_rpc_method_handler
            )
            handlers[method.name] = make(
                behavior, request_deserializer=request.FromString, response_serializer=reply
            )
        elif method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _server_stream(behavior, _decoder(request), auth), response_serializer=reply
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _unary(behavior, _decoder(request), auth), response_serializer=reply
            )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)


class Health(health.aio.HealthServicer):  # type: ignore[misc]  # untyped
    """grpc's, with `List`: every service's status, as `Check` would answer it."""

    async def List(
        self, request: health_pb2.HealthListRequest, context: Any
    ) -> health_pb2.HealthListResponse:
        reply = health_pb2.HealthListResponse()
        for name, status in self._server_status.items():
            reply.statuses[name].status = status
        return reply
