"""Worker threads for user code (sync tools, controller tasks), apart from the threads storage uses.

``asyncio.to_thread`` runs on the event loop's default executor, a handful of threads
(``min(32, cpus + 4)``) shared by everything in the process, the memory stores' SQLite and file I/O
included. Sync tools and sync controller tasks are user code that may block for a long time or hang
for ever (a thread cannot be interrupted); run there, twenty hung tools made a long-term
``add_memory`` wait seconds for a free thread. :class:`UserThreads` gives such code a pool of its
own:

* a call starts at once on an idle thread, or on a new one while fewer than ``max_threads`` exist
  (threads are created on demand and reused; the standard ``ThreadPoolExecutor`` does this);
* a call whose caller stopped waiting (a timeout or a cancellation) while it ran is *abandoned*: its
  thread finishes the call and its result is dropped. :attr:`UserThreads.abandoned` counts those
  still running, so hung user code shows in the statistics instead of silently eating threads;
* the context variables of the caller are visible in the thread, as with ``asyncio.to_thread``.

When ``max_threads`` calls hang at once, a new call waits for a thread (inside its caller's
timeout): size ``max_threads`` above the number of hung calls you are ready to tolerate.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["UserThreads", "WorkerExit", "is_async_callable", "to_the_end"]

_T = TypeVar("_T")


class WorkerExit(Exception):
    """A callable run in a worker thread raised ``SystemExit`` or ``KeyboardInterrupt`` (``exit``).

    In a worker thread these can only be the callable's own (an argparse command line exiting on bad
    arguments): signals reach the main thread. Raised on the event loop they would stop the application,
    so the caller gets this ordinary exception instead.
    """

    def __init__(self, exit: SystemExit | KeyboardInterrupt) -> None:
        self.exit = exit
        """What the callable raised."""
        text = str(exit)
        kind = type(exit).__name__ + (f": {text}" if text else "")
        super().__init__(f"{kind} (it exited; the process goes on)")


class _CallState:
    __slots__ = ("abandoned", "finished", "started")

    def __init__(self) -> None:
        self.started = False
        self.finished = False
        self.abandoned = False


class UserThreads:
    """A thread pool for blocking user callables, separate from the event loop's default executor.

    Args:
        name: Prefix of the thread names (shown in debuggers and ``threading.enumerate()``).
        max_threads: The most threads the pool creates (>= 1).

    Example:
        >>> threads = UserThreads("my-tools", max_threads=8)
        >>> # result = await threads.run(blocking_function, argument)
        >>> threads.shutdown()
    """

    def __init__(self, name: str, *, max_threads: int) -> None:
        if isinstance(max_threads, bool) or not isinstance(max_threads, int) or max_threads < 1:
            raise ValueError(f"max_threads: got {max_threads!r}; allowed an integer >= 1")
        self.name = name
        """Prefix of the thread names."""
        self.max_threads = max_threads
        """The most threads the pool creates."""
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._busy = 0
        self._abandoned = 0

    @property
    def busy(self) -> int:
        """Threads running a call now (abandoned calls included)."""
        return self._busy

    @property
    def abandoned(self) -> int:
        """Calls still running in a thread although their caller stopped waiting (timeout, cancel)."""
        return self._abandoned

    async def run(self, function: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
        """Call ``function(*args, **kwargs)`` in one of the pool's threads and return its result.

        Cancelling the caller (or its timeout expiring) stops the wait at once; a call that had not
        started yet never starts, one that had keeps its thread until it returns (it is counted in
        :attr:`abandoned` meanwhile).
        """
        executor = self._executor
        if executor is None:
            executor = self._executor = ThreadPoolExecutor(
                max_workers=self.max_threads, thread_name_prefix=self.name
            )
        state = _CallState()
        context = contextvars.copy_context()

        def call() -> _T:
            with self._lock:
                state.started = True
                self._busy += 1
                if state.abandoned:
                    self._abandoned += 1
            try:
                return context.run(function, *args, **kwargs)
            except StopIteration as error:
                # a future cannot carry StopIteration: asyncio would never resolve the call (PEP 479's
                # conversion, as for a coroutine)
                raise RuntimeError(f"{_name_of(function)} raised StopIteration") from error
            except (SystemExit, KeyboardInterrupt) as error:  # the callable's own exit: not the process's
                raise WorkerExit(error) from error
            finally:
                with self._lock:
                    state.finished = True
                    self._busy -= 1
                    if state.abandoned:
                        self._abandoned -= 1

        future = asyncio.get_running_loop().run_in_executor(executor, call)
        try:
            return await future
        except asyncio.CancelledError:
            with self._lock:
                if not state.finished:
                    state.abandoned = True
                    if state.started:
                        self._abandoned += 1
            raise

    def shutdown(self) -> None:
        """Let idle threads end and drop calls not started yet; running calls finish in their threads.

        The pool can be used again afterwards (it starts new threads).
        """
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


def _name_of(function: Callable[..., Any]) -> str:
    return str(getattr(function, "__qualname__", None) or getattr(function, "__name__", None) or function)


def is_async_callable(function: Any) -> bool:
    """Whether calling ``function`` gives a coroutine: an async function or an object with an async call.

    Such a callable runs on the event loop; any other one runs in a thread.
    """
    if inspect.iscoroutinefunction(function):
        return True
    call = getattr(function, "__call__", None)  # noqa: B004 - an object with an async __call__
    return call is not None and inspect.iscoroutinefunction(call)


async def to_the_end(task: asyncio.Future[Any]) -> Any:
    """Await ``task`` to its end even if the caller is cancelled meanwhile; then re-raise that cancellation.

    For work that must not stop halfway once started (a storage write whose commit a cancellation cannot
    stop, a shutdown releasing resources): the task runs on its own, and the caller's cancellation is
    raised once it is done (its outcome is retrieved, not lost). A cancellation of the task itself (the
    loop closing) propagates at once.
    """
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                cancelled = True
                continue
            if not task.cancelled():
                task.exception()  # cancelled as it ended: its outcome goes unseen (but is retrieved)
            raise
        except BaseException:
            if cancelled:
                raise asyncio.CancelledError from None  # the caller asked to stop; the error is retrieved
            raise
        if cancelled:
            raise asyncio.CancelledError
        return result
