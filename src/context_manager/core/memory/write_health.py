"""How the memory manager's writes have been going: the health checker's ``storage_writes`` input.

A full disk, a directory made read-only or a failing device show first as writes that raise
:class:`~context_manager.core.errors.StorageError`; the storage directory probe may still pass (a
two-byte probe fits where a memory does not). :class:`WriteTracker` counts the outcomes of the
manager's writing calls and :class:`WriteHealth` is a snapshot of them.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from context_manager.core.errors import StorageError

__all__ = ["WriteHealth", "WriteTracker", "records_write_outcome"]

_Method = TypeVar("_Method", bound=Callable[..., Awaitable[Any]])


@dataclass(frozen=True, slots=True)
class WriteHealth:
    """A snapshot of the outcomes of memory writes since the manager opened."""

    writes: int
    """Writing calls that succeeded (add, update, delete, import, optimize, consolidate, cleanup ...)."""
    failures: int
    """Writing calls that raised ``StorageError`` (background tier moves included)."""
    consecutive_failures: int
    """Failures since the last write that succeeded (0 when the latest write succeeded)."""
    last_error: str | None
    """The latest failure: ``"<exception type>: <message>"`` (names the file and the cause)."""
    last_failure_at: float | None
    """When the latest failure happened (epoch seconds)."""
    last_success_at: float | None
    """When the latest successful write finished (epoch seconds)."""

    def to_dict(self) -> dict[str, Any]:
        """The snapshot as a JSON-friendly dict."""
        return {
            "writes": self.writes,
            "failures": self.failures,
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error,
            "last_failure_at": self.last_failure_at,
            "last_success_at": self.last_success_at,
        }


class WriteTracker:
    """Counts write outcomes (thread-safe: background moves may report from worker threads).

    Args:
        clock: Seconds since the epoch.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._writes = 0
        self._failures = 0
        self._consecutive = 0
        self._last_error: str | None = None
        self._last_failure_at: float | None = None
        self._last_success_at: float | None = None

    def succeeded(self) -> None:
        """Record a write that succeeded: the consecutive failures end."""
        now = self._clock()
        with self._lock:
            self._writes += 1
            self._consecutive = 0
            self._last_success_at = now

    def failed(self, error: BaseException) -> None:
        """Record a write that raised ``error``."""
        now = self._clock()
        text = " ".join(f"{type(error).__name__}: {error}".split())[:300]
        with self._lock:
            self._failures += 1
            self._consecutive += 1
            self._last_error = text
            self._last_failure_at = now

    def snapshot(self) -> WriteHealth:
        """The counts now."""
        with self._lock:
            return WriteHealth(
                writes=self._writes,
                failures=self._failures,
                consecutive_failures=self._consecutive,
                last_error=self._last_error,
                last_failure_at=self._last_failure_at,
                last_success_at=self._last_success_at,
            )


def records_write_outcome(method: _Method) -> _Method:
    """Decorate an async writing method of the manager: its outcome goes to ``self._write_tracker``.

    A ``StorageError`` counts as a failure (and is re-raised); a normal return as a success; other
    exceptions (bad arguments, lifecycle) count as neither.
    """

    @functools.wraps(method)
    async def recorded(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = await method(self, *args, **kwargs)
        except StorageError as error:
            self._write_tracker.failed(error)
            raise
        self._write_tracker.succeeded()
        return result

    return cast(_Method, recorded)
