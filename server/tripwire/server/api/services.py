"""Putting the services on the gRPC server.

Built from each service's descriptor, as the generated `add_*_to_server`
functions build them, with one difference: a request that cannot be decoded
(corrupt bytes, a string field that is not UTF-8) is answered
INVALID_ARGUMENT naming its message type. gRPC's own decoding answered
UNKNOWN and logged a traceback at ERROR for every such call. A stream's
requests (RunJob) are decoded by gRPC as before: only workers send them.

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


def _unary(behavior: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    @functools.wraps(behavior)
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await behavior(request, context)

    return call


def _server_stream(behavior: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    @functools.wraps(behavior)
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        async for reply in behavior(request, context):
            yield reply

    return call


def add(server: grpc.aio.Server, service: descriptor.ServiceDescriptor, servicer: object) -> None:
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
                _server_stream(behavior),
                request_deserializer=_decoder(request),
                response_serializer=reply,
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _unary(behavior), request_deserializer=_decoder(request), response_serializer=reply
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
