"""The public surface of tripwire.client, pinned: changing it is a deliberate act."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import tripwire.client
from tripwire.client import AsyncClient, Client

EXPECTED = [
    "IO",
    "TERMINAL_RUN_STATUSES",
    "AlreadyExists",
    "AsyncClient",
    "Cancelled",
    "Client",
    "DeadlineExceeded",
    "DuplicateKeyError",
    "ErrorInfo",
    "Event",
    "EventDetail",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "Job",
    "JobDefinition",
    "JobDefinitionError",
    "JobMatch",
    "LogEntry",
    "NotFound",
    "Page",
    "PermissionDenied",
    "ResourceExhausted",
    "Run",
    "RunContext",
    "RunDetail",
    "RunEnded",
    "RunUpdate",
    "SyncIO",
    "Task",
    "TaskError",
    "Trigger",
    "TripwireError",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "ValidationError",
    "Worker",
    "cron_trigger",
    "event_trigger",
    "interval_trigger",
    "invoke_trigger",
]

CLIENT_ROOT = Path(tripwire.client.__file__).parent


def test_all_is_pinned() -> None:
    assert tripwire.client.__all__ == EXPECTED


def test_every_exported_name_exists() -> None:
    for name in EXPECTED:
        assert getattr(tripwire.client, name) is not None, name


def _public_methods(cls: type) -> set[str]:
    return {name for name, _ in inspect.getmembers(cls, callable) if not name.startswith("_")}


# The worker lives on the blocking client (define_job at import time, listen() blocks).
WORKER_METHODS = {"define_job", "listen", "run_worker"}


def test_both_flavours_have_the_same_methods() -> None:
    assert WORKER_METHODS <= _public_methods(Client)
    shared = _public_methods(Client) - {"aio"} - WORKER_METHODS
    assert shared == _public_methods(AsyncClient)
    assert {"send_event", "watch_run", "wait_for_run", "close"} <= shared


def test_both_flavours_have_the_same_signatures() -> None:
    for name in _public_methods(AsyncClient):
        sync = inspect.signature(getattr(Client, name))
        async_ = inspect.signature(getattr(AsyncClient, name))
        assert sync.parameters.keys() == async_.parameters.keys(), name


def test_no_module_imports_the_server() -> None:
    for path in CLIENT_ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            assert not any(n.startswith("tripwire.server") for n in names), path


def test_importing_the_client_and_cli_loads_no_server_module() -> None:
    code = (
        "import sys, tripwire.client, tripwire.client.cli\n"
        "bad = [m for m in sys.modules if m.startswith('tripwire.server')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_no_namespace_init_in_the_client_root() -> None:
    assert not (CLIENT_ROOT.parent / "__init__.py").exists()
