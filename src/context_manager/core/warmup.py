"""One-time warm-ups of the process, which the performance monitor's rules do not judge.

Loading the embedding model is the one warm-up the library has: it happens once, on the first embed (or a
server's preload), on a worker thread, and for a few seconds its imports hold the interpreter, so the
event loop falls behind, and the process grows by a few hundred megabytes it keeps. Judged like any other
moment, that load read as a blocked loop (the monitor's health score at 0.5 for the next
``recent_window_s`` seconds) and as a memory leak ("Memory grew by 490 MB ... run cleanup_old_memories()").
Work of that kind runs inside :func:`warming_up`; the monitor leaves the samples taken during it out of its
lag and CPU rules, and measures memory growth from the first sample after it (see
:meth:`PerformanceMonitor._evidence <context_manager.core.performance_monitor.PerformanceMonitor>`).
The figures themselves (``samples()``, ``max_event_loop_lag_ms``, ``peak_memory_mb``) stay as measured.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["WarmUp", "warm_ups", "warming_up"]

_MAX_KEPT = 64
"""Warm-ups remembered (the oldest is forgotten first): a process has one or two."""


@dataclass(frozen=True, slots=True)
class WarmUp:
    """A warm-up's span in ``time.monotonic()`` seconds (the performance monitor's default clock).

    Monotonic, not the wall clock: a step of the wall clock during a warm-up (NTP, a resumed VM) made its
    span end before it started, or last an hour, and the monitor judged the loop it held as blocked.
    """

    what: str
    """What warmed up (``"embedding model"``)."""
    started: float
    """When it started (``time.monotonic()``)."""
    ended: float | None
    """When it ended (``time.monotonic()``); ``None`` while it runs."""
    started_at: float = 0.0
    """When it started as a date (``time.time()``), to show or log."""

    @property
    def duration(self) -> float | None:
        """Seconds it took (monotonic); ``None`` while it runs."""
        return None if self.ended is None else self.ended - self.started

    def overlaps(self, start: float, end: float) -> bool:
        """Whether it ran at some moment of ``[start, end]``, in ``time.monotonic()`` seconds.

        One still running: up to now.
        """
        return self.started <= end and (self.ended is None or self.ended >= start)


_lock = threading.Lock()
_spans: deque[WarmUp] = deque(maxlen=_MAX_KEPT)
_running: dict[int, int] = {}
"""The thread running each warm-up that runs, by ``id()`` of its span."""


def _after_fork_in_child() -> None:
    """In a forked child: a new lock, and the warm-ups of the parent's other threads over.

    Those threads do not exist here: a warm-up one of them ran at the fork never ended in the child, whose
    monitor judged no lag, CPU or memory growth for ever (and whose first warm-up waited for the lock).
    """
    global _lock
    _lock = threading.Lock()
    now, forking = time.monotonic(), threading.get_ident()
    for index, span in enumerate(_spans):
        if span.ended is None and _running.get(id(span)) != forking:
            _spans[index] = WarmUp(span.what, span.started, now, span.started_at)
    for key in [key for key, thread in _running.items() if thread != forking]:
        del _running[key]


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


@contextmanager
def warming_up(what: str) -> Iterator[None]:
    """Mark the block as a one-time warm-up of the process (thread-safe; the block may raise)."""
    span = WarmUp(what, time.monotonic(), None, time.time())
    with _lock:
        _spans.append(span)
        _running[id(span)] = threading.get_ident()
    try:
        yield
    finally:
        with _lock:
            _running.pop(id(span), None)
            # replaced by its finished form (a forgotten one, 64 warm-ups later, stays forgotten)
            for index, kept in enumerate(_spans):
                if kept is span:
                    _spans[index] = WarmUp(what, span.started, time.monotonic(), span.started_at)
                    break


def warm_ups() -> list[WarmUp]:
    """The warm-ups of this process so far (the latest 64), oldest first."""
    with _lock:
        return list(_spans)
