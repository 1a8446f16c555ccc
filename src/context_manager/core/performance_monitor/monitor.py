"""The :class:`PerformanceMonitor`: records operations, samples the process, computes health and advice."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import numbers
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, ClassVar

from context_manager.core.async_only import AsyncContextManagerOnly
from context_manager.core.async_operations import cancel_and_wait, task_alive
from context_manager.core.errors import (
    ConversationAccessError,
    DuplicateTaskError,
    InvalidArgumentError,
    InvalidMetricError,
    InvalidSettingError,
    LifecycleError,
    MonitoringError,
    NotFoundError,
    ToolRegistrationError,
)
from context_manager.core.performance_monitor import registry, rules
from context_manager.core.performance_monitor.metrics import (
    OperationStats,
    PerformanceMetrics,
    PerformanceThresholds,
    SystemSample,
)
from context_manager.core.performance_monitor.profiling import HOTTEST_FUNCTIONS_SHOWN, BlockProfiler
from context_manager.core.performance_monitor.prometheus import PrometheusCollector
from context_manager.core.performance_monitor.reservoir import (
    LatencyReservoir,
    figures_stats,
    overall_stats,
    recent_stats,
)
from context_manager.core.performance_monitor.timer import OperationTimer
from context_manager.core.text import encodable
from context_manager.core.warmup import warm_ups

__all__ = ["PerformanceMonitor", "check_operation_name"]

logger = logging.getLogger(__name__)

_DEFAULT_RESERVOIR_SIZE = 1024
_RATE_WINDOW_S = 60.0
_MAX_RECENT_ERRORS = 50
_MAX_ERROR_TEXT = 1000  # characters of an error's text kept in the recent errors
_MAX_TOKENS = 2**63 - 1  # what metric exporters carry (a 64-bit integer)
_FOLD_AT = 64  # successes queued by _record_success before they are counted (and at every read)
_DEFAULT_MAX_OPERATION_NAMES = 500
# psutil's process CPU times move in clock ticks (10 ms on Linux): over a span of a millisecond one tick
# reads as 1,000 %. A sample taken sooner than this after the previous read keeps the previous figure.
_MIN_CPU_SPAN_S = 0.05

# The longest duration record_operation takes, in seconds (about 31,700 years): its figures in ms, and the
# totals of any number of such operations, stay finite (1e308 s was inf ms, which strict JSON cannot write).
_MAX_DURATION_S = 1e12
_DURATION = "a finite number of seconds from 0 to 1e12"

_OPERATION_NAME = "a non-empty string of valid Unicode text (no lone surrogates)"


def check_operation_name(name: object) -> str:
    """Return ``name`` if it can name an operation, else raise :class:`InvalidMetricError`.

    A lone surrogate (a file name decoded with ``surrogateescape``, say) cannot be encoded as UTF-8: kept,
    it made every Prometheus scrape of the monitor fail with ``UnicodeEncodeError``.
    """
    if type(name) is not str or not name or not (name.isascii() or encodable(name)):
        raise InvalidMetricError("name", name, _OPERATION_NAME)
    return name


CLIENT_ERRORS: tuple[type[Exception], ...] = (
    InvalidArgumentError,
    NotFoundError,
    ConversationAccessError,
    DuplicateTaskError,
    ToolRegistrationError,
)
"""The errors that refuse the caller's input (HTTP's 4xx: an invalid argument, an unknown id, another
user's conversation, a duplicate id): an operation failing with one is counted as *rejected*, not as a
failure of the service, so a client sending bad input does not make the service look unhealthy."""


class PerformanceMonitor(AsyncContextManagerOnly):
    """Records operation timings and samples process resources; computes health and advice.

    Args:
        sample_interval: Seconds between background samples of RSS, CPU and event-loop lag (> 0).
        enable_profiling: Profile the code run inside :meth:`operation_timer` blocks with ``cProfile``;
            the summary then names the hottest functions. Costs time: use while investigating.
        history_size: Length of the ring buffers of recent operations and system samples (>= 10).
        reservoir_size: Latency values kept per operation for percentiles (>= 10); exact below it.
        thresholds: The limits used by the health score and the recommendation rules.
        collect_library_operations: While running, also count the library's instrumented operations
            (see the package docstring). ``EnhancedContextManager`` creates its own monitor with False.
        max_operation_names: Distinct operation names kept (>= 1), each with its own latency reservoir
            and token totals. Records of further names are counted under :attr:`OVERFLOW_OPERATION`
            (a warning is logged once), as OpenTelemetry's SDK folds series past its cardinality limit:
            memory stays bounded when a name carries an id or a URL. Name kinds of work, not instances.
        clock: The monotonic clock (seconds) the recent windows, the throughput and the uptime are
            measured with (default ``time.monotonic``): a step of the wall clock (NTP, a suspended VM)
            does not move them. The times shown (the recent errors', samples' and metrics' ``timestamp``)
            stay wall-clock ``time.time()``. Pass a clock of your own to test window logic.

    Raises:
        InvalidSettingError: A setting is out of range.

    Recording is thread-safe; ``start_monitoring`` must be awaited in the event loop to be sampled.
    """

    CLIENT_ERRORS: ClassVar[tuple[type[Exception], ...]] = CLIENT_ERRORS
    """The errors counted as *rejected* (the caller's bad input), not as failures: see
    :data:`CLIENT_ERRORS`."""

    OVERFLOW_OPERATION: ClassVar[str] = "__overflow__"
    """The operation name under which records of names beyond ``max_operation_names`` are counted."""

    def __init__(
        self,
        sample_interval: float = 1.0,
        enable_profiling: bool = False,
        history_size: int = 1000,
        *,
        reservoir_size: int = _DEFAULT_RESERVOIR_SIZE,
        thresholds: PerformanceThresholds | None = None,
        collect_library_operations: bool = True,
        max_operation_names: int = _DEFAULT_MAX_OPERATION_NAMES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if (
            isinstance(sample_interval, bool)
            or not isinstance(sample_interval, int | float)
            or not math.isfinite(sample_interval)
            or sample_interval <= 0
        ):
            raise InvalidSettingError("sample_interval", sample_interval, "a finite number of seconds > 0")
        for setting, value in (("history_size", history_size), ("reservoir_size", reservoir_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 10:
                raise InvalidSettingError(setting, value, "an integer >= 10")
        if (
            isinstance(max_operation_names, bool)
            or not isinstance(max_operation_names, int)
            or max_operation_names < 1
        ):
            raise InvalidSettingError("max_operation_names", max_operation_names, "an integer >= 1")
        for setting, switch in (
            ("enable_profiling", enable_profiling),
            ("collect_library_operations", collect_library_operations),
        ):
            if not isinstance(switch, bool):  # "no" is truthy: it switched the feature on
                raise InvalidSettingError(setting, switch, "True or False")
        if not callable(clock):
            raise InvalidSettingError("clock", clock, "a function returning monotonic seconds")
        if thresholds is not None and not isinstance(thresholds, PerformanceThresholds):
            raise InvalidSettingError("thresholds", thresholds, "a PerformanceThresholds or None")
        self._thresholds = thresholds or PerformanceThresholds()
        self.sample_interval = float(sample_interval)
        """Seconds between background samples."""
        self.enable_profiling = enable_profiling
        """Whether timed blocks are profiled."""
        self.history_size = history_size
        """Length of the recent-operation and sample ring buffers."""
        self.reservoir_size = reservoir_size
        """Latency values kept per operation for percentiles."""
        self.collect_library_operations = collect_library_operations
        """Whether the running monitor counts the library's instrumented operations."""
        self.max_operation_names = max_operation_names
        """Distinct operation names kept; further ones are counted under :attr:`OVERFLOW_OPERATION`."""

        self._lock = threading.Lock()
        self._clock = clock
        self._created = clock()  # on the monotonic clock: uptime and throughput are durations
        self._operations: dict[str, LatencyReservoir] = {}
        # (monotonic time, whether it succeeded) of the accepted operations: a flood of rejected calls
        # (bad input) must not push the failures out of the error rate's evidence
        self._recent: deque[tuple[float, bool]] = deque(maxlen=history_size)
        # successes of the library's hot path (_record_success), counted at the next read, record or _FOLD_AT
        self._queued: deque[tuple[str, float, float]] = deque()
        # (monotonic time, the error as shown): the window judges the first, the user reads the second's date
        self._recent_errors: deque[tuple[float, dict[str, Any]]] = deque(maxlen=_MAX_RECENT_ERRORS)
        self._recent_rejections: deque[dict[str, Any]] = deque(maxlen=_MAX_RECENT_ERRORS)
        self._samples: deque[SystemSample] = deque(maxlen=history_size)
        self._tokens: dict[str, list[int]] = {}  # operation -> [calls, input tokens, output tokens]
        self._overflow_warned = False
        self._sampling_errors = 0
        self._sampling_error: Exception | None = None  # the last attempt's failure (None: it sampled)
        self._sample_event: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._process: Any = None
        self._process_pid = 0  # the process _process was made in (a forked child makes its own)
        self._cpu_read_at = 0.0  # time.monotonic() of the latest read of the CPU counter
        self._cpu_percent = 0.0  # the figure of that read
        self.profiler = BlockProfiler()
        """Profiles the timed blocks when ``enable_profiling`` is set."""

    @property
    def thresholds(self) -> PerformanceThresholds:
        """Limits for the health score and recommendations; assign new ones to change them."""
        return self._thresholds

    @thresholds.setter
    def thresholds(self, thresholds: PerformanceThresholds) -> None:
        if not isinstance(thresholds, PerformanceThresholds):  # else every read failed later
            raise InvalidSettingError("thresholds", thresholds, "a PerformanceThresholds")
        self._thresholds = thresholds

    # ------------------------------------------------------------------------------------- lifecycle

    @property
    def is_monitoring(self) -> bool:
        """Whether :meth:`start_monitoring` was called and :meth:`stop_monitoring` not yet."""
        return self._task is not None

    @property
    def sampler_alive(self) -> bool:
        """Whether the background sampler is running.

        False if it was never started, has died, or its event loop was closed under it.
        """
        return task_alive(self._task)

    async def start_monitoring(self) -> None:
        """Take a first sample, start the background sampler and join the library-operation registry.

        Calling it again while running does nothing; after the sampler died it is restarted.
        """
        if self.sampler_alive:
            return
        if self._task is not None:  # the sampler died (or its loop closed): collect it before a new one
            await self._discard_task()
        self._sample_event = asyncio.Event()
        self._take_sample(lag_s=0.0)
        self._task = asyncio.create_task(self._sample_loop(), name="PerformanceMonitor.sampler")
        if self.collect_library_operations:
            registry.join(self)

    async def stop_monitoring(self) -> None:
        """Stop the sampler (cancelled and awaited) and leave the registry. Idempotent."""
        registry.leave(self)
        await self._discard_task()

    async def _discard_task(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task, owner="performance monitor sampler")

    async def __aenter__(self) -> PerformanceMonitor:
        await self.start_monitoring()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop_monitoring()

    async def wait_for_sample(self) -> SystemSample:
        """Wait until the background sampler records its next sample and return it.

        Returns after the sampler's next attempt (about ``sample_interval``): its sample, or the error
        when psutil could not read the process then.

        Raises:
            LifecycleError: The monitor is not running, or it stopped before its next sample.
            MonitoringError: The sampler's next attempt failed (psutil raised: permissions, a platform
                it does not support); the sampler keeps trying, and the error's ``__cause__`` is psutil's.
        """
        event, sampler = self._sample_event, self._task
        if event is None or sampler is None or not task_alive(sampler):
            raise LifecycleError("the monitor is not running: await start_monitoring() first")
        event.clear()
        sampled = asyncio.ensure_future(event.wait())
        try:  # the sampler ending (stop_monitoring) ends the wait too: no sample would come
            done, _ = await asyncio.wait([sampled, sampler], return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(sampled, owner="wait for a sample")
        # whether this wait saw the event set, not whether it is set now: another waiter that began
        # since has cleared it
        if sampled not in done:
            raise LifecycleError("the monitor stopped before its next sample")
        error = self._sampling_error
        if error is not None:
            raise MonitoringError(
                f"the performance monitor could not sample the process ({type(error).__name__}: {error}); "
                f"{self._sampling_errors} samples failed so far and the sampler keeps trying. Check that "
                "psutil can read this process (permissions, platform); sample_now() returns None "
                "meanwhile"
            ) from error
        return self._samples[-1]

    async def _sample_loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.sample_interval
        while True:
            expected = loop.time() + interval
            await asyncio.sleep(interval)
            self._take_sample(lag_s=max(0.0, loop.time() - expected))

    def sample_now(self) -> SystemSample | None:
        """Take a sample of RSS and CPU now (without a lag figure) and return it (None if psutil failed)."""
        return self._samples[-1] if self._take_sample(lag_s=0.0) else None

    def _take_sample(self, lag_s: float) -> bool:
        try:
            process = self._process
            # a forked worker (gunicorn --preload, multiprocessing) samples itself, not its parent
            now = time.monotonic()
            if process is None or self._process_pid != os.getpid():
                import psutil  # lazily: keeps `import context_manager` light

                process = psutil.Process()
                # the first figure: the CPU use since the process started (a read right after priming
                # the counter measures a few microseconds)
                times = process.cpu_times()
                lifetime = max(time.time() - process.create_time(), _MIN_CPU_SPAN_S)
                cpu = (times.user + times.system) / lifetime * 100.0
                process.cpu_percent(None)  # primes the counter for the next sample
                self._process, self._process_pid = process, os.getpid()
            elif now - self._cpu_read_at < _MIN_CPU_SPAN_S:  # too soon for a figure that means anything
                cpu = self._cpu_percent
                now = self._cpu_read_at  # the next read measures from the previous one
            else:
                cpu = process.cpu_percent(None)
            rss = process.memory_info().rss  # two reads: cheaper than process.oneshot() for two figures
            # what is left of the ticks' rounding: no process uses more than every logical CPU
            cpu = min(cpu, 100.0 * (os.cpu_count() or 1))
            self._cpu_read_at, self._cpu_percent = now, cpu
        except Exception as error:  # psutil can fail (permissions, exotic platforms): keep sampling
            self._sampling_errors += 1
            self._sampling_error = error
            logger.debug("performance monitor could not sample the process", exc_info=True)
            self._signal_sample()  # a waiter learns that no sample came
            return False
        self._sampling_error = None
        self._samples.append(SystemSample(time.time(), rss / 1048576.0, cpu, lag_s * 1000.0, self._clock()))
        self._signal_sample()
        return True

    def _signal_sample(self) -> None:
        """Wake ``wait_for_sample()`` on the sampler's loop, also when a worker thread took the sample.

        An ``asyncio.Event`` set off its loop wakes nobody (and raises in debug mode).
        """
        event, sampler = self._sample_event, self._task
        if event is None:
            return
        loop = None if sampler is None else sampler.get_loop()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or running is loop:
            event.set()
        elif not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed meanwhile: nobody waits there any more
                loop.call_soon_threadsafe(event.set)

    # ------------------------------------------------------------------------------------- recording

    def record_operation(
        self,
        name: str,
        duration_s: float,
        success: bool = True,
        *,
        error: BaseException | str | None = None,
        rejected: bool | None = None,
    ) -> None:
        """Record one operation.

        Args:
            name: The operation's name (a non-empty string of valid Unicode text): a kind of work such as
                ``"fetch_user"``, not one carrying an id (past ``max_operation_names`` names, see
                :attr:`OVERFLOW_OPERATION`).
            duration_s: How long it took, in seconds (from 0 to 1e12, about 31,700 years).
            success: Whether it succeeded: ``True`` or ``False`` (a numpy bool too).
            error: For a failure, the exception or a description, kept in the recent errors (or the
                recent rejections).
            rejected: Whether the call was refused for the caller's bad input (HTTP's 4xx) rather than
                failed (5xx): counted apart, outside the error rate and the latency figures. ``None``:
                when it failed with one of :attr:`CLIENT_ERRORS` (an ``InvalidArgumentError``, a
                ``NotFoundError`` ...).

        Raises:
            InvalidMetricError: ``name``, ``duration_s``, ``success`` or ``rejected`` is invalid, or
                ``rejected`` is True for a success (nothing is recorded).
        """
        check_operation_name(name)
        if success is not True and success is not False:
            if type(success).__module__ != "numpy" or type(success).__name__ not in ("bool", "bool_"):
                raise InvalidMetricError("success", success, "True or False")  # "no" is truthy
            success = bool(success)
        valid = (
            isinstance(duration_s, numbers.Real)  # numpy's floats too; not Decimal, str or bool
            and not isinstance(duration_s, bool)
            and 0.0 <= duration_s <= _MAX_DURATION_S  # False for NaN; 10**400 is compared exactly
        )
        if not valid:
            raise InvalidMetricError("duration_s", duration_s, _DURATION)
        duration_s = float(duration_s)
        if rejected is None:
            rejected = not success and isinstance(error, CLIENT_ERRORS)
        elif rejected is not True and rejected is not False:
            raise InvalidMetricError("rejected", rejected, "True, False or None")
        elif rejected and success:
            raise InvalidMetricError("rejected", rejected, "False or None for a success (success=True)")
        now, wall = self._clock(), time.time()
        with self._lock:
            self._fold_locked()  # the queued successes first: the recent-operation buffer is a time line
            if rejected:
                self._reservoir(name).reject()
                self._recent_rejections.append(
                    {
                        "operation": name,
                        "error_type": type(error).__name__ if isinstance(error, BaseException) else None,
                        "message": _describe_error(error),
                        "timestamp": wall,
                    }
                )
                return
            self._reservoir(name).add(duration_s, success, now)
            self._recent.append((now, success))
            if not success:
                self._recent_errors.append(
                    (
                        now,
                        {
                            "operation": name,
                            "error_type": type(error).__name__ if isinstance(error, BaseException) else None,
                            "message": _describe_error(error),
                            "timestamp": wall,
                        },
                    )
                )

    def _record_success(self, name: str, duration_s: float) -> None:
        """:meth:`record_operation` of a success, for the library's hot paths (``add_message``).

        No argument check (the caller passes its own name and a ``perf_counter`` difference) and no lock:
        the success is queued (``deque.append`` is atomic) and counted at the next read of the monitor,
        the next :meth:`record_operation`, or once :data:`_FOLD_AT` are queued. About a fifth of the cost.
        """
        queued = self._queued
        queued.append((name, duration_s, self._clock()))
        if len(queued) >= _FOLD_AT:
            with self._lock:
                self._fold_locked()

    def _fold_locked(self) -> None:
        """Count the queued successes (call with the lock held: only this pops the queue)."""
        queued, operations, recent = self._queued, self._operations, self._recent
        while queued:
            name, duration_s, now = queued.popleft()
            (operations.get(name) or self._reservoir(name)).add(duration_s, True, now)
            recent.append((now, True))

    def _reservoir(self, name: str) -> LatencyReservoir:
        """The latency reservoir of operation ``name``, created on its first record (call with the lock).

        Past ``max_operation_names`` names, the overflow bucket's.
        """
        reservoir = self._operations.get(name)
        if reservoir is None:
            name = self._kept_name(name, self._operations)
            reservoir = self._operations.get(name)
            if reservoir is None:
                reservoir = self._operations[name] = LatencyReservoir(self.reservoir_size, seed=len(name))
        return reservoir

    def _kept_name(self, name: str, table: dict[str, Any]) -> str:
        """Return ``name``, or :attr:`OVERFLOW_OPERATION` once ``table`` is full (call with the lock).

        Full: ``table`` holds ``max_operation_names`` names and not this one. The first fold logs a warning.
        """
        overflow = self.OVERFLOW_OPERATION
        if name in table or len(table) - (overflow in table) < self.max_operation_names:
            return name
        if not self._overflow_warned:
            self._overflow_warned = True
            logger.warning(
                "performance monitor: more than %d distinct operation names (max_operation_names); "
                "records of further names, first %r, are counted under %r. Name kinds of work "
                "('fetch_user'), not instances (a user id, a URL), or raise max_operation_names.",
                self.max_operation_names,
                name,
                overflow,
            )
        return overflow

    def record_token_usage(self, name: str, input_tokens: int, output_tokens: int) -> None:
        """Record the tokens one model call cost (e.g. an LLM summary: operation ``"summarize"``).

        Args:
            name: The operation's name (a non-empty string of valid Unicode text).
            input_tokens: Prompt tokens billed (an integer from 0 to 2**63 - 1).
            output_tokens: Completion tokens billed (an integer from 0 to 2**63 - 1).

        Raises:
            InvalidMetricError: a bad name or count (nothing is recorded).
        """
        check_operation_name(name)
        for field, value in (("input_tokens", input_tokens), ("output_tokens", output_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_TOKENS:
                raise InvalidMetricError(field, value, f"an integer from 0 to {_MAX_TOKENS}")
        with self._lock:
            totals = self._tokens.setdefault(self._kept_name(name, self._tokens), [0, 0, 0])
            totals[0] += 1
            totals[1] += input_tokens
            totals[2] += output_tokens

    def token_usage(self) -> dict[str, dict[str, int]]:
        """Tokens recorded with :meth:`record_token_usage`, per operation.

        Each value has ``calls``, ``input_tokens``, ``output_tokens`` and ``total_tokens``.
        """
        with self._lock:
            return {
                name: {
                    "calls": calls,
                    "input_tokens": input_tokens,
                    "output_tokens": output_tokens,
                    "total_tokens": input_tokens + output_tokens,
                }
                for name, (calls, input_tokens, output_tokens) in self._tokens.items()
            }

    def operation_timer(self, name: str) -> OperationTimer:
        """Return a timer for a block: ``with monitor.operation_timer("x"):`` or ``async with``.

        Raises:
            InvalidMetricError: ``name`` is not a non-empty string of valid Unicode text.
        """
        check_operation_name(name)
        return OperationTimer(self, name)

    def reset(self) -> None:
        """Forget every recorded operation, error, sample and profile (settings stay)."""
        with self._lock:
            self._queued.clear()
            self._operations.clear()
            self._recent.clear()
            self._recent_errors.clear()
            self._recent_rejections.clear()
            self._samples.clear()
            self._tokens.clear()
            self._overflow_warned = False
            self._sampling_errors = 0
            self._sampling_error = None
            self._created = self._clock()
        self.profiler.reset()

    # ------------------------------------------------------------------------------------- profiling

    def hottest_functions(self, limit: int = HOTTEST_FUNCTIONS_SHOWN) -> list[dict[str, Any]]:
        """Return the functions that took the most own time inside timed blocks (needs profiling).

        At most ``limit`` (an integer >= 0) entries. Each has ``function`` (``file:line(name)``),
        ``calls``, ``own_time_ms``, ``cumulative_time_ms``, ``share`` (own time / all profiled own time)
        and ``waiting`` (``True`` for a built-in that waits rather than works, such as the event loop's
        selector while an awaited block waits for I/O: never the subject of a recommendation).

        Raises:
            InvalidArgumentError: ``limit`` is not an integer >= 0.
        """
        return self.profiler.hottest_functions(limit)

    # -------------------------------------------------------------------------------------- reading

    def operation_stats(self) -> dict[str, OperationStats]:
        """Return per-operation figures keyed by operation name."""
        with self._lock:  # copied under the lock, computed outside it (a scrape never makes records wait)
            self._fold_locked()
            kept = [(name, reservoir.figures()) for name, reservoir in self._operations.items()]
        return {name: figures_stats(name, figures) for name, figures in kept}

    def recent_errors(self) -> list[dict[str, Any]]:
        """Return the latest failures (operation, error_type, message, timestamp), oldest first.

        At most 50; a message longer than 1000 characters is kept shortened (``...<N chars>``).
        """
        with self._lock:
            return [error for _, error in self._recent_errors]

    def recent_rejections(self) -> list[dict[str, Any]]:
        """Return the latest calls rejected for bad input (as :meth:`recent_errors`), oldest first.

        Kept apart from the failures, so a client sending bad input cannot push them out. At most 50.
        """
        with self._lock:
            return list(self._recent_rejections)

    def recent_error_rate(self, window_s: float | None = None) -> tuple[float, int]:
        """Return (error rate, operation count) over the recent operations.

        Recent: recorded in the last ``window_s`` seconds (``None``: ``thresholds.recent_window_s``, 300 by
        default; ``math.inf``: any age), among the last ``history_size`` recorded. ``(0.0, 0)`` when none.
        Calls rejected for bad input (see :data:`CLIENT_ERRORS`) are not counted: they are not errors of
        the service.

        Raises:
            InvalidSettingError: ``window_s`` is not a number of seconds > 0.
        """
        if window_s is None:
            window_s = self.thresholds.recent_window_s
        elif (
            isinstance(window_s, bool)
            or not isinstance(window_s, numbers.Real)
            or math.isnan(window_s)
            or window_s <= 0
        ):
            raise InvalidSettingError("window_s", window_s, "a number of seconds > 0 (or None)")
        start = self._clock() - window_s
        count = failures = 0
        with self._lock:
            self._fold_locked()
            for timestamp, success in self._recent:
                if timestamp >= start:
                    count += 1
                    failures += not success
        return (failures / count if count else 0.0), count

    def samples(self) -> list[SystemSample]:
        """Return the recent system samples, oldest first."""
        return list(self._samples)

    def _latest_sample(self) -> SystemSample | None:
        """The latest sample; a new one when there is none or, without a running sampler, it is stale.

        Stale: ``sample_interval`` old. A monitor never started (a Prometheus collector of it registered)
        exported the figures of its first read for ever.
        """
        samples = self._samples
        if not samples or (
            self._clock() - samples[-1].monotonic >= self.sample_interval and not self.sampler_alive
        ):
            self._take_sample(lag_s=0.0)
        return samples[-1] if samples else None

    def _operations_per_second(self, now: float) -> float:
        window_start = now - _RATE_WINDOW_S
        with self._lock:
            self._fold_locked()
            buffer_full = len(self._recent) == self.history_size
            recent = [timestamp for timestamp, _ in self._recent if timestamp >= window_start]
        if not recent:
            return 0.0
        if buffer_full and len(recent) == self.history_size:
            elapsed = now - recent[0]  # the ring buffer spans less than the window: rate over its span
        else:
            elapsed = now - max(window_start, self._created)
        return len(recent) / elapsed if elapsed > 0 else 0.0

    def get_current_metrics(self) -> PerformanceMetrics:
        """Return a :class:`PerformanceMetrics` snapshot.

        It takes a sample first if none exists yet or, while the background sampler is not running (the
        monitor was never started, or stopped), if the latest is ``sample_interval`` old.
        """
        now = self._clock()
        sample = self._latest_sample()
        with self._lock:  # copied under the lock, computed outside: a scrape never makes records wait
            self._fold_locked()
            figures = [reservoir.figures() for reservoir in self._operations.values()]
        overall = overall_stats(figures)
        return PerformanceMetrics(
            total_operations=overall.count,
            successes=overall.successes,
            failures=overall.failures,
            error_rate=overall.error_rate,
            operations_per_second=self._operations_per_second(now),
            avg_latency_ms=overall.avg_ms,
            p50_latency_ms=overall.p50_ms,
            p95_latency_ms=overall.p95_ms,
            p99_latency_ms=overall.p99_ms,
            rejected=overall.rejected,
            memory_usage_mb=sample.rss_mb if sample else 0.0,
            cpu_percent=sample.cpu_percent if sample else 0.0,
            event_loop_lag_ms=sample.event_loop_lag_ms if sample else 0.0,
            health_score=self.health_score(),
            timestamp=time.time(),
        )

    def _evidence(self) -> rules.Evidence:
        error_rate, recent_count = self.recent_error_rate()
        # the hottest function that works: time an awaited block spent waiting (in the selector) is not
        # something to optimise
        hottest = (
            [entry for entry in self.hottest_functions() if not entry["waiting"]][:1]
            if self.enable_profiling
            else []
        )
        failure = self._sampling_error
        window_start = self._clock() - self.thresholds.recent_window_s  # what the rate and the rules count
        samples = list(self._samples)
        judged_samples, growth_samples = self._outside_warm_ups(samples)
        with self._lock:  # the slow-operation rule judges the latencies of the window too: copied here,
            self._fold_locked()  # judged outside the lock
            rings = [(name, reservoir.recent()) for name, reservoir in self._operations.items()]
            errors = [error for at, error in self._recent_errors if at >= window_start]
        judged = (recent_stats(name, ring, window_start) for name, ring in rings)
        return rules.Evidence(
            recent_error_rate=error_rate,
            recent_count=recent_count,
            recent_errors=errors,
            operation_stats=[stats for stats in judged if stats.count],
            samples=samples,
            recent_samples=[sample for sample in judged_samples if sample.monotonic >= window_start],
            growth_samples=growth_samples,
            hottest_function=hottest[0] if hottest else None,
            sampling_failure=None if failure is None else f"{type(failure).__name__}: {failure}",
            sampling_errors=self._sampling_errors,
            recent_window_s=self.thresholds.recent_window_s,
        )

    def _outside_warm_ups(self, samples: list[SystemSample]) -> tuple[list[SystemSample], list[SystemSample]]:
        """The samples the rules judge, leaving out the process's one-time warm-ups (:mod:`.warmup`).

        Returns the samples none of whose span (from the sample before it or from when the sampler's sleep
        before it began, whichever is earlier) overlaps a warm-up, for the lag and CPU rules; and those
        taken after the latest warm-up ended, for the memory-growth rule (none while one runs: the memory
        it loads is not growth). Compared on the monotonic clock (the samples' ``monotonic``; the spans'
        ``time.monotonic()`` moved onto a ``clock`` of the monitor's own by its offset now): a step of the
        wall clock moves neither.
        """
        if not samples:
            return samples, samples
        offset = 0.0 if self._clock is time.monotonic else self._clock() - time.monotonic()
        oldest = samples[0].monotonic - self.sample_interval - samples[0].event_loop_lag_ms / 1000.0
        spans = [
            (span.started + offset, None if span.ended is None else span.ended + offset)
            for span in warm_ups()
            if span.ended is None or span.ended + offset >= oldest
        ]
        if not spans:  # none, or all over before the history
            return samples, samples
        judged = []
        previous: float | None = None
        for sample in samples:
            # its lag: since the sampler's sleep began; its CPU: since the sample before. A sample_now()
            # between a warm-up and the sampler's late sample shortens the second only (that late
            # sample's lag was judged)
            start = sample.monotonic - self.sample_interval - sample.event_loop_lag_ms / 1000.0
            if previous is not None:
                start = min(start, previous)
            if not any(
                started <= sample.monotonic and (ended is None or ended >= start) for started, ended in spans
            ):
                judged.append(sample)
            previous = sample.monotonic
        endings = [ended for _, ended in spans]
        if None in endings:
            return judged, []
        settled = max(ended for ended in endings if ended is not None)
        return judged, [sample for sample in samples if sample.monotonic > settled]

    def health_score(self) -> float:
        """Return health in [0, 1] from the recorded data (see :func:`rules.health_score`).

        The product of: ``1 - recent error rate`` (of the operations in the last
        ``thresholds.recent_window_s`` seconds, from ``min_operations`` of them on; 1.0 before);
        ``max(0.5, limit / p95)`` for the slowest operation over ``slow_operation_ms`` (its p95 in that
        window, among those recorded ``min_operations`` times in it); ``max(0.5, limit / lag)`` for
        event-loop lag over ``event_loop_lag_ms``; 0.9 for mean CPU over ``cpu_percent``; 0.8 for RSS over
        ``memory_limit_mb``.
        """
        return rules.health_score(self.thresholds, self._evidence())

    def recommendations(self) -> list[str]:
        """Return advice derived from the data by explicit rules (see :func:`rules.recommendations`).

        Errors, slow operations, a blocked event loop, high CPU, memory growth, a memory limit and,
        with profiling, a hot function; an empty list when all is well.
        """
        return rules.recommendations(self.thresholds, self._evidence())

    def get_performance_summary(self) -> dict[str, Any]:
        """Return a summary dict.

        Keys: ``health_score``, ``recommendations`` (list of str), ``metrics`` (the current metrics as a
        dict), ``operations`` (name -> per-operation stats dict), ``system`` (memory, CPU, lag, samples),
        ``recent_errors``, ``recent_rejections`` (calls refused for bad input), ``token_usage``
        (operation -> tokens, see :meth:`token_usage`) and ``profile``
        (``enabled``, ``hottest_functions``).
        """
        metrics = self.get_current_metrics()
        samples = list(self._samples)
        return {
            "health_score": metrics.health_score,
            "recommendations": self.recommendations(),
            "metrics": asdict(metrics),
            "operations": {name: asdict(stats) for name, stats in self.operation_stats().items()},
            "system": {
                "memory_usage_mb": metrics.memory_usage_mb,
                "peak_memory_mb": max((sample.rss_mb for sample in samples), default=0.0),
                "cpu_percent": metrics.cpu_percent,
                "avg_cpu_percent": (
                    sum(sample.cpu_percent for sample in samples) / len(samples) if samples else 0.0
                ),
                "event_loop_lag_ms": metrics.event_loop_lag_ms,
                "max_event_loop_lag_ms": max((sample.event_loop_lag_ms for sample in samples), default=0.0),
                "samples": len(samples),
                "sampling_errors": self._sampling_errors,
                "sample_interval": self.sample_interval,
                "monitoring": self.is_monitoring,
                "uptime_s": self._clock() - self._created,
            },
            "recent_errors": self.recent_errors(),
            "recent_rejections": self.recent_rejections(),
            "token_usage": self.token_usage(),
            "profile": {
                "enabled": self.enable_profiling,
                "hottest_functions": self.hottest_functions() if self.enable_profiling else [],
                "skipped_blocks": self.profiler.skipped,
            },
        }

    def prometheus_collector(self, namespace: str = "context_manager") -> PrometheusCollector:
        """Return a Prometheus collector exposing this monitor's figures (needs the ``prometheus`` extra).

        A registry takes one collector per namespace: for several monitors in one registry, use one
        ``PrometheusCollector({"a": monitor_a, "b": monitor_b})`` (a label per monitor).

        Raises:
            InvalidSettingError: ``namespace`` is not a valid start of a metric name
                (``[a-zA-Z_:][a-zA-Z0-9_:]*``).
            MissingDependencyError: ``prometheus_client`` is not installed.
        """
        return PrometheusCollector(self, namespace=namespace)


def _describe_error(error: BaseException | str | None) -> str | None:
    """The error's text for the recent errors, shortened to :data:`_MAX_ERROR_TEXT` characters."""
    if error is None:
        return None
    if isinstance(error, BaseException):
        text = str(error)
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    else:
        text = str(error)
    if len(text) > _MAX_ERROR_TEXT:  # an exception quoting a large payload: keep its start, not the payload
        suffix = f"...<{len(text)} chars>"
        text = text[: _MAX_ERROR_TEXT - len(suffix)] + suffix
    return text
