"""The `tripwire` console script against the server subprocess."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

TRIPWIRE = Path(sys.executable).parent / "tripwire"
JOB = {
    "job": {
        "id": "welcome-email",
        "version": "1.0.0",
        "trigger": {"event": {"names": ["new.user"]}},
    }
}


@pytest.fixture
def cli(server, run):
    """`tripwire ARGS...` pointed at the test server by TRIPWIRE_URL."""

    def tripwire(*args: str, api_key: str | None = None):
        env = {"TRIPWIRE_URL": server.address}
        if api_key is not None:
            env["TRIPWIRE_API_KEY"] = api_key
        return run([TRIPWIRE, *args], env=env)

    return tripwire


def ok(result) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_send_shows_the_event_and_its_run(server, cli, grpcurl):
    grpcurl.json(server.address, "tripwire.v1.JobService/RegisterJob", JOB)

    out = ok(cli("send", "new.user", "--payload", '{"userId": "u_1"}', "--id", "evt_1"))

    assert "evt_1" in out
    assert "DELIVERED" in out
    assert "welcome-email" in out
    assert "QUEUED" in out


def test_send_json(cli):
    sent = json.loads(ok(cli("send", "new.user", "--payload", '{"userId": "u_1"}', "--json")))

    assert sent["id"]
    assert sent["name"] == "new.user"
    assert sent["payload"] == {"userId": "u_1"}
    assert sent["status"] == "DELIVERED"
    assert sent["delivered_at"]


def test_send_twice_with_one_id_is_deduplicated(cli):
    first = json.loads(ok(cli("send", "new.user", "--id", "evt_1", "--json")))
    again = json.loads(ok(cli("send", "new.user", "--id", "evt_1", "--json")))

    assert first["deduplicated"] is False
    assert again["deduplicated"] is True
    assert again["delivered_at"] == first["delivered_at"]


def test_a_resend_that_delivers_an_event_matching_no_job_says_so(cli):
    assert "PENDING" in ok(cli("send", "nobody.listens", "--id", "r1", "--deliver-after", "600"))
    out = ok(cli("send", "nobody.listens", "--id", "r1", "--payload", '{"a": 1}'))

    assert "DELIVERED" in out
    assert "runs: none created by this call" in out and "`tripwire match`" in out


def test_events_lists_newest_first(cli):
    for n in range(3):
        ok(cli("send", "new.user", "--id", f"evt_{n}", "--payload", json.dumps({"n": n})))
    ok(cli("send", "other.thing", "--id", "evt_other"))

    out = ok(cli("events"))
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["ID", "NAME"]
    assert [line.split()[0] for line in lines[1:]] == ["evt_other", "evt_2", "evt_1", "evt_0"]

    named = json.loads(ok(cli("events", "--name", "new.user", "--json")))
    assert [e["id"] for e in named] == ["evt_2", "evt_1", "evt_0"]

    # A page at a time, the next one as the last line says.
    first = ok(cli("events", "--limit", "3")).splitlines()
    assert [line.split()[0] for line in first[1:4]] == ["evt_other", "evt_2", "evt_1"]
    assert first[-1].startswith("more: add --page-token ")
    token = first[-1].split()[-1]
    rest = ok(cli("events", "--limit", "3", "--page-token", token)).splitlines()
    assert [line.split()[0] for line in rest[1:]] == ["evt_0"]


def test_event_shows_its_runs(server, cli, grpcurl):
    grpcurl.json(server.address, "tripwire.v1.JobService/RegisterJob", JOB)
    ok(cli("send", "new.user", "--id", "evt_1"))

    out = ok(cli("event", "evt_1"))
    assert "evt_1" in out
    assert "welcome-email" in out

    detail = json.loads(ok(cli("event", "evt_1", "--json")))
    assert detail["event"]["id"] == "evt_1"
    [run] = detail["runs"]
    assert run["job_id"] == "welcome-email"
    assert run["status"] == "QUEUED"


def test_watch_cancel_runs_and_disable_against_the_server(server, cli, grpcurl):
    grpcurl.json(server.address, "tripwire.v1.JobService/RegisterJob", JOB)
    [run] = json.loads(ok(cli("send", "new.user", "--id", "evt_w", "--json")))["runs"]

    # No worker: the run stays QUEUED, and the watch gives up at its timeout.
    waited = cli("watch", run["id"], "--timeout", "1")
    assert waited.returncode == 1
    assert waited.stdout.split()[1:3] == ["run", "QUEUED"]
    assert waited.stderr == "error: the run did not end within --timeout 1 s\n"

    assert ok(cli("cancel-runs", "evt_w")) == f"cancelled 1 run:\n{run['id']}\n"
    assert ok(cli("cancel-runs", "evt_w")) == "no unfinished runs: none cancelled\n"
    [line] = ok(cli("watch", run["id"], "--json")).splitlines()
    assert json.loads(line)["run"]["status"] == "CANCELED"

    assert "welcome-email  1.0.0    no" in ok(cli("disable", "welcome-email"))
    [job] = json.loads(ok(cli("enable", "welcome-email", "--version", "1.0.0", "--json")))
    assert (job["version"], job["enabled"]) == ("1.0.0", True)


def test_unknown_event_is_an_error(cli):
    result = cli("event", "evt_missing")

    assert result.returncode == 1
    assert result.stderr.startswith("error: NOT_FOUND")
    assert result.stdout == ""


def test_api_key(start_server, run):
    server = start_server(args=["--api-key", "k1=prod"])
    env = {"TRIPWIRE_URL": server.address}

    refused = run([TRIPWIRE, "send", "new.user"], env=env)
    assert refused.returncode == 1
    assert "UNAUTHENTICATED" in refused.stderr

    sent = run([TRIPWIRE, "--api-key", "k1", "send", "new.user", "--id", "evt_1"], env=env)
    assert sent.returncode == 0, sent.stderr
    listed = run([TRIPWIRE, "events"], env={**env, "TRIPWIRE_API_KEY": "k1"})
    assert "evt_1" in listed.stdout
