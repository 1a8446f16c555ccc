"""Sliding-window rate limiting for tools: :class:`SlidingWindowRateLimiter`.

A call is admitted when fewer than ``limit`` calls were admitted for its key during the last ``window``
seconds. The check and the recording of a call are one synchronous step (no ``await`` in between) under a
lock, so the limit is exact however many calls arrive at once: of 100 simultaneous calls to a tool
limited to 10 per window, exactly 10 are admitted. Should the clock go back (a wall clock passed as
``clock``, set back), calls stamped after the new time count as made at it: a retry is never told to wait
longer than ``window``.

State is kept per key only while it counts: each key remembers its window, and once the number of keys
doubles since the last sweep (at least 1,024), keys none of whose calls is still inside its window are
forgotten. With a fresh ``caller_key`` per user or session the limiter therefore holds about the keys
active in the last window (at most twice that), not every key ever seen; each sweep costs O(keys) and
happens after as many new keys, so admission stays O(1) amortised.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable

__all__ = ["SlidingWindowRateLimiter"]

_MIN_SWEEP_KEYS = 1024


class SlidingWindowRateLimiter:
    """Counts admitted calls per key over a sliding time window.

    Args:
        clock: Returns the current time in seconds (monotonic); tests pass a controllable clock.

    Example:
        >>> limiter = SlidingWindowRateLimiter(clock=lambda: 100.0)
        >>> limiter.try_acquire("search", limit=1, window=60.0) is None
        True
        >>> limiter.try_acquire("search", limit=1, window=60.0)
        60.0
    """

    __slots__ = ("_calls", "_clock", "_lock", "_sweep_at", "_windows")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._calls: dict[Hashable, deque[float]] = {}
        self._windows: dict[Hashable, float] = {}  # the window each key was last checked against
        self._sweep_at = _MIN_SWEEP_KEYS  # sweep expired keys when this many are held
        self._lock = threading.Lock()

    def try_acquire(self, key: Hashable, *, limit: int, window: float) -> float | None:
        """Admit and record one call for ``key``, or refuse it.

        Returns:
            None when the call is admitted; otherwise the seconds until the oldest admitted call leaves the
            window (when a retry will be admitted), always > 0.
        """
        now = self._clock()
        with self._lock:
            calls = self._calls.get(key)
            if calls is None:
                if len(self._calls) >= self._sweep_at:
                    self._sweep(now)
                calls = self._calls[key] = deque()
            self._windows[key] = window
            if calls and calls[-1] > now:
                # the clock went back (a wall clock set back; ``time.monotonic`` never does): calls stamped
                # in its "future" would hold the window shut for as long as it jumped; count them as made
                # now, so they leave the window ``window`` seconds from now at the latest
                calls = self._calls[key] = deque(min(stamp, now) for stamp in calls)
            horizon = now - window
            while calls and calls[0] <= horizon:
                calls.popleft()
            if len(calls) < limit:
                calls.append(now)
                return None
            return max(calls[0] + window - now, 1e-6)

    def release(self, key: Hashable) -> None:
        """Forget the most recent admitted call of ``key`` (a call admitted but then not run)."""
        with self._lock:
            calls = self._calls.get(key)
            if calls:
                calls.pop()

    def in_window(self, key: Hashable, *, window: float) -> int:
        """Return how many calls of ``key`` were admitted during the last ``window`` seconds."""
        horizon = self._clock() - window
        with self._lock:
            return sum(1 for stamp in self._calls.get(key, ()) if stamp > horizon)

    def _sweep(self, now: float) -> None:
        """Forget keys whose calls all left their window (under the lock); plan the next sweep."""
        windows = self._windows
        for key in [k for k, calls in self._calls.items() if not calls or calls[-1] <= now - windows[k]]:
            del self._calls[key]
            del windows[key]
        self._sweep_at = max(_MIN_SWEEP_KEYS, 2 * len(self._calls))

    def prune(self, window_of: Callable[[Hashable], float | None] | None = None) -> int:
        """Forget keys none of whose calls is still inside its window; return how many were forgotten.

        The limiter also does this by itself as keys accumulate (see the module docstring).

        Args:
            window_of: The window of a key in seconds, or None for a key that no longer exists; by
                default the window each key was last checked against.
        """
        now = self._clock()
        with self._lock:
            doomed = []
            for key, calls in self._calls.items():
                window = self._windows[key] if window_of is None else window_of(key)
                if window is None or not calls or calls[-1] <= now - window:
                    doomed.append(key)
            for key in doomed:
                del self._calls[key]
                del self._windows[key]
            self._sweep_at = max(_MIN_SWEEP_KEYS, 2 * len(self._calls))
            return len(doomed)

    def __len__(self) -> int:
        return len(self._calls)

    def reset(self, match: Callable[[Hashable], bool] | None = None) -> None:
        """Forget the calls of every key (or of the keys ``match`` accepts)."""
        with self._lock:
            if match is None:
                self._calls.clear()
                self._windows.clear()
            else:
                for key in [key for key in self._calls if match(key)]:
                    del self._calls[key]
                    del self._windows[key]
