"""`python -m tripwire.server` / `tripwire serve`: run the server until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .config import settings_from

if TYPE_CHECKING:
    from .app import Server

# The server's dependencies are an extra: a light install has the client only.
INSTALL_HINT = "from a checkout of this repository, pip install '.[server]'"
# The exit status after Ctrl-C, as a shell gives a process killed by SIGINT.
INTERRUPTED = 130


async def _serve(server: Server) -> None:
    address = await server.start()
    # What is loaded by now (modules, descriptors, the job index: ~40k objects)
    # lives as long as the process. Frozen, it is left out of full collections,
    # which otherwise stop the loop for tens of milliseconds each time; the
    # garbage of starting up is collected first, not frozen with it.
    gc.collect()
    gc.freeze()
    # One line, before serving, so scripts and tests can read the bound port.
    print(f"tripwire listening on {address}", flush=True)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.request_stop)
    try:
        await server.wait_closed()
    finally:
        # While the loop runs: uvloop's close leaves its handlers in place, and a
        # signal after it would be swallowed.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        from .app import Server
    except ImportError as exc:
        print(
            f"tripwire serve: the server is not installed ({exc}): {INSTALL_HINT}",
            file=sys.stderr,
        )
        return 2
    try:
        settings = settings_from(argv)
    except ValueError as exc:
        print(f"tripwire serve: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # The store's commit thread needs the GIL back the moment its fsync returns;
    # with the default 5 ms switch interval it would queue behind a busy loop.
    sys.setswitchinterval(0.0005)
    try:
        if settings.event_loop == "uvloop":
            try:
                import uvloop  # only then: an install without it can serve on asyncio
            except ImportError:
                print(
                    "tripwire serve: the uvloop event loop needs the uvloop package "
                    f"({INSTALL_HINT}); or run with --event-loop asyncio",
                    file=sys.stderr,
                )
                return 2
            uvloop.run(_serve(Server(settings)))
        else:
            asyncio.run(_serve(Server(settings)))
    except OSError as exc:
        print(f"tripwire serve: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C while starting, before SIGINT stops in stages
        print("tripwire serve: interrupted while starting", file=sys.stderr)
        return INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
