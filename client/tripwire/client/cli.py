"""The ``tripwire`` command: send and inspect events, jobs and runs; ``serve`` the server.

``tripwire [--url URL] [--api-key KEY] [--json] COMMAND ...``; the global options may
also follow the command (``worker`` refuses them: its Client has its own). Exit
status: 0 done, 1 the server refused (``error: CODE: details`` on stderr), 2 bad
usage (``error: details`` for what argparse cannot check, e.g. a ``worker`` target
that does not load, or an argument the client refuses before any call), 130 stopped
by Ctrl-C (a call to a server that does not answer, say: no traceback).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from tripwire.client import _render as render
from tripwire.client import convert
from tripwire.client._channel import MAX_TIMEOUT
from tripwire.client.client import Client
from tripwire.client.errors import DeadlineExceeded, InvalidArgument, TripwireError
from tripwire.client.models import Event, Job, Run, Task, jsonable
from tripwire.v1 import event_pb2, run_pb2

__all__ = ["build_parser", "main"]

DEFAULT_URL = "localhost:50051"
# Not on PyPI: installed from a checkout of the repository.
NOT_INSTALLED = (
    "the server is not installed: from a checkout of this repository, pip install '.[server]'"
)

#: A command: the client and the parsed arguments in, (JSON data, text) out.
Handler = Callable[[Client, argparse.Namespace], tuple[Any, str]]
#: A command that prints as it goes, and gives its exit status.
Streamer = Callable[[Client, argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    serve_args = _serve_args(args_list)
    if serve_args is not None:
        before = args_list[: len(args_list) - len(serve_args) - 1]
        if refused := _client_options_before_serve(before):
            print(refused, file=sys.stderr)
            return 2
        return _serve(serve_args)
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # --help, or a usage error already printed by argparse
        return exc.code if isinstance(exc.code, int) else 2
    handler: Handler | Streamer | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    if handler is _worker:
        return _worker_command(args)
    if not args.url.strip():
        print("error: --url: is empty (TRIPWIRE_URL too?)", file=sys.stderr)
        return 2
    try:
        client = Client("tripwire-cli", args.url, api_key=args.api_key or None)
    except ValueError as exc:  # a URL naming no server, an API key no header can carry
        field, _, problem = str(exc).partition(": ")  # url: ..., api_key: ...
        print(f"error: --{field.replace('_', '-')}: {problem}", file=sys.stderr)
        return 2
    try:
        with client:
            result = handler(client, args)
            if isinstance(result, int):  # printed as it went: its exit status
                return result
            data, text = result
    except (UsageError, TripwireError) as exc:
        return _error(exc)
    except KeyboardInterrupt:
        return INTERRUPTED
    return _print(render.dumps(data) if args.json else text)


#: The exit status of a command stopped by Ctrl-C, as a shell gives one killed by SIGINT.
INTERRUPTED = 130  # 128 + SIGINT


def _error(exc: UsageError | TripwireError) -> int:
    """Say why a command failed, on stderr; its exit status."""
    if isinstance(exc, UsageError):
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if isinstance(exc, InvalidArgument) and not isinstance(exc.__cause__, grpc.RpcError):
        # Refused by the client while building the request: no call was made.
        print(f"error: {exc.details}", file=sys.stderr)
        return 2
    code = f"{exc.code_name}: " if exc.code is not None else ""
    print(f"error: {code}{exc.details}", file=sys.stderr)
    return 1


def _print(output: str) -> int:
    """Print the output; a reader gone early (``| head``) ends the command quietly,
    with the status of a program stopped by SIGPIPE."""
    try:
        print(output, flush=True)
    except BrokenPipeError:
        # Python would complain again flushing stdout at exit: point it at nothing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE
    return 0


# -- serve -----------------------------------------------------------------------------


def _serve_args(argv: list[str]) -> list[str] | None:
    """Everything after ``serve`` when that is the command (global options may precede)."""
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == "serve":
            return argv[index + 1 :]
        if arg in ("--url", "--api-key"):
            index += 2
        elif arg == "--json" or arg.startswith(("--url=", "--api-key=")):
            index += 1
        else:
            return None
    return None


# The client's options mean nothing to the server: dropping --api-key would start a
# server with no auth at all, dropping --url one listening elsewhere than asked.
_SERVER_SAYS = {
    "--api-key": "the server's keys go after it: tripwire serve --api-key KEY=ENV",
    "--url": "the server listens where --address says: tripwire serve --address HOST:PORT",
    "--json": "the server has no such option",
}


def _client_options_before_serve(before: list[str]) -> str | None:
    for arg in before:
        option = arg.partition("=")[0]
        if option in _SERVER_SAYS:
            return f"error: {option} before 'serve' is the client's option; {_SERVER_SAYS[option]}"
    return None


def _serve(argv: list[str]) -> int:
    # The only place the client touches the server, and only by name: the client must
    # stay installable without it.
    try:
        server_main = importlib.import_module("tripwire.server.__main__")
    except ImportError:
        print(NOT_INSTALLED, file=sys.stderr)
        return 2
    status = server_main.main(argv)
    return status if isinstance(status, int) else 0


# -- arguments -------------------------------------------------------------------------


def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg} at char {exc.pos})") from None


# The server's largest page: a --limit above it would be cut to it without a word.
MAX_LIMIT = 1000


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(
            f"expected a whole number >= 1 and <= {MAX_LIMIT}, got {text!r}"
        )
    return value


def _seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not -(2**63) <= value < 2**63:
        raise argparse.ArgumentTypeError(f"expected whole seconds, got {text!r}")
    return value


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= MAX_TIMEOUT:  # the client takes no longer one (nor NaN)
        raise argparse.ArgumentTypeError(
            f"expected seconds > 0 and <= {MAX_TIMEOUT} (ten years), got {text!r}"
        )
    return value


def _version(text: str) -> str:
    # An empty one (an unset shell variable) would be no version: every version.
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "expected a version, got '' (leave it out for every version)"
        )
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tripwire", description="tripwire: event-driven jobs.")
    _global_options(parser, suppress=False)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(
        name: str, handler: Handler | Streamer, help: str, *, hidden_globals: bool = False
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        _global_options(sub, suppress=True, hidden=hidden_globals)
        sub.set_defaults(handler=handler)
        return sub

    commands.add_parser("serve", help="run the server (tripwire serve --help)", add_help=False)

    sub = command("send", _send, "send an event; print it and the runs it created")
    sub.add_argument("name", help="event name")
    _event_options(sub)
    sub.add_argument("--id", help="event id (default: a new ULID)")
    sub.add_argument("--deliver-after", type=_seconds, metavar="SECONDS", help="delay")

    sub = command("events", _events, "list events, newest first")
    sub.add_argument("--name", help="only events with this name")
    _status_option(sub, event_pb2.EventStatus, "EVENT_STATUS_", "events")
    sub.add_argument(
        "--limit", type=_positive, default=20, help=f"at most this many (20; up to {MAX_LIMIT})"
    )
    _page_option(sub, "events")

    command("event", _event, "show an event and its runs").add_argument("id")
    command("cancel-event", _cancel_event, "cancel a pending event").add_argument("id")
    command("jobs", _jobs, "list jobs (latest versions)")

    sub = command("job", _job, "show a job and its versions")
    sub.add_argument("id")
    sub.add_argument("--version", help="this version instead of the latest")

    sub = command("runs", _runs, "list runs, newest first")
    sub.add_argument("--job", help="only runs of this job")
    sub.add_argument("--event", help="only runs of this event")
    _status_option(sub, run_pb2.RunStatus, "RUN_STATUS_", "runs")
    sub.add_argument(
        "--limit", type=_positive, default=20, help=f"at most this many (20; up to {MAX_LIMIT})"
    )
    _page_option(sub, "runs")

    command("run", _run, "show a run with its tasks and logs").add_argument("id")
    sub = command(
        "watch",
        _watch,
        "show a run, its tasks and logs, then each change as it happens, until the run ends",
    )
    sub.add_argument("id")
    sub.add_argument("--timeout", type=_timeout, metavar="SECONDS", help="give up after this long")
    command("cancel-run", _cancel_run, "cancel an unfinished run").add_argument("id")
    command("cancel-runs", _cancel_runs, "cancel every unfinished run of an event").add_argument(
        "id", help="event id"
    )
    for name, enabled in (("enable", True), ("disable", False)):
        what = "new runs again" if enabled else "no new runs; its unfinished runs end ABORTED"
        sub = command(name, _set_enabled(enabled), f"{name} a job's versions ({what})")
        sub.add_argument("id", help="job id")
        sub.add_argument(
            "--version", type=_version, help="only this version (default: every version)"
        )

    sub = command("invoke", _invoke, "start a run of a job now")
    sub.add_argument("job_id", metavar="JOB_ID")
    sub.add_argument("--payload", type=_json_arg, metavar="JSON", help="payload (JSON)")
    sub.add_argument("--context", type=_json_arg, metavar="JSON", help="context (JSON)")
    sub.add_argument("--idempotency-key", metavar="KEY", help="same key, same run")

    sub = command("match", _match, "which jobs an event would run, and why not the others")
    sub.add_argument("name", help="event name")
    _event_options(sub)

    sub = command(
        "worker",
        _worker,
        "serve the jobs of a Client until SIGTERM or SIGINT, showing the SDK's INFO lines "
        "(on stderr unless the module set logging up); it "
        "connects where that Client's url and api_key say (--url, --api-key and --json "
        "are refused)",
        hidden_globals=True,
    )
    sub.add_argument(
        "target",
        metavar="MODULE[:ATTR]",
        help="the module to import and its Client (ATTR defaults to client), "
        "e.g. myapp.jobs:client",
    )
    return parser


class _Given(argparse.Action):
    """Stores an option's value (True for a flag, given ``nargs=0``) and notes that it
    was given, as ``<dest>_given_as``: a command that takes none can refuse it."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, True if self.nargs == 0 else values)
        setattr(namespace, f"{self.dest}_given_as", option_string)


_GLOBAL_DESTS = ("url", "api_key", "json")


def _global_options(
    parser: argparse.ArgumentParser, *, suppress: bool, hidden: bool = False
) -> None:
    # Accepted before or after the command: a sub-parser knows them too, with SUPPRESS
    # defaults so that it only overrides what was actually given after the command.
    # ``hidden``: parsed (to be refused by name), but not listed in the command's help.
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    def help(text: str) -> str:
        return argparse.SUPPRESS if hidden else text

    parser.add_argument(
        "--url",
        action=_Given,
        default=default(os.environ.get("TRIPWIRE_URL") or DEFAULT_URL),
        help=help(f"server address (env TRIPWIRE_URL, default {DEFAULT_URL})"),
    )
    parser.add_argument(
        "--api-key",
        action=_Given,
        default=default(os.environ.get("TRIPWIRE_API_KEY")),
        help=help("env TRIPWIRE_API_KEY"),
    )
    parser.add_argument(
        "--json",
        action=_Given,
        nargs=0,
        default=default(False),
        help=help("print JSON, not tables"),
    )


def _page_option(sub: argparse.ArgumentParser, what: str) -> None:
    sub.add_argument(
        "--page-token",
        metavar="TOKEN",
        help=f"the next page of {what}, as the last listing said (`more: ...`)",
    )


def _status_option(sub: argparse.ArgumentParser, enum: Any, prefix: str, what: str) -> None:
    # Checked here, so that a bad one is a usage error (exit 2) and --help lists them;
    # in any case, with or without the prefix, as the client takes them.
    names = convert.enum_names(enum, prefix)

    def status(text: str) -> str:
        try:
            convert.enum_value(enum, text, prefix)
        except ValueError as exc:  # says what was given, as typed
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text.strip().upper().removeprefix(prefix)

    sub.add_argument(
        "--status",
        type=status,
        choices=names,
        metavar="STATUS",
        help=f"only {what} in this status: {', '.join(names)} (any case)",
    )


def _event_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--payload", type=_json_arg, metavar="JSON", help="payload (JSON)")
    sub.add_argument("--context", type=_json_arg, metavar="JSON", help="context (JSON)")
    sub.add_argument("--source", help="event source (default: trigger.dev)")


def _event_dict(args: argparse.Namespace) -> dict[str, Any]:
    event: dict[str, Any] = {"name": args.name}
    for key in ("payload", "context", "source", "id"):
        value = getattr(args, key, None)
        if value is not None:
            event[key] = value
    return event


# -- commands --------------------------------------------------------------------------


def _runs_note(runs: Sequence[Any], none: str) -> str:
    return f"runs:\n{render.runs_table(runs)}" if runs else none


def _send(client: Client, args: argparse.Namespace) -> tuple[Any, str]:
    event = client.send_event(_event_dict(args), deliver_after=args.deliver_after)
    if event.delivered_at is None and event.status == "PENDING":
        none = f"runs: none yet (delivery at {render.iso(event.deliver_at)})"
    elif event.deduplicated:
        # Either this call delivered a pending event (rescheduled to now) and no job
        # matched, or an earlier send delivered it: the reply cannot tell them apart.
        none = (
            "runs: none created by this call (the id was already known: "
            "`tripwire event ID` has its runs, `tripwire match` says why a job did not match)"
        )
    else:
        none = "runs: none (no job matched; try `tripwire match`)"
    return event, f"{render.event_block(event)}\n\n{_runs_note(event.runs, none)}"


def _more(args: argparse.Namespace, page: Any, text: str) -> str:
    """`text`, and how to list the next page if there is one (on stderr with --json,
    whose output stays the page's list)."""
    if not page.next_page_token:
        return text
    more = f"more: add --page-token {page.next_page_token}"
    if args.json:
        print(more, file=sys.stderr)
        return text
    return f"{text}\n\n{more}"


def _events(client: Client, args: argparse.Namespace) -> tuple[Any, str]:
    page = client.list_events(
        name=args.name, status=args.status, page_size=args.limit, page_token=args.page_token
    )
    # ListEvents leaves out the runs ("tripwire event ID" has them): no empty list
    # that reads as "no runs".
    listed = [{k: v for k, v in jsonable(e).items() if k != "runs"} for e in page]
    return listed, _more(args, page, render.events_table(page.items) if page.items else "no events")


def _event(client: Client, args: argparse.Namespace) -> tuple[Any, str]:
    detail = client.get_event(args.id)
    text = f"{render.event_block(detail.event)}\n\n{_runs_note(detail.runs, 'runs: none')}"
    return detail, text


def _cancel_event(client: Client, args: argparse.Namespace) -> tuple[Any, str]:
    event: Event = client.cancel_event(args.id)
    return event, render.event_block(event)


def _jobs(client: Client, args: argparse.Namespace) -> tuple[Any, str]:
    jobs: list[Job] = []
    token: str | None = None
    while True:
        page = client.list_jobs(page_size=1000, page_token=token)
        jobs += page.items
        token = page.next_page_token
        if not token:
            break
    return jobs, render.jobs_table(jobs) if jobs else "no jobs"


def _job(client: Client, args: argparse.Namespace) -> tuple[Any, str]:
    job = client.get_job(args.id, version=args.version)
    text = render.job_block(job)
    if job.versions:
        rows = [(v.version, v.enabled, v.latest, v.created_at) for v in job.versions]
        versions = render.table(["VERSION", "ENABLED", "LATEST", "CREATED AT"], rows)
        text += f"\n\nversions:\n{versions}"
    return job, text


def _runs(client: Client, args: argparse.Namespace) -> tuple[Any, str]:
    page = client.list_runs(
        job_id=args.job,
        event_id=args.event,
        status=args.status,
        page_size=args.limit,
        page_token=args.page_token,
    )
    return list(page), _more(args, page, render.runs_table(page.items) if page.items else "no runs")


def _run(client: Client, args: argparse.Namespace) -> tuple[Any, str]:
    detail = client.get_run(args.id)
    parts = [render.run_block(detail.run)]
    parts.append(f"tasks:\n{render.tasks_table(detail.tasks)}" if detail.tasks else "tasks: none")
    parts.append(f"logs:\n{render.logs_table(detail.logs)}" if detail.logs else "logs: none")
    return detail, "\n\n".join(parts)


def _cancel_run(client: Client, args: argparse.Namespace) -> tuple[Any, str]:
    run = client.cancel_run(args.id)
    return run, render.run_block(run)


def _cancel_runs(client: Client, args: argparse.Namespace) -> tuple[Any, str]:
    ids = client.cancel_runs_for_event(args.id)
    if not ids:
        return ids, "no unfinished runs: none cancelled"
    return ids, f"cancelled {len(ids)} run{'' if len(ids) == 1 else 's'}:\n" + "\n".join(ids)


def _watch(client: Client, args: argparse.Namespace) -> int:
    """``tripwire watch``: each update printed as it comes (a JSON object a line with
    --json: {"run": ...}, {"task": ...} or {"log": ...}), until the run ends."""
    try:
        for update in client.watch_run(args.id, timeout=args.timeout):
            if args.json:
                kind = {Run: "run", Task: "task"}.get(type(update), "log")
                line = json.dumps({kind: jsonable(update)}, ensure_ascii=False)
            else:
                line = render.update_line(update)
            if (status := _print(line)) != 0:
                return status
    except DeadlineExceeded:
        print(f"error: the run did not end within --timeout {args.timeout:g} s", file=sys.stderr)
        return 1
    return 0


def _set_enabled(enabled: bool) -> Handler:
    def set_enabled(client: Client, args: argparse.Namespace) -> tuple[Any, str]:
        jobs = client.set_job_enabled(args.id, enabled, version=args.version)
        rows = [(job.id, job.version, job.enabled, job.latest) for job in jobs]
        return jobs, render.table(["ID", "VERSION", "ENABLED", "LATEST"], rows)

    return set_enabled


def _invoke(client: Client, args: argparse.Namespace) -> tuple[Any, str]:
    run = client.invoke_job(
        args.job_id, args.payload, context=args.context, idempotency_key=args.idempotency_key
    )
    block = render.run_block(run)
    if run.deduplicated:
        block += "\n(deduplicated: this idempotency key's earlier call started this run)"
    return run, block


def _match(client: Client, args: argparse.Namespace) -> tuple[Any, str]:
    matches = client.match_event(_event_dict(args))
    return matches, render.matches_table(matches) if matches else "no event-triggered jobs"


class UsageError(Exception):
    """A command argparse could not check is wrong (exit status 2)."""


#: How ``tripwire worker`` logs, when the application has not set logging up itself.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_DATE_FORMAT = "%H:%M:%S"


class _SdkLines(logging.StreamHandler):  # type: ignore[type-arg]
    """The SDK's lines on stderr while the root logger has no handler; once the
    module sets one up (basicConfig at run time, a file, an error tracker), handed to
    the root's handlers instead, as propagation would (and not at all if the module
    made the `tripwire` logger propagate again: that hands them there already)."""

    def __init__(self, sdk: logging.Logger) -> None:
        super().__init__(sys.stderr)
        self.sdk = sdk

    def handle(self, record: logging.LogRecord) -> bool:
        root = logging.getLogger()
        if not root.handlers:
            return bool(super().handle(record))
        if not self.sdk.propagate:
            # Without this handler's lock held: a root handler may log in turn.
            root.callHandlers(record)
        return True


def _show_sdk_lines() -> Callable[[], None]:
    """The SDK logs through the `tripwire` loggers when it connects and when it
    drains: show those lines (INFO), through the root's handlers if the module set
    them up (which may have happened by itself: `logging.info()` before any setup
    makes one), else through a handler of the `tripwire` logger, which keeps them to
    itself and writes them on stderr until the root has handlers of its own (then it
    hands them there: never twice, and the module's own logging, a later basicConfig
    included, is as it would be without the command). A module that gave one of the
    `tripwire` loggers handlers, a level or propagate=False has said how it wants
    them: left as it is. Returns what undoes it (what the module has not changed
    since; the loggers it enabled stay enabled)."""
    sdk = logging.getLogger("tripwire")
    ours = [sdk] + [
        logger
        for name, logger in logging.root.manager.loggerDict.items()
        if name.startswith("tripwire.") and isinstance(logger, logging.Logger)
    ]
    if any(lg.handlers or lg.level != logging.NOTSET or not lg.propagate for lg in ours):
        return lambda: None
    # dictConfig disables every logger that exists and that it does not name; the
    # SDK's, made when this command imported it, are not what it meant.
    disabled = [logger for logger in ours if logger.disabled]
    for logger in disabled:
        logger.disabled = False
    sdk.setLevel(logging.INFO)
    handler: logging.Handler | None = None
    if not logging.getLogger().handlers:
        handler = _SdkLines(sdk)
        handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATE_FORMAT))
        sdk.addHandler(handler)
        sdk.propagate = False

    def undo() -> None:
        if sdk.level == logging.INFO:
            sdk.setLevel(logging.NOTSET)
        if handler is not None and handler in sdk.handlers:
            sdk.removeHandler(handler)
            if not sdk.propagate:
                sdk.propagate = True

    return undo


def _worker_command(args: argparse.Namespace) -> int:
    """``tripwire worker``: no client of the command's own, so none of its options."""
    given = [getattr(args, f"{dest}_given_as", None) for dest in _GLOBAL_DESTS]
    if any(given):
        print(
            f"error: {', '.join(g for g in given if g)}: `tripwire worker` takes its URL and "
            "API key from the Client in its module (Client(name, url=..., api_key=...)), "
            "and has no --url, --api-key or --json",
            file=sys.stderr,
        )
        return 2
    try:
        _, text = _worker(None, args)
    except (UsageError, TripwireError) as exc:
        return _error(exc)
    except KeyboardInterrupt:  # before the worker handles SIGINT (importing the module)
        return INTERRUPTED
    return _print(text)


def _worker(client: Client | None, args: argparse.Namespace) -> tuple[Any, str]:
    # The application's own Client serves its jobs: the command makes none.
    module, _, attr = args.target.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: modules beside the caller
    try:
        app = getattr(importlib.import_module(module), attr or "client")
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"cannot load {args.target}: {exc}") from exc
    if not callable(getattr(app, "listen", None)):
        raise UsageError(f"{args.target} is not a tripwire Client")
    undo = _show_sdk_lines()
    try:
        app.listen()
    except (ValueError, TypeError) as exc:  # the worker refused its settings (no jobs, ...)
        raise TripwireError(f"{args.target}: {exc}") from exc
    finally:
        undo()  # as it was (cli.main may run again in this process)
    return None, "worker stopped"
