"""examples/node-worker says which step of worker_service.proto each message it
reads belongs to: that step is the one the contract describes the message in."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORKER = REPO / "examples" / "node-worker" / "worker.js"
PROTO = REPO / "proto" / "tripwire" / "v1" / "worker_service.proto"


def _steps() -> dict[int, str]:
    """The numbered steps of the service's comment, by number."""
    comment = PROTO.read_text().split("service WorkerService", 1)[0]
    text = "\n".join(line.removeprefix("//").strip() for line in comment.splitlines())
    parts = re.split(r"^(\d+)\. ", text, flags=re.M)
    return {int(number): body for number, body in zip(parts[1::2], parts[2::2], strict=True)}


def _snake(name: str) -> str:
    return re.sub(r"[A-Z]", lambda m: "_" + m.group().lower(), name)


def test_each_message_the_example_reads_is_in_the_step_it_names() -> None:
    steps = _steps()
    cases = re.findall(r"((?:case '\w+': )+)// step (\d+)", WORKER.read_text())
    assert len(cases) >= 5
    for kinds, number in cases:
        step = steps[int(number)]
        for kind in re.findall(r"case '(\w+)'", kinds):
            assert re.search(rf"`{_snake(kind)}`|\b{_snake(kind)}\b", step), (kind, number)
