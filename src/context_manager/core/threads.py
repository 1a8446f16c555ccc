"""Worker threads for user code (sync tools, controller tasks), apart from the threads storage uses.

``asyncio.to_thread`` runs on the event loop's default executor, a handful of threads
(``min(32, cpus + 4)``) shared by everything in the process, the memory stores' SQLite and file I/O
included. Sync tools and sync controller tasks are user code that may block for a long time or hang
for ever (a thread cannot be interrupted); run there, twenty hung tools made a long-term
``add_memory`` wait seconds for a free thread. :class:`UserThreads` gives such code a pool of its
own:

* a call starts at once on an idle thread, or on a new one while fewer than ``max_threads`` exist
  (threads are created on demand and reused);
* its threads are daemon threads: a call that never returns does not keep the process from exiting;
* a call whose caller stopped waiting (a timeout or a cancellation) while it ran is *abandoned*: its
  thread finishes the call and its result is dropped. :attr:`UserThreads.abandoned` counts those
  still running, so hung user code shows in the statistics instead of silently eating threads;
* the context variables of the caller are visible in the thread, as with ``asyncio.to_thread``.

When ``max_threads`` calls hang at once, a new call waits for a thread (inside its caller's
timeout): size ``max_threads`` above the number of hung calls you are ready to tolerate.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = [
    "ThreadCall",
    "UserThreads",
    "WorkerExit",
    "is_async_callable",
    "to_the_end",
    "to_the_end_once_begun",
    "wait_for_all",
]

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


class _Counters:
    """The pool's figures, shared by its threads (which must not hold the pool object itself)."""

    __slots__ = ("abandoned", "busy", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.busy = 0
        self.abandoned = 0


class ThreadCall:
    """One call handed to :class:`UserThreads`; tells whether it started and finished in its thread."""

    __slots__ = (
        "_args",
        "_context",
        "_counters",
        "_function",
        "_future",
        "_kwargs",
        "_late_end",
        "_loop",
        "abandoned",
        "finished",
        "started",
    )

    def __init__(
        self,
        counters: _Counters,
        loop: asyncio.AbstractEventLoop,
        function: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.started = False
        """True once a thread began running the call."""
        self.finished = False
        """True once the call returned or raised in its thread."""
        self.abandoned = False
        """True when the caller stopped waiting before the call finished."""
        self._counters = counters
        self._loop = loop
        self._future: asyncio.Future[Any] = loop.create_future()
        self._function = function
        self._args = args
        self._kwargs = kwargs
        self._context = contextvars.copy_context()
        self._late_end: Callable[[], None] | None = None

    def on_late_end(self, callback: Callable[[], None]) -> bool:
        """Have ``callback`` called on the loop when this call, abandoned while it ran, ends in its thread.

        When the loop was closed by then, it is called in the call's thread instead (so it must be thread
        safe and must not raise). Returns False (and never calls it) when the call is not running: it
        ended already, or never began.
        """
        with self._counters.lock:
            if self.finished or not self.started:
                return False
            self._late_end = callback
            return True

    def _run(self) -> None:
        """Run the call in the current thread and hand its outcome to the waiting loop (never raises)."""
        counters = self._counters
        with counters.lock:
            if self.abandoned:  # its caller stopped waiting before a thread was free: it never starts
                return
            self.started = True
            counters.busy += 1
        failed = False
        try:
            outcome: Any = self._context.run(self._function, *self._args, **self._kwargs)
        except (StopIteration, GeneratorExit) as error:
            # a future cannot carry StopIteration: asyncio would never resolve the call (PEP 479's
            # conversion, as for a coroutine); GeneratorExit it would throw into the waiting task's
            # outermost coroutine, closing every one in between (their handlers never see it)
            failed = True
            outcome = RuntimeError(f"{_name_of(self._function)} raised {type(error).__name__}")
            outcome.__cause__ = error
        except (SystemExit, KeyboardInterrupt) as error:  # the callable's own exit: not the process's
            failed = True
            outcome = WorkerExit(error)
            outcome.__cause__ = error
        except BaseException as error:
            failed = True
            outcome = error
        finally:
            with counters.lock:
                self.finished = True
                counters.busy -= 1
                if self.abandoned:
                    counters.abandoned -= 1
                late_end, self._late_end = self._late_end, None
        try:
            self._loop.call_soon_threadsafe(_deliver, self._future, failed, outcome)
            if late_end is not None:
                self._loop.call_soon_threadsafe(late_end)
                late_end = None
        except RuntimeError:  # the loop was closed meanwhile: nobody waits for the outcome
            pass
        if late_end is not None:  # no loop to run it on: here (its owner counts on hearing of the end)
            late_end()

    def _drop(self) -> None:
        """Cancel the call's wait: the pool was shut down before a thread took it (it never runs)."""
        with self._counters.lock:
            if self.started:
                return
            self.abandoned = True
        with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile
            self._loop.call_soon_threadsafe(_cancel, self._future)


def _deliver(future: asyncio.Future[Any], failed: bool, outcome: Any) -> None:
    if future.done():  # the caller stopped waiting
        return
    if failed:
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _cancel(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.cancel()


class _Pool:
    """Daemon threads sharing one queue of calls: one generation of a :class:`UserThreads` pool.

    Each call put in the queue is claimed by exactly one thread: an idle one (``free``), a new one, or,
    when ``max_threads`` are busy, the next to finish (``backlog``).
    """

    __slots__ = ("backlog", "closed", "free", "lock", "max_threads", "name", "queue", "threads")

    def __init__(self, name: str, max_threads: int) -> None:
        self.name = name
        self.max_threads = max_threads
        self.queue: queue.SimpleQueue[ThreadCall | None] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.threads = 0
        self.free = 0
        self.backlog = 0
        self.closed = False

    def submit(self, call: ThreadCall) -> None:
        with self.lock:
            if self.free:
                self.free -= 1
                spawn = None
            elif self.threads < self.max_threads:
                spawn = self.threads
                self.threads += 1
            else:
                self.backlog += 1
                spawn = None
        if spawn is not None:
            # daemon: a call that never returns must not keep the process from exiting (the standard
            # ThreadPoolExecutor's threads are joined at exit, so a hung tool hung the interpreter)
            thread = threading.Thread(target=self._work, name=f"{self.name}_{spawn}", daemon=True)
            try:
                thread.start()
            except BaseException:
                with self.lock:
                    self.threads -= 1
                raise
        self.queue.put(call)

    def _work(self) -> None:
        get = self.queue.get
        while True:
            call = get()
            if call is None:
                with self.lock:
                    self.threads -= 1
                return
            call._run()
            del call  # its arguments and outcome are not kept while the thread waits
            with self.lock:
                if self.backlog:
                    self.backlog -= 1
                else:
                    self.free += 1

    def close(self) -> None:
        """Drop the calls no thread took yet; let every thread end once its running call returns."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            threads = self.threads
        while True:
            try:
                call = self.queue.get_nowait()
            except queue.Empty:
                break
            if call is not None:
                call._drop()
        for _ in range(threads):
            self.queue.put(None)


class UserThreads:
    """A thread pool for blocking user callables, separate from the event loop's default executor.

    Its threads are daemon threads: a call that never returns does not keep the process from exiting
    (the standard ``ThreadPoolExecutor`` joins its threads at exit, so one hung tool hung the
    interpreter after the application's work was done). They are created on demand, reused, and end
    after :meth:`shutdown` or when the pool is garbage collected.

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
        self._pool: _Pool | None = None
        self._counters = _Counters()

    @property
    def busy(self) -> int:
        """Threads running a call now (abandoned calls included)."""
        return self._counters.busy

    @property
    def abandoned(self) -> int:
        """Calls still running in a thread although their caller stopped waiting (timeout, cancel)."""
        return self._counters.abandoned

    async def run(self, function: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
        """Call ``function(*args, **kwargs)`` in one of the pool's threads and return its result.

        Cancelling the caller (or its timeout expiring) stops the wait at once; a call that had not
        started yet never starts, one that had keeps its thread until it returns (it is counted in
        :attr:`abandoned` meanwhile).
        """
        return await self.wait(self.start(function, args, kwargs))  # type: ignore[no-any-return]

    def start(
        self, function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> ThreadCall:
        """Hand ``function(*args, **kwargs)`` to a thread (an idle one, a new one, or the next free one).

        Await its outcome with :meth:`wait`; the returned :class:`ThreadCall` tells whether it started.
        Must be called on the event loop that will wait for it.
        """
        pool = self._pool
        if pool is None:
            pool = self._pool = _Pool(self.name, self.max_threads)
            # garbage collected without shutdown(): its idle threads end rather than wait for ever
            weakref.finalize(self, pool.close).atexit = False
        call = ThreadCall(self._counters, asyncio.get_running_loop(), function, args, kwargs)
        pool.submit(call)
        return call

    async def wait(self, call: ThreadCall) -> Any:
        """Return what ``call`` (from :meth:`start`) returned, or raise what it raised.

        Cancelled (or timed out), the wait stops at once: see :meth:`run`.
        """
        try:
            return await call._future
        except asyncio.CancelledError:
            counters = self._counters
            with counters.lock:
                if not call.finished:
                    call.abandoned = True
                    if call.started:
                        counters.abandoned += 1
            raise

    def shutdown(self) -> None:
        """Let idle threads end and drop calls not started yet; running calls finish in their threads.

        The pool can be used again afterwards (it starts new threads).
        """
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


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


async def wait_for_all(tasks: set[Any]) -> None:
    """Wait until ``tasks`` is empty: a set its tasks leave when they end (a done callback discards them).

    Tasks added while waiting are waited for too; failures are the tasks' own (retrieved, not raised). A
    task that ended is taken out here as well: its done callback runs only at a later step of the loop, and
    on Python 3.12+ ``gather`` of tasks that all ended completes without yielding to the loop, so a loop
    waiting for the callback to empty the set would never let it run (a close that spun forever).
    """
    while tasks:
        batch = tuple(tasks)
        await asyncio.gather(*batch, return_exceptions=True)
        tasks.difference_update(batch)


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


async def to_the_end_once_begun(task: asyncio.Future[Any], begun: Callable[[], bool]) -> Any:
    """:func:`to_the_end` of work whose first write is one transaction that a cancellation rolls back.

    A caller cancelled before ``begun()`` is true cancels ``task`` too (nothing of it is written yet: a
    transaction cut short, while it waits for another process's lock say, is rolled back), waits for it to
    unwind and gets its cancellation at once; once ``begun()`` is true the task runs to its end, as with
    :func:`to_the_end`. A caller's timeout then still bounds a write that waits on a database's locks.
    """
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done() and not begun():
            task.cancel()
        with contextlib.suppress(Exception):  # the caller asked to stop: the task's error is retrieved
            await to_the_end(task)
        raise
