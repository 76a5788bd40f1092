"""The README tells the truth: its commands are the ones the e2e tests run, and
its Python client example runs against a real server."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from .test_quickstart import QUICKSTART
from .test_seed import SEED

pytestmark = pytest.mark.e2e

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)


@pytest.mark.parametrize("command", [*QUICKSTART, *SEED])
def test_readme_quotes_the_tested_commands(command: str) -> None:
    assert command in README


def test_first_screen_has_the_two_commands() -> None:
    first_screen = "\n".join(README.splitlines()[:24])
    assert "make run" in first_screen and "make test" in first_screen


def test_client_example_runs(server, run, tmp_path: Path) -> None:
    example = python_blocks()[0].replace("localhost:50051", server.address)
    script = tmp_path / "example.py"
    script.write_text(example)
    result = run([sys.executable, script])
    assert result.returncode == 0, result.stderr
    status, run_status = result.stdout.splitlines()[:2]
    assert status.startswith("DELIVERED ['run_")
    assert run_status == "QUEUED"


def test_worker_example_defines_a_valid_job(tmp_path: Path, run) -> None:
    example = python_blocks()[1].replace("client.listen()", "print(sorted(client.jobs))")
    script = tmp_path / "worker_example.py"
    script.write_text(example)
    result = run([sys.executable, script])
    assert result.returncode == 0, result.stderr
    assert "welcome" in result.stdout
