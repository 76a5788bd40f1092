"""A user's code type-checks against the installed package, as mypy sees it from
outside this repository (no config of ours): the package says it is typed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MISUSE = """
from typing import Any

from tripwire.client import IO, Client, RunContext, invoke_trigger

client = Client("app", url="localhost:50051")


@client.define_job(id="j", version="1.0.0", trigger=invoke_trigger())
async def job(payload: Any, io: IO, ctx: RunContext) -> None:
    sent = await io.send_event("k", {"name": "n"})
    reveal_type(sent)
    count: int = sent.name
"""


def _mypy(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--cache-dir",
            str(path.parent / ".cache"),
            path.name,
        ],
        cwd=path.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_seed_example_passes_mypy_strict(tmp_path: Path) -> None:
    seed = tmp_path / "seed.py"
    shutil.copy(EXAMPLES / "seed.py", seed)
    done = _mypy(seed)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_client_is_typed_not_any(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(MISUSE)
    done = _mypy(app)
    assert 'Revealed type is "tripwire.client.models.Event"' in done.stdout, done.stdout
    assert 'Incompatible types in assignment (expression has type "str"' in done.stdout
    assert done.returncode == 1


WATCHING = """
from contextlib import aclosing, closing

from tripwire.client import Client


def first_update(client: Client, run_id: str) -> object:
    with closing(client.watch_run(run_id)) as updates:
        for update in updates:
            return update
    return None


async def first_update_async(client: Client, run_id: str) -> object:
    async with aclosing(client.aio.watch_run(run_id)) as updates:
        async for update in updates:
            return update
    return None
"""


def test_a_watch_can_be_closed_early_with_closing_or_aclosing(tmp_path: Path) -> None:
    app = tmp_path / "watching.py"
    app.write_text(WATCHING)
    done = _mypy(app)
    assert done.returncode == 0, done.stdout + done.stderr
