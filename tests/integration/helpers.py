"""Request/response helpers: write requests as the JSON a grpcurl user would type."""

from __future__ import annotations

from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

M = TypeVar("M", bound=Message)


def req(cls: type[M], body: dict[str, Any]) -> M:
    return json_format.ParseDict(body, cls())


def js(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message)


def event_job(
    job_id: str, names: list[str], version: str = "1.0.0", **trigger: Any
) -> dict[str, Any]:
    return {
        "job": {"id": job_id, "version": version, "trigger": {"event": {"names": names, **trigger}}}
    }
