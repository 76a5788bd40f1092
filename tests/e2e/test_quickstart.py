"""The README quickstart, run as written.

The README quotes QUICKSTART. Each command runs in a shell from the repository
root; `make run` is replaced by the same `tripwire serve` on a free port and a
temporary database, `localhost:50051` by that server's address, and the CLI
finds it through TRIPWIRE_URL.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

README_ADDRESS = "localhost:50051"
QUICKSTART = [
    "make run",
    ".venv/bin/grpcurl -plaintext"
    """ -d '{"event":{"name":"new.user","payload":{"userId":"u_1"}}}'"""
    " localhost:50051 tripwire.v1.EventService/SendEvent",
    ".venv/bin/tripwire events",
]


def test_make_run_is_tripwire_serve(run):
    dry = run(["make", "-n", "run"])

    assert dry.returncode == 0, dry.stderr
    assert re.search(r"\.venv/bin/tripwire serve\s*$", dry.stdout, re.MULTILINE), dry.stdout


def test_quickstart_runs_as_written(start_server, run):
    assert QUICKSTART[0] == "make run"
    server = start_server(command=[Path(sys.executable).parent / "tripwire", "serve"])
    outputs = []
    for command in QUICKSTART[1:]:
        result = run(
            ["bash", "-c", command.replace(README_ADDRESS, server.address)],
            env={"TRIPWIRE_URL": server.address},
        )
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        outputs.append(result.stdout)

    sent = json.loads(outputs[0])["event"]
    assert sent["deliveredAt"]
    assert sent["id"] in outputs[1]
    assert "new.user" in outputs[1]
