"""What a grpcurl user sees, with no .proto files: reflection, JSON in and out,
status codes, API keys."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e

SERVICES = {
    "tripwire.v1.EventService",
    "tripwire.v1.JobService",
    "tripwire.v1.RunService",
    "tripwire.v1.WorkerService",
    "grpc.health.v1.Health",
}
NEW_USER = {"event": {"name": "new.user", "payload": {"userId": "u_1"}}}


def test_list_shows_every_service(server, grpcurl):
    result = grpcurl(server.address, verb=["list"])

    assert result.returncode == 0, result.stderr
    assert SERVICES <= set(result.stdout.split())


def test_describe_event_service(server, grpcurl):
    result = grpcurl(server.address, "tripwire.v1.EventService", verb=["describe"])

    assert result.returncode == 0, result.stderr
    assert "service EventService" in result.stdout
    assert "rpc SendEvent ( .tripwire.v1.SendEventRequest )" in result.stdout


@pytest.mark.parametrize(
    ("symbol", "shown"),
    [
        ("tripwire.v1.EventService.SendEvent", "rpc SendEvent ( .tripwire.v1.SendEventRequest )"),
        ("tripwire.v1.RunService.WatchRun", "returns ( stream .tripwire.v1.WatchRunResponse )"),
        ("grpc.health.v1.Health.Check", "rpc Check ( .grpc.health.v1.HealthCheckRequest )"),
        # With the documentation of the .proto files.
        ("tripwire.v1.EventService.SendEvent", "// Stores one event."),
        ("tripwire.v1.EventService", "// Events in: send, inspect, cancel."),
        ("tripwire.v1.EventInput", "// What a sender supplies for one event."),
        ("tripwire.v1.Run", "// Dispatch count; the fencing token of the worker protocol."),
        ("tripwire.v1.RunJobRequest", "// Worker -> server."),
    ],
)
def test_describe_a_symbol(server, grpcurl, symbol, shown):
    result = grpcurl(server.address, symbol, verb=["describe"])

    assert result.returncode == 0, result.stderr
    assert shown in result.stdout


def test_send_event_with_plain_json(server, grpcurl):
    reply = grpcurl.json(server.address, "tripwire.v1.EventService/SendEvent", NEW_USER)

    event = reply["event"]
    assert "deliveredAt" in event, (
        f"grpcurl printed proto field names, not JSON names: {sorted(event)}; "
        "the descriptors served by reflection need json_name"
    )
    assert event["id"]
    assert event["name"] == "new.user"
    assert event["payload"] == {"userId": "u_1"}
    assert event["source"] == "trigger.dev"
    assert event["deliveredAt"]
    assert event["status"] == "EVENT_STATUS_DELIVERED"


def test_empty_name_is_invalid_argument(server, grpcurl):
    result = grpcurl(server.address, "tripwire.v1.EventService/SendEvent", {"event": {"name": ""}})

    assert result.returncode != 0
    assert "Code: InvalidArgument" in result.stderr
    assert "event.name" in result.stderr


def test_event_creates_a_queued_run_of_a_registered_job(server, grpcurl):
    job = {
        "job": {
            "id": "welcome-email",
            "version": "1.0.0",
            "trigger": {"event": {"names": ["new.user"]}},
        }
    }
    registered = grpcurl.json(server.address, "tripwire.v1.JobService/RegisterJob", job)
    assert registered["job"]["id"] == "welcome-email"

    sent = grpcurl.json(server.address, "tripwire.v1.EventService/SendEvent", NEW_USER)
    event_id = sent["event"]["id"]
    listed = grpcurl.json(server.address, "tripwire.v1.RunService/ListRuns", {"eventId": event_id})

    [run] = listed["runs"]
    assert run["jobId"] == "welcome-email"
    assert run["jobVersion"] == "1.0.0"
    assert run["eventId"] == event_id
    assert run["status"] == "RUN_STATUS_QUEUED"


def test_api_key_required_except_for_health_and_reflection(start_server, grpcurl):
    server = start_server(args=["--api-key", "k1=prod"])
    send = "tripwire.v1.EventService/SendEvent"

    anonymous = grpcurl(server.address, send, NEW_USER)
    assert anonymous.returncode != 0
    assert "Code: Unauthenticated" in anonymous.stderr

    wrong = grpcurl(server.address, send, NEW_USER, headers=["authorization: Bearer nope"])
    assert "Code: Unauthenticated" in wrong.stderr

    reply = grpcurl.json(server.address, send, NEW_USER, headers=["authorization: Bearer k1"])
    assert reply["event"]["status"] == "EVENT_STATUS_DELIVERED"

    listed = grpcurl(server.address, verb=["list"])
    assert listed.returncode == 0, listed.stderr
    assert SERVICES <= set(listed.stdout.split())

    health = grpcurl.json(server.address, "grpc.health.v1.Health/Check")
    assert health["status"] == "SERVING"
