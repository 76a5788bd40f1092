"""The server's entry point: what it does around Server.start()."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
import uvloop
from tripwire.server.__main__ import _serve, main


class _StartedServer:
    """Starts at once and is closed as soon as anyone waits for it."""

    def __init__(self) -> None:
        self.stop_requested = False

    async def start(self) -> str:
        return "127.0.0.1:1234"

    def request_stop(self) -> None:
        self.stop_requested = True

    async def wait_closed(self) -> None:
        return None


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_serve_freezes_what_start_loaded_and_prints_the_address(
    unfrozen: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert gc.get_freeze_count() == 0
    asyncio.run(_serve(_StartedServer()))  # type: ignore[arg-type]
    assert gc.get_freeze_count() > 1000
    assert capsys.readouterr().out == "tripwire listening on 127.0.0.1:1234\n"


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_serve_gives_the_signals_back_before_its_loop_closes(
    unfrozen: None,
    capsys: pytest.CaptureFixture[str],
    run: Callable[[Coroutine[Any, Any, None]], None],
) -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    run(_serve(_StartedServer()))  # type: ignore[arg-type]
    # uvloop's close leaves its own handlers, which swallow the signals: not here.
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_without_uvloop_installed_the_server_says_how_to_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    monkeypatch.setattr(sys, "setswitchinterval", lambda interval: None)  # the process's
    monkeypatch.setattr(logging, "basicConfig", lambda **options: None)
    assert main(["--event-loop", "uvloop"]) == 2
    assert "--event-loop asyncio" in capsys.readouterr().err


def test_without_the_servers_dependencies_it_says_how_to_install_them(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A light install (the client only): the server's modules fail to import.
    monkeypatch.setitem(sys.modules, "tripwire.server.app", None)
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tripwire serve: the server is not installed (")
    assert "from a checkout of this repository, pip install '.[server]'" in err
