"""The documented descriptors reflection serves: used only where they match the code."""

from __future__ import annotations

import logging

import pytest
from google.protobuf import descriptor_pb2
from tripwire.server.api import reflection
from tripwire.v1 import event_pb2, event_service_pb2


def _shipped() -> descriptor_pb2.FileDescriptorSet:
    found = descriptor_pb2.FileDescriptorSet()
    found.ParseFromString(reflection.documented_bytes())
    return found


def test_every_file_of_the_contract_is_served_with_its_comments() -> None:
    served = reflection.documented([event_service_pb2.DESCRIPTOR])

    # The service's file and the files it imports from tripwire; not Google's.
    assert set(served) == {
        "tripwire/v1/event_service.proto",
        "tripwire/v1/event.proto",
        "tripwire/v1/job.proto",
        "tripwire/v1/run.proto",
    }
    file = descriptor_pb2.FileDescriptorProto.FromString(served["tripwire/v1/event.proto"])
    comments = [location.leading_comments for location in file.source_code_info.location]
    assert any("What a sender supplies for one event." in c for c in comments)
    # JSON names as protoc computes them, which grpcurl prints.
    event = next(m for m in file.message_type if m.name == "Event")
    fields = {f.name: f.json_name for f in event.field}
    assert fields["delivered_at"] == "deliveredAt"


def test_a_stale_file_is_served_without_comments(caplog: pytest.LogCaptureFixture) -> None:
    stale = _shipped()
    for file in stale.file:
        if file.name == "tripwire/v1/event.proto":
            file.message_type[0].field.add(name="added_later", number=99, type=9, label=1)

    with caplog.at_level(logging.WARNING):
        served = reflection.documented([event_service_pb2.DESCRIPTOR], stale.SerializeToString())

    assert "tripwire/v1/event.proto" not in served
    assert "tripwire/v1/event_service.proto" in served
    assert "describes another version of it" in caplog.text


def test_an_unreadable_set_serves_no_comments(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        served = reflection.documented([event_pb2.DESCRIPTOR], b"\xff\xff not a descriptor set")

    assert served == {}
    assert "without comments" in caplog.text


def test_error_info_names_the_error_types_the_server_sets() -> None:
    served = reflection.documented([event_service_pb2.DESCRIPTOR])
    file = descriptor_pb2.FileDescriptorProto.FromString(served["tripwire/v1/run.proto"])
    error_info = next(i for i, m in enumerate(file.message_type) if m.name == "ErrorInfo")
    path = [4, error_info, 2, 0]  # message_type[ErrorInfo].field[0]: type
    (comment,) = [
        loc.leading_comments for loc in file.source_code_info.location if list(loc.path) == path
    ]
    # As the store writes them (CancelRun, timeouts, SetJobEnabled, a replay's
    # nondeterminism) and the worker stream (outputs over the limit or not JSON).
    for kind in (
        "Canceled",
        "TimeoutError",
        "Aborted",
        "NondeterminismError",
        "OutputTooLarge",
        "InvalidOutput",
    ):
        assert f'"{kind}"' in comment, kind


def _undocumented(file: descriptor_pb2.FileDescriptorProto) -> list[str]:
    """Every element of `file` whose leading comment is missing or blank, by full name.

    Paths as in descriptor.proto: message_type 4, field 2, nested_type 3,
    enum_type 5 (4 within a message), enum value 2, service 6, method 2.
    """
    documented = {
        tuple(loc.path) for loc in file.source_code_info.location if loc.leading_comments.strip()
    }
    missing: list[str] = []

    def check(path: tuple[int, ...], name: str) -> None:
        if path not in documented:
            missing.append(name)

    def enum(e: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...], prefix: str) -> None:
        check(path, f"{prefix}{e.name}")
        for i, value in enumerate(e.value):
            check((*path, 2, i), f"{prefix}{e.name}.{value.name}")

    def message(m: descriptor_pb2.DescriptorProto, path: tuple[int, ...], prefix: str) -> None:
        name = f"{prefix}{m.name}"
        check(path, name)
        for i, field in enumerate(m.field):
            check((*path, 2, i), f"{name}.{field.name}")
        for i, nested in enumerate(m.nested_type):
            message(nested, (*path, 3, i), f"{name}.")
        for i, nested_enum in enumerate(m.enum_type):
            enum(nested_enum, (*path, 4, i), f"{name}.")

    prefix = f"{file.package}."
    for i, m in enumerate(file.message_type):
        message(m, (4, i), prefix)
    for i, e in enumerate(file.enum_type):
        enum(e, (5, i), prefix)
    for i, service in enumerate(file.service):
        check((6, i), f"{prefix}{service.name}")
        for j, method in enumerate(service.method):
            check((6, i, 2, j), f"{prefix}{service.name}.{method.name}")
    return missing


def test_every_element_of_the_contract_is_documented() -> None:
    # `grpcurl describe` prints a leading comment above each declaration: every
    # service, RPC, message, field, enum and enum value of tripwire has one.
    files = [f for f in _shipped().file if f.name.startswith("tripwire/")]
    assert {f.name for f in files} >= {
        "tripwire/v1/event.proto",
        "tripwire/v1/event_service.proto",
        "tripwire/v1/job.proto",
        "tripwire/v1/job_service.proto",
        "tripwire/v1/run.proto",
        "tripwire/v1/run_service.proto",
        "tripwire/v1/worker_service.proto",
    }
    missing = [name for file in files for name in _undocumented(file)]
    assert not missing, f"{len(missing)} without a leading comment:\n" + "\n".join(missing)
