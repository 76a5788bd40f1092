"""Every benchmark, one after the other, then a summary table.

    make bench        # or: .venv/bin/python bench/run_all.py

Each benchmark (bench/send_event.py, send_events.py, the Celery baseline
celery_send.py, dispatch_latency.py and runs_throughput.py) runs as its own
subprocess with a deadline; its output is shown
as it comes and its last `RESULT {...}` line feeds the table. Exits non-zero
when a benchmark failed (an error, a lost event, a timeout), never because a
figure missed its target: the targets are for reading.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from typing import Any

import harness

BENCHES = [
    ("send_event.py", 180.0),
    ("send_events.py", 180.0),
    ("celery_send.py", 120.0),
    ("dispatch_latency.py", 120.0),
    ("runs_throughput.py", 420.0),
]


def run(script: str, deadline: float) -> tuple[int, dict[str, Any] | None]:
    proc = subprocess.Popen(
        [sys.executable, str(harness.BENCH / script)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    results: list[dict[str, Any]] = []

    def relay() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(harness.RESULT_PREFIX):
                results.append(json.loads(line[len(harness.RESULT_PREFIX) :]))
            else:
                print(line, end="", flush=True)

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=deadline)
    except subprocess.TimeoutExpired:
        print(f"{script}: still running after {deadline:.0f}s, stopped", file=sys.stderr)
        code = -1
    finally:
        if proc.poll() is None:
            # SIGTERM first: the bench's handler kills its own servers.
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=harness.STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        reader.join(timeout=harness.STOP_DEADLINE)
        if proc.stdout is not None:
            proc.stdout.close()
    return code, results[-1] if results else None


def rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Summary lines of one bench: name, figure, target or note."""
    if result.get("skipped"):
        return [(result["bench"], "skipped", "")]
    if result["bench"] == "send_event":
        n = result["concurrency"]
        out = [
            (f"SendEvent echo, {n} in flight", f"{result['echo_calls_per_s']:,.0f} calls/s", ""),
            (
                f"SendEvent tripwire, {n} in flight",
                f"{result['tripwire_calls_per_s']:,.0f} calls/s",
                f"p99 {result['tripwire_p99_ms']:.0f} ms",
            ),
            ("  tripwire / echo", f"{result['ratio']:.2f}", f">= {result['target']}"),
        ]
    elif result["bench"] == "celery_send":
        out = [
            (
                f"Celery send_task, {result['threads']} threads",
                f"{result['calls_per_s']:,.0f} tasks/s",
                "one Python producer; Redis, no fsync",
            )
        ]
    elif result["bench"] == "dispatch_latency":
        out = [
            (
                f"dispatch p50, {result['rate']:,.0f} events/s",
                f"{result['p50_ms']:.2f} ms",
                f"<= {result['target_p50_ms']:g} ms",
            ),
            ("dispatch p99", f"{result['p99_ms']:.2f} ms", f"<= {result['target_p99_ms']:g} ms"),
        ]
    elif result["bench"] == "runs_throughput":
        out = [
            ("runs/s tripwire, 1 SDK worker", f"{result['tripwire_runs_per_s']:,.0f} runs/s", ""),
            (
                f"runs/s Celery, --pool={result['celery_pool']}",
                f"{result['celery_runs_per_s']:,.0f} runs/s",
                "Redis, no fsync",
            ),
            ("  tripwire / celery", f"{result['ratio']:.2f}", f">= {result['target']:g}"),
        ]
    else:
        out = [
            (
                f"SendEvents x{result['batch']}, sequential",
                f"{result['events_per_s']:,.0f} events/s",
                f">= {result['target']:,}",
            )
        ]
    out.append(("  acknowledged / stored", f"{result['acked']:,} / {result['stored']:,}", ""))
    return out


def main() -> int:
    harness.exit_on_sigterm()
    load = os.getloadavg()[0]
    print(f"load average before the run: {load:.2f} on {os.cpu_count()} CPUs", flush=True)
    table: list[tuple[str, str, str]] = []
    failed = []
    for script, deadline in BENCHES:
        print(f"\n== {script}", flush=True)
        code, result = run(script, deadline)
        if code != 0:
            failed.append(script)
        if result is not None:
            table += rows(result)

    print("\n== summary")
    width = max((len(r[0]) for r in table), default=0)
    for name, figure, target in table:
        print(f"{name:<{width}}  {figure:>18}  {target}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
