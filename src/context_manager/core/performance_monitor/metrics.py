"""The monitor's value objects: thresholds, a metrics snapshot, per-operation figures, a system sample."""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass, fields
from typing import Any

from context_manager.core.errors import InvalidSettingError

__all__ = ["OperationStats", "PerformanceMetrics", "PerformanceThresholds", "SystemSample"]


def _cpu_percent_allowed() -> str:
    cpus = os.cpu_count() or 1
    return (
        f"a percentage of one core from 0 to {100 * cpus} ({cpus} logical CPUs here; psutil's process "
        "CPU use: 85 is 85 % of one core, 150 one and a half cores)"
    )


@dataclass(frozen=True, slots=True)
class PerformanceThresholds:
    """The limits the health score and the recommendation rules compare the data with.

    Example::

        PerformanceMonitor(thresholds=PerformanceThresholds(slow_operation_ms=250.0))
    """

    error_rate: float = 0.05
    """Recent error rate (failures / operations in the recent window, 0 to 1) above which errors are
    reported."""
    min_operations: int = 10
    """The error-rate rule and the health score's error factor need at least this many recent operations
    (avoids 1-of-2 alarms: until then failures are reported in ``recent_errors`` but not judged), and
    the slow-operation rule judges an operation once it was recorded this many times (one slow call,
    a cold start, is not a slow operation)."""
    slow_operation_ms: float = 1000.0
    """An operation whose p95 latency exceeds this is reported as slow (from ``min_operations`` calls)."""
    event_loop_lag_ms: float = 100.0
    """Event-loop lag (how late a timer fires) above this means something blocks the loop."""
    cpu_percent: float = 85.0
    """Mean CPU use of the process (percent of one core, as psutil measures it: 250 is two and a half
    cores busy) above this is reported; from 0 to 100 x the machine's logical CPUs (beyond, it never
    fires)."""
    min_cpu_samples: int = 3
    """The CPU rule needs at least this many samples."""
    memory_growth_mb: float = 200.0
    """Growth of resident memory over the sampled history above this (>= 0) is reported."""
    memory_limit_mb: float | None = None
    """Resident memory above this (>= 0) is reported; ``None`` disables the rule."""
    hot_function_share: float = 0.5
    """With profiling, a function taking more than this share (0 to 1) of profiled time is reported."""
    recent_window_s: float = 300.0
    """What *recent* means to the rules, in seconds (> 0): the error rate counts the operations of the
    last this many seconds, among the last ``history_size`` recorded (1,000 by default), and the
    event-loop lag and CPU rules judge the samples of that span. Failures or a blocked moment older
    than this no longer lower the score, and a quiet service with fewer than ``min_operations``
    operations in it is not judged on its error rate. ``math.inf``: the whole history, whatever its
    age. (The memory-growth rule always looks at the whole sampled history.)"""

    def __post_init__(self) -> None:
        """Check the limits' types at once (a bad one failed later, inside every health score).

        Raises:
            InvalidSettingError: a limit is not a number (an integer for the counts; a bool is neither),
                is NaN, is negative (a negative limit fires at every read, or divides by zero), is a
                fraction outside 0 to 1 (``error_rate``, ``hot_function_share``: 5 meant as 5 % would
                never fire), ``cpu_percent`` is above 100 x this machine's logical CPUs (it would never
                fire), or ``recent_window_s`` is not > 0.
        """
        check_limits(
            self,
            integers=("min_operations", "min_cpu_samples"),
            non_negative=(
                "slow_operation_ms",
                "event_loop_lag_ms",
                "min_operations",
                "min_cpu_samples",
                "memory_growth_mb",
                "memory_limit_mb",
            ),
            fractions=("error_rate", "hot_function_share"),
            positive=("recent_window_s",),
            percentages=("cpu_percent",),
        )
        if self.cpu_percent > 100 * (os.cpu_count() or 1):  # psutil's figure never gets there
            raise InvalidSettingError("cpu_percent", self.cpu_percent, _cpu_percent_allowed())


def check_limits(
    limits: Any,
    *,
    integers: tuple[str, ...],
    non_negative: tuple[str, ...],
    fractions: tuple[str, ...] = (),
    positive: tuple[str, ...] = (),
    percentages: tuple[str, ...] = (),
) -> None:
    """Check every field of a thresholds dataclass.

    Each is a number (not NaN, not a bool), or ``None`` where the default is ``None``; an integer for
    ``integers``; >= 0 for ``non_negative`` and ``percentages`` (CPU, of one core: the caller checks the
    top); > 0 for ``positive``; from 0 to 1 for ``fractions``.
    numpy's numbers count as numbers (and are kept as Python's ``int`` and ``float``, so the limits
    stay JSON-safe).

    Raises:
        InvalidSettingError: the first field that is not.
    """
    for item in fields(limits):
        value = getattr(limits, item.name)
        if value is None and item.default is None:
            continue
        integer = item.name in integers
        fraction = item.name in fractions
        allowed = "an integer" if integer else "a number"
        percentage = item.name in percentages
        if percentage:
            allowed = _cpu_percent_allowed()
        elif fraction:
            allowed += " from 0 to 1 (a fraction: 0.05 is 5 %)"
        elif item.name in non_negative:
            allowed += " >= 0"
        elif item.name in positive:
            allowed += " > 0"
        if item.default is None:
            allowed += " or None"
        kinds = numbers.Integral if integer else numbers.Real  # numpy's numbers too
        valid = isinstance(value, kinds) and not isinstance(value, bool) and not math.isnan(value)
        if (
            not valid
            or ((item.name in non_negative or percentage) and value < 0)
            or (item.name in positive and value <= 0)
            or (fraction and not 0 <= value <= 1)
        ):
            raise InvalidSettingError(item.name, value, allowed)
        if type(value) is not int and type(value) is not float:  # numpy.int64(5): kept as 5
            normal = int(value) if isinstance(value, numbers.Integral) else float(value)
            object.__setattr__(limits, item.name, normal)


@dataclass(slots=True)
class PerformanceMetrics:
    """A snapshot of the monitor's figures (``get_current_metrics()``)."""

    total_operations: int
    """Operations recorded since the monitor was created (or reset): ``successes + failures + rejected``."""
    successes: int
    """Operations that succeeded."""
    failures: int
    """Operations that failed (the service's errors: HTTP's 5xx)."""
    error_rate: float
    """``failures / (successes + failures)`` over the monitor's lifetime (0.0 without such operations):
    rejected calls are not in it."""
    operations_per_second: float
    """Throughput over the last 60 s (or since creation when younger), of the operations accepted
    (``rejected`` ones not counted)."""
    avg_latency_ms: float
    """Mean duration of all operations in milliseconds (exact)."""
    p50_latency_ms: float
    """Median duration in milliseconds (exact up to the reservoir size, then a uniform sample)."""
    p95_latency_ms: float
    """95th percentile duration in milliseconds."""
    p99_latency_ms: float
    """99th percentile duration in milliseconds."""
    memory_usage_mb: float
    """Resident memory (RSS) of the process at the latest sample, in MiB (a monitor whose sampler is not
    running samples when the latest is ``sample_interval`` old)."""
    cpu_percent: float
    """CPU use of the process at the latest sample, in percent of one core."""
    event_loop_lag_ms: float
    """How late the sampler's last timer fired, in milliseconds (0.0 before the first sample)."""
    health_score: float
    """Health in [0, 1] computed by :meth:`PerformanceMonitor.health_score`."""
    timestamp: float
    """When the snapshot was taken (``time.time()``)."""
    rejected: int = 0
    """Operations refused for the caller's bad input (an invalid argument, an unknown id: HTTP's 4xx);
    not failures of the service, so not in ``error_rate`` nor in the latency figures."""


@dataclass(slots=True)
class OperationStats:
    """Figures for one operation name (the per-operation part of the performance summary)."""

    name: str
    """The operation's name."""
    count: int
    """How many times it was recorded: ``successes + failures + rejected``."""
    successes: int
    """How many of those succeeded."""
    failures: int
    """How many failed (the service's errors)."""
    error_rate: float
    """``failures / (successes + failures)`` (rejected calls are not in it)."""
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
    rejected: int = 0
    """How many were refused for the caller's bad input (not in ``error_rate`` nor the durations)."""


@dataclass(frozen=True, slots=True)
class SystemSample:
    """One sample taken by the background sampler."""

    timestamp: float
    """When it was taken (``time.time()``)."""
    rss_mb: float
    """Resident memory of the process in MiB."""
    cpu_percent: float
    """CPU use of the process since the previous sample, in percent of one core (at most 100 x the
    logical CPUs). The monitor's first sample: since the process started; a sample taken less than 50 ms
    after the previous read repeats its figure (the counter moves in 10 ms ticks: over a shorter span
    one tick read as hundreds of percent)."""
    event_loop_lag_ms: float
    """How late the sampler's timer fired, in milliseconds."""
    monotonic: float = 0.0
    """When it was taken on the monitor's monotonic clock (what its recent window is judged by: a step of
    the wall clock does not move it)."""
