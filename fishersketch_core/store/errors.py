"""Exceptions raised by the signature store. Every message names the problem and the fix."""
from __future__ import annotations

from ..signature import IncompatibleSignatures

__all__ = ["StoreError", "StoreLockedError", "SchemaVersionError", "InvalidSignatureError",
           "ConflictError", "TaskNotFoundError", "AmbiguousTaskError", "IncompatibleSignatures"]


class StoreError(Exception):
    """Base class of every error raised by :mod:`fishersketch_core.store`."""


class StoreLockedError(StoreError):
    """The DuckDB file is held by another process (or by a connection of another kind here)."""


class SchemaVersionError(StoreError):
    """The file's schema version cannot be used by this version of fishersketch_core."""


class InvalidSignatureError(StoreError, ValueError):
    """A signature was refused at ingest (zero norm, NaN, wrong length, bad metadata)."""


class ConflictError(StoreError):
    """A task with the same key but different vectors is already stored."""


class TaskNotFoundError(StoreError, KeyError):
    """No stored task matches the name (and filters) given."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class AmbiguousTaskError(StoreError, LookupError):
    """A task name matches several stored signatures (different model, method, m or seed)."""
