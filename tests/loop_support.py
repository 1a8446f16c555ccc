"""Loop-blocking measurement shared by the tests that check an operation never holds the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any


async def longest_loop_step(
    operation: Callable[[], Awaitable[Any]], clock: Callable[[], float] = time.thread_time
) -> tuple[Any, float]:
    """Run ``operation`` beside a ticker task; return its result and the loop's longest step in CPU time.

    The CPU time of the loop's thread between two turns of the ticker is what the loop could not run other
    tasks for (other processes on a shared machine do not inflate it, unlike wall time). The objects the test
    process already holds are frozen out of the garbage collector: a full collection of that heap would be a
    stall of the test runner, not of ours.

    ``clock=time.process_time`` counts the CPU time of every thread of the process between two turns: also
    what a worker thread costs the loop when it holds the interpreter lock in one long call (the loop's own
    thread waits for the lock, using no CPU time of its own).
    """
    steps: list[float] = []
    last = clock()

    async def ticker() -> None:
        nonlocal last
        while True:
            await asyncio.sleep(0)
            now = clock()
            steps.append(now - last)
            last = now

    gc.collect()
    gc.freeze()
    ticking = asyncio.ensure_future(ticker())
    await asyncio.sleep(0)
    try:
        last = clock()
        result = await operation()
        steps.append(clock() - last)  # the step that ends the operation
    finally:
        gc.unfreeze()
        ticking.cancel()
    return result, max(steps)


class _Worker:
    """``function(*args)`` run in a thread of its own, whose CPU-time clock is read at each turn of another.

    The thread starts the call on the first ``turn()`` (so that reading comes before any of the call's work)
    and outlives it until ``close()`` (the clock of a thread that has ended must not be read). ``longest`` is
    the most CPU time the thread ran between two turns.
    """

    def __init__(self, function: Callable[..., Any], *args: Any) -> None:
        self.finished = threading.Event()
        self.longest = 0.0
        self.result: Any = None
        self._go = threading.Event()
        self._leave = threading.Event()
        self._outcome: list[tuple[bool, Any]] = []
        self._thread = threading.Thread(target=self._run, args=(function, args), daemon=True)
        self._thread.start()
        assert self._thread.ident is not None
        self._clock = time.pthread_getcpuclockid(self._thread.ident)
        self._last = 0.0

    def _run(self, function: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self._go.wait()
        try:
            self._outcome.append((True, function(*args)))
        except BaseException as error:  # handed to the test by close()
            self._outcome.append((False, error))
        finally:
            self.finished.set()
            self._leave.wait()

    def turn(self) -> None:
        """Record the CPU time the thread ran since the last turn (the first turn starts the call)."""
        now = time.clock_gettime(self._clock)
        if self._go.is_set():
            self.longest = max(self.longest, now - self._last)
        self._last = now
        self._go.set()

    def close(self) -> Any:
        """Let the thread end; return what the call returned (or raise what it raised)."""
        self._go.set()
        self._leave.set()
        self._thread.join()
        succeeded, value = self._outcome[0]
        if not succeeded:
            raise value
        return value


@contextlib.contextmanager
def _thread_beside(function: Callable[..., Any], args: tuple[Any, ...]) -> Iterator[_Worker]:
    """A :class:`_Worker` for ``function(*args)``, started; its last stretch recorded, its result kept."""
    gc.collect()
    gc.freeze()
    worker = _Worker(function, *args)
    try:
        worker.turn()
        yield worker
        worker.turn()  # the stretch that ends the call
    finally:
        gc.unfreeze()
        worker.result = worker.close()


async def longest_thread_hold(function: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """Run ``function(*args)`` in a thread beside a ticker task; return its result and the most CPU time the
    thread ran between two turns of the ticker.

    A thread holding the interpreter lock in one long call (a regex or ``json.dumps`` over megabytes) runs
    all of that call while the event loop waits for the lock: the thread's CPU time between two turns of the
    loop is how long it held the loop. Otherwise the thread hands the lock back every switch interval
    (5 ms). Unlike the wall-clock gap between two turns, other processes on a busy machine do not stretch it:
    a thread the machine does not run uses no CPU time. The test process's objects are frozen out of the
    garbage collector, as in :func:`longest_loop_step`.
    """
    with _thread_beside(function, args) as worker:
        while not worker.finished.is_set():
            await asyncio.sleep(0)
            worker.turn()
    return worker.result, worker.longest


def longest_thread_hold_beside_sleeper(function: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """:func:`longest_thread_hold` beside a plain thread that wakes every millisecond (no event loop)."""
    with _thread_beside(function, args) as worker:
        while not worker.finished.is_set():
            time.sleep(0.001)
            worker.turn()
    return worker.result, worker.longest
