"""Persistence. Only this package touches SQL; the rest of the server sees `Store`."""

from __future__ import annotations

from .base import Store
from .sqlite import SQLiteStore

__all__ = ["SQLiteStore", "Store"]
