""":class:`OperationTimer`: times a ``with`` or ``async with`` block and records it in a monitor."""

from __future__ import annotations

import time
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from context_manager.core.performance_monitor.monitor import PerformanceMonitor

__all__ = ["OperationTimer"]


class OperationTimer:
    """Times a block with ``with`` or ``async with``; records it in its monitor on exit.

    An exception inside the block records a failure (with the exception) and propagates; a cancellation
    (``asyncio.CancelledError``) or another ``BaseException`` such as ``KeyboardInterrupt`` records
    nothing (the block did not fail, it was stopped). After the block, :attr:`duration_s` holds the
    measured time. With profiling enabled on the monitor, the block's code is profiled.
    """

    __slots__ = ("_monitor", "_profiling", "_start", "duration_s", "name")

    def __init__(self, monitor: PerformanceMonitor, name: str) -> None:
        self._monitor = monitor
        self.name = name
        """The operation's name."""
        self.duration_s: float | None = None
        """The measured duration in seconds, once the block has finished."""
        self._start = 0.0
        self._profiling = False

    def __enter__(self) -> OperationTimer:
        if self._monitor.enable_profiling:
            self._profiling = self._monitor.profiler.enter()
        self._start = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.duration_s = time.perf_counter() - self._start
        if self._profiling:
            self._monitor.profiler.exit()
            self._profiling = False
        if exc is None or isinstance(exc, Exception):
            self._monitor.record_operation(self.name, self.duration_s, exc is None, error=exc)

    async def __aenter__(self) -> OperationTimer:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, traceback)
