"""The README tells the truth: its commands are the ones the e2e tests run, and
its Python client example runs against a real server."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pytest
from tripwire.client import cli

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


def cli_synopsis() -> dict[str, str]:
    """The CLI section's synopsis: each command's line, by command."""
    section = README.split("\n## CLI\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```\n(.*?)```", section, flags=re.DOTALL)
    assert block is not None
    lines = [line for line in block.group(1).splitlines() if line.strip()]
    assert all(line.startswith("tripwire ") for line in lines), lines
    return {line.split()[1]: line for line in lines}


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: p for name, p in sub.choices.items() if name != "serve"}


GLOBAL = {"-h", "--help", "--url", "--api-key", "--json"}


@pytest.mark.parametrize("name", sorted(commands()))
def test_the_cli_synopsis_gives_each_commands_real_arguments(name: str) -> None:
    """Every option of the command, shown optional (none is required), and no other;
    its positional arguments by their metavars, in order."""
    line = cli_synopsis()[name]
    parser = commands()[name]
    options = {
        s for a in parser._actions for s in a.option_strings if a.help != argparse.SUPPRESS
    } - GLOBAL
    assert set(re.findall(r"--[a-z-]+", line)) == options
    for option in options:
        assert f"[{option}" in line, (option, line)
    positionals = [a.metavar or a.dest.upper() for a in parser._actions if not a.option_strings]
    assert re.sub(r" \[--[^]]*\]", "", line).split()[2:] == positionals


def test_the_cli_synopsis_has_every_command() -> None:
    assert set(cli_synopsis()) == set(commands())


def test_installs_from_a_checkout_as_serve_says_when_the_server_is_missing() -> None:
    """tripwire is not on PyPI: no `pip install tripwire` that would fetch another
    project's package."""
    for command in re.findall(r"pip install ([^`]*)", README):
        if command.lstrip("'").startswith("tripwire"):
            assert " @ git+" in command, command  # from the repository, not an index
    assert "pip install ." in README
    command = cli.NOT_INSTALLED.split(": ", 1)[1].rsplit(", ", 1)[1]
    assert command == "pip install '.[server]'" and command in README
