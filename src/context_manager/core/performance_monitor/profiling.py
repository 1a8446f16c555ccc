"""Profiling of timed blocks with ``cProfile`` (``PerformanceMonitor(enable_profiling=True)``).

One ``cProfile.Profile`` accumulates the code run inside every profiled block. Blocks nest on the thread
that started profiling; a block on another thread while one is open is skipped (and counted), because
``cProfile`` profiles one thread. ``cProfile`` and ``pstats`` are imported on first use.
"""

from __future__ import annotations

import numbers
import threading
from typing import TYPE_CHECKING, Any

from context_manager.core.errors import InvalidArgumentError

if TYPE_CHECKING:
    import cProfile

__all__ = ["HOTTEST_FUNCTIONS_SHOWN", "BlockProfiler", "is_waiting"]

HOTTEST_FUNCTIONS_SHOWN = 10
"""How many functions :meth:`BlockProfiler.hottest_functions` returns by default."""

# Built-in functions whose own time is waiting, not work: the event loop's selector polling while an awaited
# block waits for I/O or a timer, sleeps, lock and socket waits. Reported (marked ``waiting``), never advised.
_WAITING_BUILTINS = (
    "of 'select.",  # <method 'poll' of 'select.epoll' objects>, kqueue control, devpoll ...
    "select.select",
    "time.sleep",
    "of '_thread.",  # lock.acquire
    "of '_socket.socket' objects>",  # blocking recv, accept, connect
    "of '_overlapped.",  # the Windows proactor's waits
    "posix.waitpid",
)


def is_waiting(function: str) -> bool:
    """Whether a profiled built-in (``cProfile``'s name for it) is time spent waiting rather than working."""
    return function.startswith("<") and any(marker in function for marker in _WAITING_BUILTINS)


class BlockProfiler:
    """Profiles the code between :meth:`enter` and :meth:`exit` calls; reports the hottest functions."""

    __slots__ = ("_depth", "_lock", "_profiler", "_thread", "skipped")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._profiler: cProfile.Profile | None = None
        self._depth = 0
        self._thread: int | None = None
        self.skipped = 0
        """Blocks that could not be profiled (another thread's block or another profiler was active)."""

    def enter(self) -> bool:
        """Start (or nest into) profiling on this thread; False if it cannot profile here."""
        thread = threading.get_ident()
        with self._lock:
            if self._depth and self._thread != thread:
                self.skipped += 1
                return False
            if self._depth == 0:
                import cProfile

                if self._profiler is None:
                    self._profiler = cProfile.Profile()
                try:
                    self._profiler.enable()
                except ValueError:  # another profiler is active on this thread
                    self.skipped += 1
                    return False
                self._thread = thread
            self._depth += 1
            return True

    def exit(self) -> None:
        """Leave a block entered with a True :meth:`enter`; the outermost one stops profiling."""
        with self._lock:
            self._depth -= 1
            if self._depth == 0 and self._profiler is not None:
                self._profiler.disable()
                self._thread = None

    def reset(self) -> None:
        """Forget the profile collected so far (kept while a block is open)."""
        with self._lock:
            if self._depth == 0:
                self._profiler = None

    def hottest_functions(self, limit: int = HOTTEST_FUNCTIONS_SHOWN) -> list[dict[str, Any]]:
        """Return the functions that took the most own time inside profiled blocks.

        Each entry has ``function`` (``file:line(name)``), ``calls``, ``own_time_ms``,
        ``cumulative_time_ms``, ``share`` (own time / all profiled own time) and ``waiting`` (a built-in
        that waits rather than works: the event loop's selector while an awaited block waits for I/O, a
        sleep, a lock; see :func:`is_waiting`). At most ``limit`` (an integer >= 0) entries; empty while
        a block is open or before anything was profiled.

        Raises:
            InvalidArgumentError: ``limit`` is not an integer >= 0.
        """
        value: object = limit  # numpy's integers too
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise InvalidArgumentError("limit", limit, "an integer >= 0")
        limit = int(value)
        with self._lock:
            profiler = self._profiler
            if profiler is None or self._depth:
                return []
            import pstats

            try:
                stats = pstats.Stats(profiler)
            except TypeError:  # nothing was profiled yet
                return []
        entries = stats.stats  # type: ignore[attr-defined]
        rows = [
            (filename, line, function, calls, own, cumulative)
            for (filename, line, function), (_, calls, own, cumulative, _) in entries.items()
            if not (filename == "~" and "disable" in function)
        ]
        total_own = sum(row[4] for row in rows) or 1.0
        rows.sort(key=lambda row: row[4], reverse=True)
        return [
            {
                "function": f"{filename}:{line}({function})" if filename != "~" else function,
                "calls": calls,
                "own_time_ms": own * 1000.0,
                "cumulative_time_ms": cumulative * 1000.0,
                "share": own / total_own,
                "waiting": filename == "~" and is_waiting(function),
            }
            for filename, line, function, calls, own, cumulative in rows[:limit]
        ]
