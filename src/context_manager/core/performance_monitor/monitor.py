"""Performance monitoring: operation timings, percentiles, system samples, health score, advice.

A :class:`PerformanceMonitor` records operations (name, duration, success) in bounded structures
(ring buffers and fixed-size latency reservoirs) and, while started, samples the process's resident
memory, CPU use and the event loop's lag in one background task it owns::

    monitor = PerformanceMonitor(sample_interval=0.1)
    await monitor.start_monitoring()
    with monitor.operation_timer("parse"):
        parse(document)
    metrics = monitor.get_current_metrics()        # PerformanceMetrics
    summary = monitor.get_performance_summary()    # dict with health_score and recommendations
    await monitor.stop_monitoring()

How library operations reach monitors
-------------------------------------
The library's instrumented operations (``EnhancedContextManager.add_message``, ``search_memory``,
``execute_tool``) call :func:`record_library_operation`, which fans each operation out to

* every *running* monitor created with ``collect_library_operations=True`` (the default): a monitor
  joins a process-wide registry in :meth:`PerformanceMonitor.start_monitoring` and leaves it in
  :meth:`PerformanceMonitor.stop_monitoring`, so a monitor you start observes every context manager in
  the process while it runs, and costs nothing once stopped;
* the context manager's own monitor (``context_manager.performance_monitor``, created when
  ``enable_performance_monitor`` is set), which is not in the registry and sees only that manager.

Your own code can use the same path with the :func:`monitored_operation` decorator or by calling
:func:`record_library_operation`.

Health score and recommendations
--------------------------------
Both are computed from the recorded data by explicit rules with the limits in
:class:`PerformanceThresholds` (see :meth:`PerformanceMonitor.health_score` and
:meth:`PerformanceMonitor.recommendations`).

Prometheus export (``pip install 'python-context-manager[prometheus]'``)::

    from prometheus_client import REGISTRY
    REGISTRY.register(monitor.prometheus_collector())
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from context_manager.core.errors import InvalidMetricError, InvalidSettingError, MissingDependencyError

if TYPE_CHECKING:
    import cProfile

__all__ = [
    "OperationStats",
    "OperationTimer",
    "PerformanceMetrics",
    "PerformanceMonitor",
    "PerformanceThresholds",
    "PrometheusCollector",
    "SystemSample",
    "monitored_operation",
    "record_library_operation",
    "running_monitors",
]

logger = logging.getLogger(__name__)

_P = ParamSpec("_P")
_R = TypeVar("_R")

_DEFAULT_RESERVOIR_SIZE = 1024
_RATE_WINDOW_S = 60.0
_MAX_RECENT_ERRORS = 50
_PROFILE_TOP = 10


# --------------------------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class PerformanceThresholds:
    """The limits the health score and the recommendation rules compare the data with.

    Example::

        PerformanceMonitor(thresholds=PerformanceThresholds(slow_operation_ms=250.0))
    """

    error_rate: float = 0.05
    """Recent error rate (failures / operations in the recent window) above which errors are reported."""
    min_operations: int = 10
    """The error-rate rule needs at least this many recent operations (avoids 1-of-2 alarms)."""
    slow_operation_ms: float = 1000.0
    """An operation whose p95 latency exceeds this is reported as slow."""
    event_loop_lag_ms: float = 100.0
    """Event-loop lag (how late a timer fires) above this means something blocks the loop."""
    cpu_percent: float = 85.0
    """Mean CPU use of the process (percent of one core) above this is reported."""
    min_cpu_samples: int = 3
    """The CPU rule needs at least this many samples."""
    memory_growth_mb: float = 200.0
    """Growth of resident memory over the sampled history above this is reported."""
    memory_limit_mb: float | None = None
    """Resident memory above this is reported; ``None`` disables the rule."""
    hot_function_share: float = 0.5
    """With profiling, a function taking more than this share of profiled time is reported."""


@dataclass(slots=True)
class PerformanceMetrics:
    """A snapshot of the monitor's figures (``get_current_metrics()``)."""

    total_operations: int
    """Operations recorded since the monitor was created (or reset)."""
    successes: int
    """Operations that succeeded."""
    failures: int
    """Operations that failed."""
    error_rate: float
    """``failures / total_operations`` over the monitor's lifetime (0.0 without operations)."""
    operations_per_second: float
    """Throughput over the last 60 s (or since creation when younger)."""
    avg_latency_ms: float
    """Mean duration of all operations in milliseconds (exact)."""
    p50_latency_ms: float
    """Median duration in milliseconds (exact up to the reservoir size, then a uniform sample)."""
    p95_latency_ms: float
    """95th percentile duration in milliseconds."""
    p99_latency_ms: float
    """99th percentile duration in milliseconds."""
    memory_usage_mb: float
    """Resident memory (RSS) of the process at the latest sample, in MiB."""
    cpu_percent: float
    """CPU use of the process at the latest sample, in percent of one core."""
    event_loop_lag_ms: float
    """How late the sampler's last timer fired, in milliseconds (0.0 before the first sample)."""
    health_score: float
    """Health in [0, 1] computed by :meth:`PerformanceMonitor.health_score`."""
    timestamp: float
    """When the snapshot was taken (``time.time()``)."""


@dataclass(slots=True)
class OperationStats:
    """Figures for one operation name (the per-operation part of the performance summary)."""

    name: str
    """The operation's name."""
    count: int
    """How many times it was recorded."""
    successes: int
    """How many of those succeeded."""
    failures: int
    """How many failed."""
    error_rate: float
    """``failures / count``."""
    avg_ms: float
    """Mean duration in milliseconds (exact)."""
    min_ms: float
    """Shortest duration in milliseconds (exact)."""
    max_ms: float
    """Longest duration in milliseconds (exact)."""
    p50_ms: float
    """Median duration in milliseconds."""
    p95_ms: float
    """95th percentile duration in milliseconds."""
    p99_ms: float
    """99th percentile duration in milliseconds."""


@dataclass(frozen=True, slots=True)
class SystemSample:
    """One sample taken by the background sampler."""

    timestamp: float
    """When it was taken (``time.time()``)."""
    rss_mb: float
    """Resident memory of the process in MiB."""
    cpu_percent: float
    """CPU use of the process since the previous sample, in percent of one core."""
    event_loop_lag_ms: float
    """How late the sampler's timer fired, in milliseconds."""


# ------------------------------------------------------------------------------------- bounded stores


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Return the ``fraction`` quantile of ascending values by linear interpolation (numpy's default).

    Returns 0.0 for an empty list.
    """
    if not sorted_values:
        return 0.0
    position = (len(sorted_values) - 1) * fraction
    lower = math.floor(position)
    upper = min(lower + 1, len(sorted_values) - 1)
    weight = position - lower
    return sorted_values[lower] + (sorted_values[upper] - sorted_values[lower]) * weight


class _LatencyReservoir:
    """A uniform random sample of at most ``capacity`` values (Vitter's algorithm R) plus exact totals.

    Up to ``capacity`` values the percentiles are exact; beyond, they are estimated from a uniform
    sample of everything seen, in constant memory.
    """

    __slots__ = ("_random", "_sorted", "capacity", "count", "failures", "max", "min", "total", "values")

    def __init__(self, capacity: int, seed: int) -> None:
        self.capacity = capacity
        self.values: list[float] = []
        self.count = 0
        self.failures = 0
        self.total = 0.0
        self.min = math.inf
        self.max = 0.0
        self._random = random.Random(seed)
        self._sorted: list[float] | None = None

    def add(self, value: float, success: bool) -> None:
        self.count += 1
        if not success:
            self.failures += 1
        self.total += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        if len(self.values) < self.capacity:
            self.values.append(value)
        else:
            slot = int(self._random.random() * self.count)  # uniform in [0, count); cheaper than randrange
            if slot >= self.capacity:
                return
            self.values[slot] = value
        self._sorted = None

    def quantiles(self, *fractions: float) -> list[float]:
        if self._sorted is None:
            self._sorted = sorted(self.values)
        return [percentile(self._sorted, fraction) for fraction in fractions]

    def stats(self, name: str) -> OperationStats:
        p50, p95, p99 = self.quantiles(0.5, 0.95, 0.99)
        count = self.count
        return OperationStats(
            name=name,
            count=count,
            successes=count - self.failures,
            failures=self.failures,
            error_rate=self.failures / count if count else 0.0,
            avg_ms=self.total / count * 1000.0 if count else 0.0,
            min_ms=self.min * 1000.0 if count else 0.0,
            max_ms=self.max * 1000.0,
            p50_ms=p50 * 1000.0,
            p95_ms=p95 * 1000.0,
            p99_ms=p99 * 1000.0,
        )


# ----------------------------------------------------------------------------------- registry/fan-out

_registry_lock = threading.Lock()
_running: tuple[PerformanceMonitor, ...] = ()


def running_monitors() -> tuple[PerformanceMonitor, ...]:
    """Return the running monitors that collect library operations (a snapshot)."""
    return _running


def record_library_operation(
    name: str,
    duration_s: float,
    success: bool,
    *,
    own_monitor: PerformanceMonitor | None = None,
    error: BaseException | str | None = None,
) -> None:
    """Record one library operation in every running monitor and in ``own_monitor``.

    Args:
        name: The operation's name, e.g. ``"add_message"``.
        duration_s: How long it took, in seconds.
        success: Whether it succeeded.
        own_monitor: A component's own monitor (e.g. ``context_manager.performance_monitor``); it is
            recorded once even if it is also running and collecting library operations.
        error: The exception (or its description) when the operation failed.
    """
    monitors = _running
    for monitor in monitors:
        monitor.record_operation(name, duration_s, success, error=error)
    if own_monitor is not None and own_monitor not in monitors:
        own_monitor.record_operation(name, duration_s, success, error=error)


def monitored_operation(
    name: str, *, succeeded: Callable[[Any], bool] | None = None
) -> Callable[[Callable[_P, Awaitable[_R]]], Callable[_P, Awaitable[_R]]]:
    """Decorate an async method so each call is recorded by :func:`record_library_operation`.

    The instance's ``performance_monitor`` attribute (when present and not ``None``) is passed as
    ``own_monitor``. An exception counts as a failure and propagates.

    Args:
        name: The operation's name in the monitors.
        succeeded: Decides success from the return value (e.g. ``lambda result: result.success`` for a
            tool result); without it, returning normally is a success.

    Example::

        class Service:
            @monitored_operation("lookup")
            async def lookup(self, key: str) -> str: ...
    """

    def decorate(function: Callable[_P, Awaitable[_R]]) -> Callable[_P, Awaitable[_R]]:
        @functools.wraps(function)
        async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            own = getattr(args[0], "performance_monitor", None) if args else None
            if own is not None and not isinstance(own, PerformanceMonitor):
                own = None
            if own is None and not _running:
                return await function(*args, **kwargs)
            start = time.perf_counter()
            try:
                result = await function(*args, **kwargs)
            except BaseException as error:
                record_library_operation(
                    name, time.perf_counter() - start, False, own_monitor=own, error=error
                )
                raise
            success = True if succeeded is None else bool(succeeded(result))
            error_text = None if success else f"{name} reported failure"
            record_library_operation(
                name, time.perf_counter() - start, success, own_monitor=own, error=error_text
            )
            return result

        return wrapper

    return decorate


# ------------------------------------------------------------------------------------------ the timer


class OperationTimer:
    """Times a block with ``with`` or ``async with``; records it in its monitor on exit.

    An exception inside the block records a failure (with the exception) and propagates. After the
    block, :attr:`duration_s` holds the measured time.
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
            self._profiling = self._monitor._profile_enter()
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
            self._monitor._profile_exit()
            self._profiling = False
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


# ---------------------------------------------------------------------------------------- the monitor


class PerformanceMonitor:
    """Records operation timings and samples process resources; computes health and advice.

    Args:
        sample_interval: Seconds between background samples of RSS, CPU and event-loop lag (> 0).
        enable_profiling: Profile the code run inside :meth:`operation_timer` blocks with ``cProfile``;
            the summary then names the hottest functions. Costs time: use while investigating.
        history_size: Length of the ring buffers of recent operations and system samples (>= 10).
        reservoir_size: Latency values kept per operation for percentiles (>= 10); exact below it.
        thresholds: The limits used by the health score and the recommendation rules.
        collect_library_operations: While running, also count the library's instrumented operations
            (see the module docstring). ``EnhancedContextManager`` creates its own monitor with False.

    Raises:
        InvalidSettingError: A setting is out of range.

    Recording is thread-safe; ``start_monitoring`` must be awaited in the event loop to be sampled.
    """

    def __init__(
        self,
        sample_interval: float = 1.0,
        enable_profiling: bool = False,
        history_size: int = 1000,
        *,
        reservoir_size: int = _DEFAULT_RESERVOIR_SIZE,
        thresholds: PerformanceThresholds | None = None,
        collect_library_operations: bool = True,
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
        if thresholds is not None and not isinstance(thresholds, PerformanceThresholds):
            raise InvalidSettingError("thresholds", thresholds, "a PerformanceThresholds or None")
        self.sample_interval = float(sample_interval)
        """Seconds between background samples."""
        self.enable_profiling = bool(enable_profiling)
        """Whether timed blocks are profiled."""
        self.history_size = history_size
        """Length of the recent-operation and sample ring buffers."""
        self.reservoir_size = reservoir_size
        """Latency values kept per operation for percentiles."""
        self.thresholds = thresholds or PerformanceThresholds()
        """Limits for the health score and recommendations."""
        self.collect_library_operations = collect_library_operations
        """Whether the running monitor counts the library's instrumented operations."""

        self._lock = threading.Lock()
        self._created = time.time()
        self._operations: dict[str, _LatencyReservoir] = {}
        self._recent: deque[tuple[float, bool]] = deque(maxlen=history_size)
        self._recent_errors: deque[dict[str, Any]] = deque(maxlen=_MAX_RECENT_ERRORS)
        self._samples: deque[SystemSample] = deque(maxlen=history_size)
        self._sampling_errors = 0
        self._sample_event: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._process: Any = None
        self._profiler: cProfile.Profile | None = None
        self._profile_depth = 0
        self._profile_thread: int | None = None
        self._profile_skipped = 0

    # ------------------------------------------------------------------------------------- lifecycle

    @property
    def is_monitoring(self) -> bool:
        """Whether :meth:`start_monitoring` was called and :meth:`stop_monitoring` not yet."""
        return self._task is not None

    @property
    def sampler_alive(self) -> bool:
        """Whether the background sampler is running (False if it was never started or has died)."""
        return self._task is not None and not self._task.done()

    async def start_monitoring(self) -> None:
        """Take a first sample, start the background sampler and join the library-operation registry.

        Calling it again while running does nothing; after the sampler died it is restarted.
        """
        global _running
        if self.sampler_alive:
            return
        if self._task is not None:  # the sampler died: collect it before starting a new one
            await self._discard_task()
        self._sample_event = asyncio.Event()
        self._take_sample(lag_s=0.0)
        self._task = asyncio.create_task(self._sample_loop(), name="PerformanceMonitor.sampler")
        if self.collect_library_operations:
            with _registry_lock:
                if self not in _running:
                    _running = (*_running, self)

    async def stop_monitoring(self) -> None:
        """Stop the sampler (cancelled and awaited) and leave the registry. Idempotent."""
        global _running
        with _registry_lock:
            _running = tuple(monitor for monitor in _running if monitor is not self)
        await self._discard_task()

    async def _discard_task(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
        except Exception:  # the sampler died earlier; already logged
            logger.debug("performance monitor sampler had failed", exc_info=True)

    async def __aenter__(self) -> PerformanceMonitor:
        await self.start_monitoring()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop_monitoring()

    async def wait_for_sample(self) -> SystemSample:
        """Wait until the background sampler records its next sample and return it.

        Raises:
            RuntimeError: The monitor is not running.
        """
        if self._sample_event is None or not self.sampler_alive:
            raise RuntimeError("the monitor is not running: await start_monitoring() first")
        self._sample_event.clear()
        await self._sample_event.wait()
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
            if process is None:
                import psutil  # lazily: keeps `import context_manager` light

                process = self._process = psutil.Process()
                process.cpu_percent(None)  # the first call only primes the counter
            rss = process.memory_info().rss  # two reads: cheaper than process.oneshot() for two figures
            cpu = process.cpu_percent(None)
        except Exception:  # psutil can fail (permissions, exotic platforms): keep sampling
            self._sampling_errors += 1
            logger.debug("performance monitor could not sample the process", exc_info=True)
            return False
        self._samples.append(SystemSample(time.time(), rss / 1048576.0, cpu, lag_s * 1000.0))
        if self._sample_event is not None:
            self._sample_event.set()
        return True

    # ------------------------------------------------------------------------------------- recording

    def record_operation(
        self, name: str, duration_s: float, success: bool = True, *, error: BaseException | str | None = None
    ) -> None:
        """Record one operation.

        Args:
            name: The operation's name (a non-empty string).
            duration_s: How long it took, in seconds (finite, >= 0).
            success: Whether it succeeded.
            error: For a failure, the exception or a description, kept in the recent errors.

        Raises:
            InvalidMetricError: ``name`` or ``duration_s`` is invalid (nothing is recorded).
        """
        if type(name) is not str or not name:
            raise InvalidMetricError("name", name, "a non-empty string")
        try:
            valid = 0.0 <= duration_s < math.inf  # False for NaN and infinities
        except TypeError:
            valid = False
        if not valid:
            raise InvalidMetricError("duration_s", duration_s, "a finite number of seconds >= 0")
        now = time.time()
        with self._lock:
            reservoir = self._operations.get(name)
            if reservoir is None:
                reservoir = self._operations[name] = _LatencyReservoir(self.reservoir_size, seed=len(name))
            reservoir.add(duration_s, success)
            self._recent.append((now, success))
            if not success:
                self._recent_errors.append(
                    {
                        "operation": name,
                        "error_type": type(error).__name__ if isinstance(error, BaseException) else None,
                        "message": _describe_error(error),
                        "timestamp": now,
                    }
                )

    def operation_timer(self, name: str) -> OperationTimer:
        """Return a timer for a block: ``with monitor.operation_timer("x"):`` or ``async with``.

        Raises:
            InvalidMetricError: ``name`` is not a non-empty string.
        """
        if type(name) is not str or not name:
            raise InvalidMetricError("name", name, "a non-empty string")
        return OperationTimer(self, name)

    def reset(self) -> None:
        """Forget every recorded operation, error, sample and profile (settings stay)."""
        with self._lock:
            self._operations.clear()
            self._recent.clear()
            self._recent_errors.clear()
            self._samples.clear()
            self._created = time.time()
            if self._profile_depth == 0:
                self._profiler = None

    # ------------------------------------------------------------------------------------- profiling

    def _profile_enter(self) -> bool:
        """Start (or nest into) profiling on this thread; False if it cannot profile here."""
        thread = threading.get_ident()
        with self._lock:
            if self._profile_depth and self._profile_thread != thread:
                self._profile_skipped += 1
                return False
            if self._profile_depth == 0:
                import cProfile

                if self._profiler is None:
                    self._profiler = cProfile.Profile()
                try:
                    self._profiler.enable()
                except ValueError:  # another profiler is active on this thread
                    self._profile_skipped += 1
                    return False
                self._profile_thread = thread
            self._profile_depth += 1
            return True

    def _profile_exit(self) -> None:
        with self._lock:
            self._profile_depth -= 1
            if self._profile_depth == 0 and self._profiler is not None:
                self._profiler.disable()
                self._profile_thread = None

    def hottest_functions(self, limit: int = _PROFILE_TOP) -> list[dict[str, Any]]:
        """Return the functions that took the most own time inside timed blocks (needs profiling).

        Each entry has ``function`` (``file:line(name)``), ``calls``, ``own_time_ms``,
        ``cumulative_time_ms`` and ``share`` (own time / all profiled own time).
        """
        with self._lock:
            profiler = self._profiler
            if profiler is None or self._profile_depth:
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
            }
            for filename, line, function, calls, own, cumulative in rows[:limit]
        ]

    # -------------------------------------------------------------------------------------- reading

    def operation_stats(self) -> dict[str, OperationStats]:
        """Return per-operation figures keyed by operation name."""
        with self._lock:
            return {name: reservoir.stats(name) for name, reservoir in self._operations.items()}

    def recent_errors(self) -> list[dict[str, Any]]:
        """Return the latest failures (operation, error_type, message, timestamp), oldest first."""
        with self._lock:
            return list(self._recent_errors)

    def recent_error_rate(self) -> tuple[float, int]:
        """Return (error rate, operation count) over the ring buffer of recent operations."""
        with self._lock:
            count = len(self._recent)
            failures = sum(1 for _, success in self._recent if not success)
        return (failures / count if count else 0.0), count

    def samples(self) -> list[SystemSample]:
        """Return the recent system samples, oldest first."""
        return list(self._samples)

    def _latest_sample(self) -> SystemSample | None:
        if not self._samples:
            self._take_sample(lag_s=0.0)
        return self._samples[-1] if self._samples else None

    def _operations_per_second(self, now: float) -> float:
        window_start = now - _RATE_WINDOW_S
        with self._lock:
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
        """Return a :class:`PerformanceMetrics` snapshot (takes a sample first if none exists yet)."""
        now = time.time()
        sample = self._latest_sample()
        with self._lock:
            overall = _overall_stats(list(self._operations.values()))
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
            memory_usage_mb=sample.rss_mb if sample else 0.0,
            cpu_percent=sample.cpu_percent if sample else 0.0,
            event_loop_lag_ms=sample.event_loop_lag_ms if sample else 0.0,
            health_score=self.health_score(),
            timestamp=now,
        )

    def health_score(self) -> float:
        """Return health in [0, 1], the product of these factors (1.0 when nothing is wrong).

        * ``1 - recent error rate``;
        * the slowest operation's p95 over ``slow_operation_ms``: ``max(0.5, limit / p95)``;
        * the recent maximum event-loop lag over ``event_loop_lag_ms``: ``max(0.5, limit / lag)``;
        * mean CPU over ``cpu_percent`` (with enough samples): 0.9;
        * RSS over ``memory_limit_mb`` (when set): 0.8.
        """
        limits = self.thresholds
        error_rate, _ = self.recent_error_rate()
        score = 1.0 - error_rate
        worst_p95 = max((stats.p95_ms for stats in self.operation_stats().values()), default=0.0)
        if worst_p95 > limits.slow_operation_ms:
            score *= max(0.5, limits.slow_operation_ms / worst_p95)
        samples = list(self._samples)
        max_lag = max((sample.event_loop_lag_ms for sample in samples), default=0.0)
        if max_lag > limits.event_loop_lag_ms:
            score *= max(0.5, limits.event_loop_lag_ms / max_lag) if max_lag > 0 else 0.5
        if len(samples) >= limits.min_cpu_samples:
            mean_cpu = sum(sample.cpu_percent for sample in samples) / len(samples)
            if mean_cpu > limits.cpu_percent:
                score *= 0.9
        if limits.memory_limit_mb is not None and samples and samples[-1].rss_mb > limits.memory_limit_mb:
            score *= 0.8
        return min(1.0, max(0.0, score))

    def recommendations(self) -> list[str]:
        """Return advice derived from the data by these rules (an empty list when all is well).

        1. *Errors*: the recent error rate exceeds ``error_rate`` over at least ``min_operations``.
        2. *Slow operation*: an operation's p95 exceeds ``slow_operation_ms`` (one line each).
        3. *Blocked event loop*: a recent sample's lag exceeds ``event_loop_lag_ms``.
        4. *High CPU*: the mean CPU of at least ``min_cpu_samples`` samples exceeds ``cpu_percent``.
        5. *Memory growth*: RSS grew by more than ``memory_growth_mb`` over the sampled history.
        6. *Memory limit*: the latest RSS exceeds ``memory_limit_mb``.
        7. *Hot function* (profiling): one function takes more than ``hot_function_share`` of the
           profiled own time.
        """
        limits = self.thresholds
        advice: list[str] = []
        error_rate, recent_count = self.recent_error_rate()
        if recent_count >= limits.min_operations and error_rate > limits.error_rate:
            failing: dict[str, int] = {}
            for error in self.recent_errors():
                failing[error["operation"]] = failing.get(error["operation"], 0) + 1
            worst = max(failing.items(), key=lambda item: item[1], default=None)
            where = f" (most recent failures: {worst[0]!r}, {worst[1]})" if worst else ""
            advice.append(
                f"Error rate is {error_rate:.1%} over the last {recent_count} operations{where}; "
                "check get_performance_summary()['recent_errors'] and fix the failing operation."
            )
        for stats in sorted(self.operation_stats().values(), key=lambda item: -item.p95_ms):
            if stats.p95_ms > limits.slow_operation_ms:
                advice.append(
                    f"Operation {stats.name!r} is slow: p95 {stats.p95_ms:.0f} ms > "
                    f"{limits.slow_operation_ms:.0f} ms; profile it (enable_profiling=True) or move "
                    "blocking work off the event loop."
                )
        samples = list(self._samples)
        max_lag = max((sample.event_loop_lag_ms for sample in samples), default=0.0)
        if max_lag > limits.event_loop_lag_ms:
            advice.append(
                f"Event loop lag reached {max_lag:.0f} ms (> {limits.event_loop_lag_ms:.0f} ms): something "
                "blocks the event loop; run blocking calls with asyncio.to_thread()."
            )
        if len(samples) >= limits.min_cpu_samples:
            mean_cpu = sum(sample.cpu_percent for sample in samples) / len(samples)
            if mean_cpu > limits.cpu_percent:
                advice.append(
                    f"CPU use averages {mean_cpu:.0f}% of one core (> {limits.cpu_percent:.0f}%): lower "
                    "max_concurrent_tasks or batch work."
                )
        if samples:
            growth = samples[-1].rss_mb - min(sample.rss_mb for sample in samples)
            if growth > limits.memory_growth_mb:
                advice.append(
                    f"Memory grew by {growth:.0f} MB over the sampled history (> "
                    f"{limits.memory_growth_mb:.0f} MB): run optimize_system() and cleanup_old_memories()."
                )
            if limits.memory_limit_mb is not None and samples[-1].rss_mb > limits.memory_limit_mb:
                advice.append(
                    f"Memory use {samples[-1].rss_mb:.0f} MB exceeds the limit of "
                    f"{limits.memory_limit_mb:.0f} MB: reduce short_term_memory_size or max_tokens."
                )
        if self.enable_profiling:
            hottest = self.hottest_functions(limit=1)
            if hottest and hottest[0]["share"] > limits.hot_function_share:
                advice.append(
                    f"{hottest[0]['function']} takes {hottest[0]['share']:.0%} of the profiled time in "
                    "timed operations: optimise it first."
                )
        return advice

    def get_performance_summary(self) -> dict[str, Any]:
        """Return a summary dict.

        Keys: ``health_score``, ``recommendations`` (list of str), ``metrics`` (the current metrics as a
        dict), ``operations`` (name -> per-operation stats dict), ``system`` (memory, CPU, lag, samples),
        ``recent_errors`` and ``profile`` (``enabled``, ``hottest_functions``).
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
                "uptime_s": time.time() - self._created,
            },
            "recent_errors": self.recent_errors(),
            "profile": {
                "enabled": self.enable_profiling,
                "hottest_functions": self.hottest_functions() if self.enable_profiling else [],
                "skipped_blocks": self._profile_skipped,
            },
        }

    def prometheus_collector(self, namespace: str = "context_manager") -> PrometheusCollector:
        """Return a Prometheus collector exposing this monitor's figures (needs the ``prometheus`` extra).

        Raises:
            MissingDependencyError: ``prometheus_client`` is not installed.
        """
        return PrometheusCollector(self, namespace=namespace)


def _overall_stats(reservoirs: list[_LatencyReservoir]) -> OperationStats:
    """Figures over every operation, from the per-operation reservoirs (no second reservoir to feed).

    Totals are exact. Percentiles are exact while every reservoir holds all its values; beyond, each
    kept value stands for ``count / kept`` operations of its kind (a weighted quantile).
    """
    count = sum(reservoir.count for reservoir in reservoirs)
    failures = sum(reservoir.failures for reservoir in reservoirs)
    total = sum(reservoir.total for reservoir in reservoirs)
    if all(reservoir.count == len(reservoir.values) for reservoir in reservoirs):
        ordered = sorted(value for reservoir in reservoirs for value in reservoir.values)
        p50, p95, p99 = (percentile(ordered, fraction) for fraction in (0.5, 0.95, 0.99))
    else:
        p50, p95, p99 = _weighted_quantiles(reservoirs, (0.5, 0.95, 0.99))
    return OperationStats(
        name="all",
        count=count,
        successes=count - failures,
        failures=failures,
        error_rate=failures / count if count else 0.0,
        avg_ms=total / count * 1000.0 if count else 0.0,
        min_ms=min((reservoir.min for reservoir in reservoirs), default=0.0) * 1000.0,
        max_ms=max((reservoir.max for reservoir in reservoirs), default=0.0) * 1000.0,
        p50_ms=p50 * 1000.0,
        p95_ms=p95 * 1000.0,
        p99_ms=p99 * 1000.0,
    )


def _weighted_quantiles(reservoirs: list[_LatencyReservoir], fractions: tuple[float, ...]) -> list[float]:
    weighted = sorted(
        (value, reservoir.count / len(reservoir.values))
        for reservoir in reservoirs
        if reservoir.values
        for value in reservoir.values
    )
    total_weight = sum(weight for _, weight in weighted)
    results = []
    for fraction in fractions:
        target = fraction * total_weight
        cumulative = 0.0
        chosen = weighted[-1][0]
        for value, weight in weighted:
            cumulative += weight
            if cumulative >= target:
                chosen = value
                break
        results.append(chosen)
    return results


def _describe_error(error: BaseException | str | None) -> str | None:
    if error is None:
        return None
    if isinstance(error, BaseException):
        text = str(error)
        return f"{type(error).__name__}: {text}" if text else type(error).__name__
    return str(error)


# ---------------------------------------------------------------------------------------- prometheus


class PrometheusCollector:
    """A ``prometheus_client`` collector for a :class:`PerformanceMonitor` (the same figures).

    Register it with ``registry.register(collector)``. Metrics (prefix ``namespace``):
    ``_operations_total{operation,outcome}``, ``_operation_latency_seconds{operation,quantile}``,
    ``_error_rate``, ``_operations_per_second``, ``_memory_usage_bytes``, ``_cpu_percent``,
    ``_event_loop_lag_seconds`` and ``_health_score``.

    Args:
        monitor: The monitor whose figures are exported.
        namespace: Prefix of every metric name.

    Raises:
        MissingDependencyError: ``prometheus_client`` is not installed.
    """

    def __init__(self, monitor: PerformanceMonitor, namespace: str = "context_manager") -> None:
        try:
            import prometheus_client.core as families
        except ImportError:
            raise MissingDependencyError("prometheus_collector", "prometheus-client", "prometheus") from None
        self.monitor = monitor
        """The monitor whose figures are exported."""
        self.namespace = namespace
        """Prefix of every metric name."""
        self._families: Any = families

    def collect(self) -> Iterator[Any]:
        """Yield the metric families (called by the Prometheus registry on each scrape)."""
        families = self._families
        prefix = self.namespace
        metrics = self.monitor.get_current_metrics()
        operations = families.CounterMetricFamily(
            f"{prefix}_operations", "Operations recorded, by outcome.", labels=["operation", "outcome"]
        )
        latency = families.GaugeMetricFamily(
            f"{prefix}_operation_latency_seconds",
            "Operation latency quantiles.",
            labels=["operation", "quantile"],
        )
        for name, stats in self.monitor.operation_stats().items():
            operations.add_metric([name, "success"], stats.successes)
            operations.add_metric([name, "failure"], stats.failures)
            for quantile, value_ms in (("0.5", stats.p50_ms), ("0.95", stats.p95_ms), ("0.99", stats.p99_ms)):
                latency.add_metric([name, quantile], value_ms / 1000.0)
        yield operations
        yield latency
        for suffix, documentation, value in (
            ("error_rate", "Failures / operations over the monitor's lifetime.", metrics.error_rate),
            ("operations_per_second", "Throughput over the last minute.", metrics.operations_per_second),
            ("memory_usage_bytes", "Resident memory of the process.", metrics.memory_usage_mb * 1048576.0),
            ("cpu_percent", "CPU use of the process, percent of one core.", metrics.cpu_percent),
            (
                "event_loop_lag_seconds",
                "How late the sampler's timer fired.",
                metrics.event_loop_lag_ms / 1e3,
            ),
            ("health_score", "Health score in [0, 1].", metrics.health_score),
        ):
            yield families.GaugeMetricFamily(f"{prefix}_{suffix}", documentation, value=value)
