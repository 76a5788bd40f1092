"""Request/response helpers: write requests as the JSON a grpcurl user would type."""

from __future__ import annotations

import inspect
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
    """Stands in for a method of `owner`: its first call (or its `call`-th) raises,
    as the store does when the disk fails; the others are the real method's.
    `failed` keeps the failing call's positional arguments. An async method stays async;
    a plain one (a step inside a store transaction) raises at once."""

    def __init__(
        self,
        owner: object,
        name: str,
        monkeypatch: pytest.MonkeyPatch,
        message: str = "disk I/O error",
        *,
        call: int = 1,
    ) -> None:
        self.real = getattr(owner, name)
        self.message = message
        self.call = call
        self.calls = 0
        self.failed: tuple[Any, ...] | None = None
        monkeypatch.setattr(owner, name, self)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        failing = self.calls == self.call
        if failing:
            self.failed = args
        if inspect.iscoroutinefunction(self.real):
            return self._async(failing, args, kwargs)
        if failing:
            raise sqlite3.OperationalError(self.message)
        return self.real(*args, **kwargs)

    async def _async(self, failing: bool, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if failing:
            raise sqlite3.OperationalError(self.message)
        return await self.real(*args, **kwargs)
