"""Server reflection, v1alpha and v1, so grpcurl needs no .proto files.

Three fixes over grpcio-reflection as shipped:
- It has only v1alpha. v1 has the same messages under another package, so the
  same servicer is registered under the v1 name too, with a v1 copy of the
  descriptor so that `describe` works on it.
- Python's descriptors lose `json_name`, so grpcurl would print snake_case
  field names. Reflection serves copies with `json_name` filled in, as protoc
  computes it, and grpcurl shows the same camelCase JSON as every other
  client (`deliveredAt`, not `delivered_at`).
- The upb descriptor pool finds no file for a method's name, so `grpcurl
  describe tripwire.v1.EventService.SendEvent` said "Symbol not found": a
  name not found is tried again as its service's.

And one addition: the generated code keeps no comments, so `grpcurl describe`
showed bare declarations. `make proto` also writes descriptors.binpb beside
the .proto files, with their comments (source info); tripwire's own files are
served from it, so `describe` prints each service, method, message and field
with its documentation. A file in it that does not match the code the server
runs (a stale copy) is not used: that file is served without comments.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from importlib import resources

import grpc
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

log = logging.getLogger(__name__)

V1_SERVICE = "grpc.reflection.v1.ServerReflection"
DOCUMENTED = "descriptors.binpb"  # in the tripwire.v1 package, written by `make proto`


def json_name(field_name: str) -> str:
    """protoc's default JSON name: drop each '_' and upper-case the letter after it."""
    parts = field_name.split("_")
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


def _fill_json_names(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
    for message in messages:
        for field in message.field:
            if not field.HasField("json_name"):
                field.json_name = json_name(field.name)
        _fill_json_names(message.nested_type)


def _copy(file: descriptor.FileDescriptor) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    _fill_json_names(proto.message_type)
    return proto


def _v1_reflection() -> descriptor_pb2.FileDescriptorProto:
    proto = _copy(reflection_pb2.DESCRIPTOR)
    proto.name = "grpc/reflection/v1/reflection.proto"
    proto.package = "grpc.reflection.v1"
    for message in proto.message_type:
        for field in message.field:
            if field.type_name:
                field.type_name = field.type_name.replace(".v1alpha.", ".v1.", 1)
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(".v1alpha.", ".v1.", 1)
            method.output_type = method.output_type.replace(".v1alpha.", ".v1.", 1)
    return proto


def build_pool(files: Iterable[descriptor.FileDescriptor]) -> descriptor_pool.DescriptorPool:
    """A pool of `files` and their dependencies, with JSON names filled in."""
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: descriptor.FileDescriptor) -> None:
        if file.name in added:
            return
        for dependency in file.dependencies:
            add(dependency)
        pool.Add(_copy(file))
        added.add(file.name)

    for file in files:
        add(file)
    add(reflection_pb2.DESCRIPTOR)
    pool.Add(_v1_reflection())
    return pool


def documented_bytes() -> bytes:
    """descriptors.binpb as shipped."""
    return (resources.files("tripwire.v1") / DOCUMENTED).read_bytes()


def documented(
    files: Iterable[descriptor.FileDescriptor], data: bytes | None = None
) -> dict[str, bytes]:
    """The serialized FileDescriptorProto, comments included, of each of `files`
    that the documented set (`data`, or descriptors.binpb) has as the code has it."""
    if data is None:
        try:
            data = documented_bytes()
        except OSError as exc:
            log.warning("reflection serves the contract without comments: %s", exc)
            return {}
    found = descriptor_pb2.FileDescriptorSet()
    try:
        found.ParseFromString(data)
    except Exception as exc:
        log.warning("reflection serves the contract without comments: %s: %s", DOCUMENTED, exc)
        return {}
    wanted: dict[str, descriptor.FileDescriptor] = {}
    pending = list(files)
    while pending:  # the files and everything they import
        file = pending.pop()
        if file.name not in wanted:
            wanted[file.name] = file
            pending += file.dependencies
    served: dict[str, bytes] = {}
    for proto in found.file:
        code = wanted.get(proto.name)
        if code is None:
            continue
        bare = descriptor_pb2.FileDescriptorProto()
        bare.CopyFrom(proto)
        bare.ClearField("source_code_info")
        if bare != _copy(code):
            log.warning(
                "reflection serves %s without comments: %s describes another version of it "
                "(run `make proto`)",
                proto.name,
                DOCUMENTED,
            )
            continue
        served[proto.name] = proto.SerializeToString()
    return served


class _ReflectionServicer(reflection.aio.ReflectionServicer):  # type: ignore[misc]
    def __init__(
        self,
        service_names: Iterable[str],
        pool: descriptor_pool.DescriptorPool,
        documented: Mapping[str, bytes],
    ) -> None:
        super().__init__(service_names, pool=pool)
        self._documented = documented

    def _with_comments(
        self, response: reflection_pb2.ServerReflectionResponse
    ) -> reflection_pb2.ServerReflectionResponse:
        """`response` with each file it carries replaced by its documented form."""
        if response.HasField("file_descriptor_response"):
            files = response.file_descriptor_response.file_descriptor_proto
            for i, data in enumerate(files):
                name = descriptor_pb2.FileDescriptorProto.FromString(data).name
                files[i] = self._documented.get(name, data)
        return response

    def _file_by_filename(self, request, filename):  # type: ignore[no-untyped-def]
        return self._with_comments(super()._file_by_filename(request, filename))

    def _file_containing_extension(self, request, containing_type, number):  # type: ignore[no-untyped-def]
        return self._with_comments(
            super()._file_containing_extension(request, containing_type, number)
        )

    def _file_containing_symbol(self, request, fully_qualified_name):  # type: ignore[no-untyped-def]
        try:
            self._pool.FindFileContainingSymbol(fully_qualified_name)
        except KeyError:
            service, dot, method = fully_qualified_name.rpartition(".")
            try:
                found = self._pool.FindServiceByName(service) if dot else None
            except KeyError:
                found = None
            if found is not None and method in found.methods_by_name:
                fully_qualified_name = service
        return self._with_comments(super()._file_containing_symbol(request, fully_qualified_name))


def enable(
    service_names: Iterable[str],
    files: Iterable[descriptor.FileDescriptor],
    server: grpc.aio.Server,
) -> None:
    files = list(files)
    names = [*service_names, reflection.SERVICE_NAME, V1_SERVICE]
    servicer = _ReflectionServicer(names, build_pool(files), documented(files))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE, {"ServerReflectionInfo": handler}),)
    )
