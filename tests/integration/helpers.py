"""Request/response helpers: write requests as the JSON a grpcurl user would type."""

from __future__ import annotations

import sqlite3
from typing import Any, TypeVar

import pytest
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


class FailsOnce:
    """Stands in for an async method of `owner`: its first call raises (as the store
    does when the disk fails), the others are the real method's. `failed` keeps the
    first call's arguments."""

    def __init__(
        self,
        owner: object,
        name: str,
        monkeypatch: pytest.MonkeyPatch,
        message: str = "disk I/O error",
    ) -> None:
        self.real = getattr(owner, name)
        self.message = message
        self.failed: tuple[Any, ...] | None = None
        monkeypatch.setattr(owner, name, self)

    async def __call__(self, *args: Any) -> Any:
        if self.failed is None:
            self.failed = args
            raise sqlite3.OperationalError(self.message)
        return await self.real(*args)
