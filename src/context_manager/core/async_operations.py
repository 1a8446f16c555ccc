"""Bounded, prioritised concurrent execution: :class:`ConcurrencyController`.

Submit callables under an id, wait for their results by id::

    async with ConcurrencyController(max_concurrent_tasks=10) as controller:
        await controller.submit_task("fetch-1", fetch, url, priority="high", timeout=5.0)
        page = await controller.wait_for_task("fetch-1")

Semantics:

* At most ``max_concurrent_tasks`` run at once; the others wait in a priority queue
  (``critical`` > ``high`` > ``normal`` > ``low``, first come first served within a priority).
* Coroutine functions run on the event loop; plain callables run in the controller's own threads
  (:class:`~context_manager.core.threads.UserThreads`), never in the loop's default pool that storage
  I/O uses, so they neither block the loop nor make storage wait. A thread cannot be interrupted: a
  timed-out or cancelled sync task stops being waited for and frees its slot, but its thread finishes
  the call (``get_stats().abandoned_threads`` counts those). The pool has a thread for every slot plus
  ``spare_threads`` for such abandoned calls, so a task that starts gets a thread at once and its
  timeout measures its own work, not a wait for a thread held by an earlier hung task.
* ``wait_for_task`` returns the result or raises the task's exception (``TaskTimeoutError`` after its
  timeout, ``TaskCancelledError`` after ``cancel_task``/``stop(drain=False)``). The record is then
  released and the id can be reused; finished results nobody fetched are kept up to
  ``max_retained_results`` (oldest dropped first).
* Every task the controller creates is stored and, on ``stop()``, finished (``drain=True``) or
  cancelled and awaited (``drain=False``): nothing is left pending.

All methods must be called from the event loop the controller was started in: a call from another one
(another thread's ``asyncio.run``) while that loop is open raises ``ControllerLoopError`` (its task would run
on one loop and wake its waiter on the other, which never notices). If that loop is closed
with tasks unfinished, the next call (from a new loop) ends them as cancelled and stops the controller
instead of leaving their waiters hanging. A running task cancelled from outside the controller (the end
of ``asyncio.run`` cancels every task) starts no queued task in its place: queued work does not begin
during a shutdown; if the loop goes on, the queue resumes with the controller's next call.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import inspect
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from context_manager.core.async_only import AsyncContextManagerOnly
from context_manager.core.errors import (
    ControllerLoopError,
    ControllerStoppedError,
    DuplicateTaskError,
    InvalidSettingError,
    InvalidTaskError,
    QueueFullError,
    TaskCancelledError,
    TaskNotFoundError,
    TaskTimeoutError,
)
from context_manager.core.threads import UserThreads

__all__ = [
    "ConcurrencyController",
    "ControllerStats",
    "TaskInfo",
    "TaskStatus",
    "cancel_and_wait",
    "task_alive",
]

logger = logging.getLogger(__name__)

_PRIORITY_RANK = {"low": 0, "normal": 1, "high": 2, "critical": 3}
_ALLOWED_PRIORITIES = "one of 'low', 'normal', 'high', 'critical'"


async def cancel_and_wait(task: asyncio.Task[Any] | None, *, owner: str = "background task") -> None:
    """Cancel ``task`` and wait until it has finished, so nothing is left pending.

    The task's own ``CancelledError`` is swallowed; it propagates only when the caller itself is being
    cancelled. An exception the task had already died of is logged at DEBUG (it was reported when it
    happened) and not raised. ``None`` does nothing, and so does a task whose event loop was closed
    under it (it can never run again: there is nothing to cancel or wait for).

    Args:
        task: The task to stop.
        owner: Who owns it, for the log line.
    """
    if task is None or (task.get_loop().is_closed() and not task.done()):
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception:
        logger.debug("%s had failed before it was stopped", owner, exc_info=True)


def task_alive(task: asyncio.Task[Any] | None) -> bool:
    """Whether ``task`` exists, has not finished and its event loop is open (a closed loop never runs it)."""
    return task is not None and not task.done() and not task.get_loop().is_closed()


class TaskStatus(StrEnum):
    """Where a task is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def finished(self) -> bool:
        """Whether the task has ended (completed, failed, cancelled or timed out)."""
        return self in _FINISHED


_FINISHED = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.TIMED_OUT})


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """A snapshot of one task (``get_task_status()``)."""

    task_id: str
    """The id it was submitted under."""
    status: TaskStatus
    """Its current status."""
    priority: str
    """Its priority: low, normal, high or critical."""
    wait_seconds: float | None
    """Time spent queued before starting (``None`` while still queued or if it never started)."""
    run_seconds: float | None
    """Running time so far, or the total once finished (``None`` if it never started)."""
    error: str | None
    """For a failed, timed-out or cancelled task, a description of the error."""


@dataclass(frozen=True, slots=True)
class ControllerStats:
    """Counters of a controller (``get_stats()``)."""

    running: int
    """Tasks running now."""
    queued: int
    """Tasks waiting for a slot."""
    completed: int
    """Tasks that returned a result."""
    failed: int
    """Tasks that raised an exception."""
    cancelled: int
    """Tasks cancelled before they finished."""
    timed_out: int
    """Tasks stopped by their timeout."""
    submitted: int
    """Tasks accepted since creation."""
    retained_results: int
    """Finished tasks whose result or error has not been fetched yet."""
    max_concurrent_tasks: int
    """The concurrency limit."""
    peak_running: int
    """The most tasks that ran at once (never above the limit)."""
    mean_wait_seconds: float
    """Mean time a started task waited in the queue."""
    mean_run_seconds: float
    """Mean running time of finished tasks that started."""
    abandoned_threads: int = 0
    """Sync tasks that timed out or were cancelled but still run in their thread (not interruptible)."""


@dataclass(slots=True, eq=False)
class _TaskRecord:
    task_id: str
    function: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    priority: str
    timeout: float | None
    is_async: bool
    submitted_at: float
    status: TaskStatus = TaskStatus.QUEUED
    started_at: float | None = None
    finished_at: float | None = None
    result: Any = None
    error: BaseException | None = None
    runner: asyncio.Task[None] | None = None
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    cancel_requested: bool = False


_coroutine_callables: dict[Any, bool] = {}
_COROUTINE_CACHE_SIZE = 1024


def _is_coroutine_callable(function: Callable[..., Any]) -> bool:
    """Whether calling ``function`` returns a coroutine (cached: inspect is slow on the hot path)."""
    try:
        return _coroutine_callables[function]
    except (KeyError, TypeError):  # not seen yet, or unhashable
        pass
    result = inspect.iscoroutinefunction(function)
    if not result:
        call = getattr(function, "__call__", None)  # noqa: B004 - an object with an async __call__
        result = call is not None and inspect.iscoroutinefunction(call)
    with contextlib.suppress(TypeError):
        if len(_coroutine_callables) >= _COROUTINE_CACHE_SIZE:
            _coroutine_callables.clear()
        _coroutine_callables[function] = result
    return result


def _check_timeout(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not (0 < value < math.inf):
        raise InvalidTaskError(name, value, "None or a finite number of seconds > 0")
    return float(value)


class ConcurrencyController(AsyncContextManagerOnly):
    """Runs submitted callables with a concurrency limit, priorities, timeouts and cancellation.

    Args:
        max_concurrent_tasks: How many tasks may run at once (>= 1).
        max_queue_size: How many tasks may wait for a slot (>= 0); beyond, ``submit_task`` raises
            ``QueueFullError``.
        default_timeout: Timeout in seconds for tasks submitted without one (``None``: no timeout).
        max_retained_results: Finished, unfetched results kept (>= 1); the oldest are dropped beyond.
        spare_threads: Threads beyond ``max_concurrent_tasks`` for sync tasks that timed out or were
            cancelled and still run (>= 0); past that many such hung calls, a new sync task waits for a
            thread inside its timeout.

    Raises:
        InvalidSettingError: A setting is out of range.
    """

    def __init__(
        self,
        max_concurrent_tasks: int = 10,
        max_queue_size: int = 10_000,
        default_timeout: float | None = None,
        *,
        max_retained_results: int = 1000,
        spare_threads: int = 64,
    ) -> None:
        for setting, value, minimum in (
            ("max_concurrent_tasks", max_concurrent_tasks, 1),
            ("max_queue_size", max_queue_size, 0),
            ("max_retained_results", max_retained_results, 1),
            ("spare_threads", spare_threads, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise InvalidSettingError(setting, value, f"an integer >= {minimum}")
        if default_timeout is not None and (
            isinstance(default_timeout, bool)
            or not isinstance(default_timeout, int | float)
            or not (0 < default_timeout < math.inf)
        ):
            raise InvalidSettingError(
                "default_timeout", default_timeout, "None or a finite number of seconds > 0"
            )
        self.max_concurrent_tasks = max_concurrent_tasks
        """How many tasks may run at once."""
        self.max_queue_size = max_queue_size
        """How many tasks may wait for a slot."""
        self.default_timeout = None if default_timeout is None else float(default_timeout)
        """Timeout of tasks submitted without one."""
        self.max_retained_results = max_retained_results
        """Finished, unfetched results kept."""

        self._accepting = False
        self._was_started = False
        self._starting_new = False
        self._tasks: dict[str, _TaskRecord] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._queue: list[tuple[int, int, _TaskRecord]] = []
        self._sequence = 0
        self._queued = 0
        self._running = 0
        self._peak_running = 0
        self._drained: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # where start() ran; tasks live on it
        self._threads = UserThreads("ConcurrencyController", max_threads=max_concurrent_tasks + spare_threads)
        self._counts = dict.fromkeys(
            (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.TIMED_OUT), 0
        )
        self._submitted = 0
        self._started = 0
        self._total_wait = 0.0
        self._ran = 0
        self._total_run = 0.0

    # ------------------------------------------------------------------------------------- lifecycle

    @property
    def is_running(self) -> bool:
        """Whether the controller accepts tasks (started and not stopped)."""
        return self._accepting

    async def start(self) -> None:
        """Start accepting tasks. Calling it again while running does nothing.

        Raises:
            ControllerLoopError: Tasks are queued or running on another event loop that is still open.
        """
        self._abandon_if_loop_closed()
        loop = asyncio.get_running_loop()
        if self._loop is not None and self._loop is not loop and (self._running or self._queued):
            self._refuse_other_loop()
        self._loop = loop
        self._was_started = True
        self._accepting = True
        self._starting_new = True
        self._check_loop()

    def _check_loop(self) -> None:
        """At each call: end the tasks of a closed loop, or start queued tasks a cancellation left waiting.

        Runners cancelled from outside (see :meth:`_finish`) start no queued task; the queue resumes here.
        """
        self._abandon_if_loop_closed()
        if self._loop is not None and self._loop is not asyncio.get_running_loop():
            self._refuse_other_loop()
        if self._queue and self._starting_new and self._running < self.max_concurrent_tasks:
            self._start_next()

    def _refuse_other_loop(self) -> None:
        raise ControllerLoopError(
            "ConcurrencyController: called from another event loop than the one it was started in (a "
            "thread's asyncio.run?), which is still open; allowed calls from that loop only (hand work "
            "to it with asyncio.run_coroutine_threadsafe, or give each loop its own controller)"
        )

    def _abandon_if_loop_closed(self) -> None:
        """End every unfinished task if the loop they ran on was closed under the controller.

        Their runner tasks died with that loop and will never finish: without this, waiters on a new
        loop would wait forever. They end as cancelled and the controller as stopped.
        """
        loop = self._loop
        if loop is None or not loop.is_closed():
            return
        self._loop = None
        self._accepting = self._starting_new = False
        self._queue.clear()
        self._drained = None
        abandoned = [record for record in self._tasks.values() if record.status not in _FINISHED]
        for record in abandoned:
            record.waiters.clear()  # futures of the closed loop: nobody can be woken through them
            self._end(record, TaskStatus.CANCELLED, None, TaskCancelledError(record.task_id))
        self._running = self._queued = 0
        self._threads.shutdown()
        if abandoned:
            logger.warning(
                "the event loop of a ConcurrencyController was closed while %d tasks were unfinished; "
                "they were cancelled and the controller stopped",
                len(abandoned),
            )

    async def stop(self, drain: bool = True, drain_timeout: float | None = None) -> None:
        """Stop accepting tasks and end the ones in flight.

        Args:
            drain: True: let queued and running tasks finish. False: cancel them (waiters get
                ``TaskCancelledError``).
            drain_timeout: With ``drain=True``, the most seconds to wait before cancelling the rest
                (``None``: no limit; 0 cancels at once).

        Every task the controller created has finished when this returns; results not fetched
        yet can still be fetched with ``wait_for_task``.

        Raises:
            InvalidSettingError: ``drain`` is not True or False, or ``drain_timeout`` is not ``None`` or
                a finite number >= 0 (nothing is stopped).
            ControllerLoopError: Called from another event loop than the controller's, which is open.
        """
        if drain is not True and drain is not False:  # "no" is truthy: it drained
            raise InvalidSettingError("drain", drain, "True or False")
        if drain_timeout is not None and (
            isinstance(drain_timeout, bool)
            or not isinstance(drain_timeout, int | float)
            or not (0 <= drain_timeout < math.inf)
        ):
            raise InvalidSettingError(
                "drain_timeout", drain_timeout, "None or a finite number of seconds >= 0"
            )
        self._check_loop()
        self._accepting = False
        if drain and (self._running or self._queued):
            drained = self._drained
            if drained is None or drained.done():  # a stop() draining already: wait for the same end
                drained = self._drained = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(asyncio.shield(drained), drain_timeout)
            except TimeoutError:
                logger.warning(
                    "stop(drain=True) timed out after %s s; cancelling the remaining tasks", drain_timeout
                )
        self._starting_new = False
        while self._queue:
            _, _, record = heapq.heappop(self._queue)
            if record.status is TaskStatus.QUEUED:
                self._queued -= 1
                self._end(record, TaskStatus.CANCELLED, None, TaskCancelledError(record.task_id))
        running = [(record, record.runner) for record in self._tasks.values() if record.runner is not None]
        for record, runner in running:
            record.cancel_requested = True
            runner.cancel()
        if running:
            await asyncio.wait([runner for _, runner in running])
            for record, runner in running:
                self._finish_if_never_started(record, runner)
        drained = self._drained
        if drained is not None and not drained.done():  # every task has ended: a concurrent stop() returns
            drained.set_result(None)
        self._threads.shutdown()

    async def __aenter__(self) -> ConcurrencyController:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop(drain=exc_info[0] is None)

    # ----------------------------------------------------------------------------------- submitting

    async def submit_task(
        self,
        task_id: str,
        fn: Callable[..., Any],
        /,
        *args: Any,
        priority: str = "normal",
        timeout: float | None = None,  # noqa: ASYNC109 - the task's timeout, applied with asyncio.timeout
        **kwargs: Any,
    ) -> str:
        """Queue ``fn(*args, **kwargs)`` under ``task_id`` and return the id.

        Args:
            task_id: A non-empty id, unique among tasks whose result has not been fetched.
            fn: A coroutine function (run on the loop) or a plain callable (run in a thread).
            *args: Positional arguments for ``fn``.
            priority: ``"low"``, ``"normal"``, ``"high"`` or ``"critical"``.
            timeout: Seconds the task may run; ``None`` uses ``default_timeout``.
            **kwargs: Keyword arguments for ``fn`` (use ``functools.partial`` for arguments named
                ``priority`` or ``timeout``).

        Raises:
            ControllerLoopError: Called from another event loop than the controller's, which is open.
            ControllerStoppedError: The controller is not started or was stopped.
            InvalidTaskError: Bad id, priority, timeout, or ``fn`` is not callable.
            DuplicateTaskError: ``task_id`` is in use.
            QueueFullError: All slots are busy and ``max_queue_size`` tasks already wait.
        """
        self._check_loop()
        if not self._accepting:
            state = "stopped" if self._was_started else "not started"
            raise ControllerStoppedError(
                f"controller: got {state!r}; allowed 'running' (submit_task needs await "
                "controller.start() first and no stop() since; a controller whose event loop was "
                "closed is stopped)"
            )
        if type(task_id) is not str or not task_id:
            raise InvalidTaskError("task_id", task_id, "a non-empty string")
        if not callable(fn):
            if inspect.iscoroutine(fn):
                fn.close()  # avoid "coroutine was never awaited"
                raise InvalidTaskError(
                    "fn", fn, "a callable", detail="pass the coroutine function and its arguments"
                )
            raise InvalidTaskError("fn", fn, "a callable")
        rank = _PRIORITY_RANK.get(priority) if isinstance(priority, str) else None
        if rank is None:
            raise InvalidTaskError("priority", priority, _ALLOWED_PRIORITIES)
        task_timeout = _check_timeout("timeout", timeout)
        if task_id in self._tasks:
            raise DuplicateTaskError(
                "task_id", task_id, "an id not in use (fetch or cancel the earlier task)"
            )
        can_start = self._running < self.max_concurrent_tasks and not self._queued
        if not can_start and self._queued >= self.max_queue_size:
            raise QueueFullError(
                f"queue: got {self._queued} waiting tasks; allowed at most max_queue_size="
                f"{self.max_queue_size} (wait for results or raise the limit)"
            )
        record = _TaskRecord(
            task_id,
            fn,
            args,
            kwargs,
            str(priority),
            self.default_timeout if task_timeout is None else task_timeout,
            _is_coroutine_callable(fn),
            time.monotonic(),
        )
        self._tasks[task_id] = record
        self._submitted += 1
        if can_start:
            self._start(record)
        else:
            self._sequence += 1
            heapq.heappush(self._queue, (-rank, self._sequence, record))
            self._queued += 1
        return task_id

    def _start(self, record: _TaskRecord) -> None:
        now = time.monotonic()
        record.status = TaskStatus.RUNNING
        record.started_at = now
        self._started += 1
        self._total_wait += now - record.submitted_at
        self._running += 1
        if self._running > self._peak_running:
            self._peak_running = self._running
        record.runner = asyncio.get_running_loop().create_task(self._run(record))

    def _start_next(self) -> None:
        queue = self._queue
        while queue and self._running < self.max_concurrent_tasks:
            record = heapq.heappop(queue)[2]
            if record.status is TaskStatus.QUEUED:
                self._queued -= 1
                self._start(record)

    async def _run(self, record: _TaskRecord) -> None:
        status = TaskStatus.COMPLETED
        result: Any = None
        error: BaseException | None = None
        from_outside = closed = False
        try:
            if record.timeout is None:
                result = await self._invoke(record)
            else:
                scope = asyncio.timeout(record.timeout)
                try:
                    async with scope:
                        result = await self._invoke(record)
                except TimeoutError:
                    if not scope.expired():
                        raise  # the function itself raised TimeoutError
                    status, error = TaskStatus.TIMED_OUT, TaskTimeoutError(record.task_id, record.timeout)
                else:
                    if scope.expired():  # the timeout cancelled it; it caught that and returned late anyway
                        status, error = TaskStatus.TIMED_OUT, TaskTimeoutError(record.task_id, record.timeout)
                        result = None
        except asyncio.CancelledError:
            status, error = TaskStatus.CANCELLED, TaskCancelledError(record.task_id)
            if not record.cancel_requested:
                from_outside = True
                raise  # cancelled from outside (e.g. the loop is closing): propagate
        except GeneratorExit:
            # closed unfinished: the task was destroyed with its closed event loop (perhaps while a later
            # loop runs). _abandon_if_loop_closed ends such tasks; counting it here would count it twice
            closed = True
            raise
        except BaseException as exception:  # a BaseException subclass of the task's own fails it too
            status, error = TaskStatus.FAILED, exception
            if isinstance(exception, KeyboardInterrupt | SystemExit):
                raise  # the process is stopping: let it
        finally:
            if not closed:
                self._finish(record, status, result, error, start_next=not from_outside)

    def _finish(
        self,
        record: _TaskRecord,
        status: TaskStatus,
        result: Any,
        error: BaseException | None,
        *,
        start_next: bool = True,
    ) -> None:
        """End a running task: free its slot, start the next queued one, wake a draining ``stop()``.

        ``start_next=False`` for a task cancelled from outside the controller, which is what the end of
        ``asyncio.run`` does to every task: a queued task started then would be a task of a dying loop
        (a sync one would begin its work in a thread during shutdown). The queue resumes with the
        controller's next call (:meth:`_check_loop`).
        """
        self._running -= 1
        self._end(record, status, result, error)
        if self._starting_new and start_next:
            self._start_next()
        drained = self._drained
        if drained is not None and not self._running and not self._queued and not drained.done():
            drained.set_result(None)

    def _finish_if_never_started(self, record: _TaskRecord, runner: asyncio.Task[None]) -> None:
        """End a task whose runner was cancelled before its first step (so ``_run`` never cleaned up)."""
        if record.runner is runner:
            self._finish(record, TaskStatus.CANCELLED, None, TaskCancelledError(record.task_id))

    async def _invoke(self, record: _TaskRecord) -> Any:
        if record.is_async:
            return await record.function(*record.args, **record.kwargs)
        result = await self._threads.run(record.function, *record.args, **record.kwargs)
        if inspect.isawaitable(result):  # a plain callable that returned a coroutine
            result = await result
        return result

    def _end(self, record: _TaskRecord, status: TaskStatus, result: Any, error: BaseException | None) -> None:
        now = time.monotonic()
        record.status = status
        record.finished_at = now
        record.result = result
        record.error = error
        record.runner = None
        record.function, record.args, record.kwargs = _released, (), {}
        self._counts[status] += 1
        if record.started_at is not None:
            self._ran += 1
            self._total_run += now - record.started_at
        for waiter in record.waiters:
            if not waiter.done():
                waiter.set_result(None)
        record.waiters.clear()
        finished = self._finished
        finished[record.task_id] = None
        if len(finished) > self.max_retained_results:
            oldest, _ = finished.popitem(last=False)
            dropped = self._tasks.pop(oldest, None)
            if dropped is not None and dropped.status is TaskStatus.FAILED:
                logger.debug("dropped the unfetched error of task %r: %r", oldest, dropped.error)

    # -------------------------------------------------------------------------------------- results

    def _record(self, task_id: str) -> _TaskRecord:
        record = self._tasks.get(task_id) if isinstance(task_id, str) else None
        if record is None:
            raise TaskNotFoundError(
                task_id,
                allowed=f"the id of a task submitted and not yet fetched ({len(self._tasks)} held)",
            )
        return record

    async def wait_for_task(self, task_id: str, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        """Wait for a task and return its result, or raise its exception; then release it.

        Args:
            task_id: The id given to ``submit_task``.
            timeout: The most seconds to wait; the task keeps running if the wait times out.

        Raises:
            TaskNotFoundError: No such task (never submitted, or its result was already fetched
                or dropped after ``max_retained_results``).
            TaskTimeoutError: The task ran past its own timeout, or this wait's ``timeout`` expired
                (then the error's ``task_finished`` is False, its message says so, and
                ``get_task_status`` still shows the task queued or running).
            TaskCancelledError: The task was cancelled (or the event loop it ran on was closed).
            InvalidTaskError: ``timeout`` is not ``None`` or a positive number.
            ControllerLoopError: Called from another event loop than the controller's, which is open.
            Exception: Whatever the task raised.
        """
        wait_timeout = _check_timeout("timeout", timeout)
        self._check_loop()
        record = self._record(task_id)
        if record.status not in _FINISHED:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            record.waiters.append(waiter)
            try:
                if wait_timeout is None:
                    await waiter
                else:
                    async with asyncio.timeout(wait_timeout):
                        await waiter
            except TimeoutError:
                raise TaskTimeoutError(task_id, wait_timeout or 0.0, task_finished=False) from None
            finally:
                if not waiter.done():  # this wait timed out or was cancelled: forget the waiter
                    waiter.cancel()
                    record.waiters.remove(waiter)
        if self._tasks.get(task_id) is record:
            del self._tasks[task_id]
            self._finished.pop(task_id, None)
        if record.status is TaskStatus.COMPLETED:
            return record.result
        assert record.error is not None
        raise record.error

    async def cancel_task(self, task_id: str) -> bool:
        """Cancel a queued or running task and wait until it has stopped.

        Returns:
            True if the task was cancelled; False if it had already finished (or finished anyway,
            because it ignored the cancellation).

        Raises:
            TaskNotFoundError: No such task.
            ControllerLoopError: Called from another event loop than the controller's, which is open.
        """
        self._check_loop()
        record = self._record(task_id)
        if record.status is TaskStatus.QUEUED:
            self._queued -= 1
            self._end(record, TaskStatus.CANCELLED, None, TaskCancelledError(task_id))
            queue = self._queue
            if len(queue) > 2 * self._queued + 64:  # mostly cancelled entries: drop them (amortised O(1))
                self._queue = [entry for entry in queue if entry[2].status is TaskStatus.QUEUED]
                heapq.heapify(self._queue)
            return True
        runner = record.runner
        if record.status is not TaskStatus.RUNNING or runner is None:
            return False
        record.cancel_requested = True
        runner.cancel()
        await asyncio.wait([runner])
        self._finish_if_never_started(record, runner)
        return record.status in (TaskStatus.CANCELLED,)  # re-read: the runner changed it

    def get_task_status(self, task_id: str) -> TaskInfo:
        """Return a snapshot of a task.

        Raises:
            TaskNotFoundError: No such task (or its result was already fetched).
        """
        record = self._record(task_id)
        now = time.monotonic()
        wait = None if record.started_at is None else record.started_at - record.submitted_at
        run = None
        if record.started_at is not None:
            run = (record.finished_at or now) - record.started_at
        error = None if record.error is None else f"{type(record.error).__name__}: {record.error}"
        return TaskInfo(task_id, record.status, record.priority, wait, run, error)

    def get_stats(self) -> ControllerStats:
        """Return the controller's counters."""
        counts = self._counts
        return ControllerStats(
            running=self._running,
            queued=self._queued,
            completed=counts[TaskStatus.COMPLETED],
            failed=counts[TaskStatus.FAILED],
            cancelled=counts[TaskStatus.CANCELLED],
            timed_out=counts[TaskStatus.TIMED_OUT],
            submitted=self._submitted,
            retained_results=len(self._finished),
            max_concurrent_tasks=self.max_concurrent_tasks,
            peak_running=self._peak_running,
            mean_wait_seconds=self._total_wait / self._started if self._started else 0.0,
            mean_run_seconds=self._total_run / self._ran if self._ran else 0.0,
            abandoned_threads=self._threads.abandoned,
        )


def _released(*args: Any, **kwargs: Any) -> Any:  # pragma: no cover - never called
    raise RuntimeError("the task's callable was released after it finished")
