"""The health score and the recommendation rules: pure functions of the recorded data and the limits.

:class:`PerformanceMonitor` gathers the data (recent error rate, per-operation figures, system samples,
the hottest profiled function) and calls :func:`health_score` and :func:`recommendations`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from context_manager.core.performance_monitor.metrics import (
    OperationStats,
    PerformanceThresholds,
    SystemSample,
)

__all__ = ["Evidence", "describe_window", "health_score", "recommendations"]


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the rules look at (a snapshot taken by the monitor)."""

    recent_error_rate: float
    """Failures / operations among the recent operations (those of the error window)."""
    recent_count: int
    """Operations in the error window (at most the ring buffer's length)."""
    recent_errors: Sequence[dict[str, Any]]
    """The latest failures of the error window (each with an ``operation`` key), oldest first."""
    operation_stats: Iterable[OperationStats]
    """Per-operation figures of the recent window (the slow-operation rule's)."""
    samples: Sequence[SystemSample]
    """The system samples of the history, oldest first (the memory-growth rule's)."""
    hottest_function: dict[str, Any] | None = None
    """With profiling, the function with the most own time (``function`` and ``share`` keys)."""
    sampling_failure: str | None = None
    """Why the sampler's latest attempt failed (``"AccessDenied: ..."``); ``None`` when it sampled."""
    sampling_errors: int = 0
    """How many sampling attempts failed since the monitor was created."""
    recent_window_s: float = math.inf
    """The seconds the recent operations span at most (``PerformanceThresholds.recent_window_s``)."""
    recent_samples: Sequence[SystemSample] | None = None
    """The samples of that window, oldest first (the lag and CPU rules'); ``None``: all ``samples``."""
    growth_samples: Sequence[SystemSample] | None = None
    """The samples the memory-growth rule compares, oldest first; ``None``: all ``samples``. (The
    monitor passes those taken since the latest one-time warm-up, :mod:`context_manager.core.warmup`.)"""

    @property
    def judged_samples(self) -> Sequence[SystemSample]:
        """The samples the lag and CPU rules judge."""
        return self.samples if self.recent_samples is None else self.recent_samples


def describe_window(window_s: float) -> str:
    """``" (in the last 300 s)"`` for a window of 300 s; ``""`` for an infinite one."""
    return f" (in the last {window_s:g} s)" if math.isfinite(window_s) else ""


def health_score(limits: PerformanceThresholds, evidence: Evidence) -> float:
    """Return health in [0, 1], the product of these factors (1.0 when nothing is wrong).

    * ``1 - recent error rate`` (the operations of the last ``recent_window_s`` seconds), once they are
      at least ``min_operations`` (as for the error advice and the health checker's ``error_rate``
      check: before, one failure of one operation would read 0.0);
    * the slowest operation's recent p95 over ``slow_operation_ms``: ``max(0.5, limit / p95)``, among
      the operations recorded at least ``min_operations`` times in the window (one slow call is not a
      slow operation);
    * the recent maximum event-loop lag (the samples of the window) over ``event_loop_lag_ms``:
      ``max(0.5, limit / lag)``;
    * the recent mean CPU over ``cpu_percent`` (with enough samples in the window): 0.9;
    * the latest RSS over ``memory_limit_mb`` (when set): 0.8.
    """
    samples, recent = evidence.samples, evidence.judged_samples
    score = 1.0 - evidence.recent_error_rate if evidence.recent_count >= limits.min_operations else 1.0
    judged = [stats.p95_ms for stats in evidence.operation_stats if stats.count >= limits.min_operations]
    worst_p95 = max(judged, default=0.0)
    if worst_p95 > limits.slow_operation_ms:
        score *= max(0.5, limits.slow_operation_ms / worst_p95)
    max_lag = max((sample.event_loop_lag_ms for sample in recent), default=0.0)
    if max_lag > limits.event_loop_lag_ms:
        score *= max(0.5, limits.event_loop_lag_ms / max_lag) if max_lag > 0 else 0.5
    if len(recent) >= limits.min_cpu_samples:
        mean_cpu = sum(sample.cpu_percent for sample in recent) / len(recent)
        if mean_cpu > limits.cpu_percent:
            score *= 0.9
    if limits.memory_limit_mb is not None and samples and samples[-1].rss_mb > limits.memory_limit_mb:
        score *= 0.8
    return min(1.0, max(0.0, score))


def recommendations(limits: PerformanceThresholds, evidence: Evidence) -> list[str]:
    """Return advice derived from the data by these rules (an empty list when all is well).

    *Recent* is the last ``recent_window_s`` seconds (``Evidence.recent_window_s``).

    1. *Errors*: the recent error rate exceeds ``error_rate`` over at least ``min_operations``.
    2. *Slow operation*: an operation recorded at least ``min_operations`` times recently has a recent
       p95 over ``slow_operation_ms`` (one line each).
    3. *Blocked event loop*: a recent sample's lag exceeds ``event_loop_lag_ms``.
    4. *High CPU*: the mean CPU of at least ``min_cpu_samples`` recent samples exceeds ``cpu_percent``.
    5. *Memory growth*: RSS grew by more than ``memory_growth_mb`` over the sampled history (the
       monitor's evidence: since the latest one-time warm-up, such as the embedding model's load).
    6. *Memory limit*: the latest RSS exceeds ``memory_limit_mb``.
    7. *Hot function* (profiling): one function takes more than ``hot_function_share`` of the
       profiled own time (waiting, such as the event loop's selector during an awaited block, is not
       such a function).
    8. *Sampling fails*: the sampler's latest attempt could not read the process (psutil failed), so
       the memory, CPU and event-loop figures are missing or out of date.
    """
    advice: list[str] = []
    error_rate, recent_count = evidence.recent_error_rate, evidence.recent_count
    if recent_count >= limits.min_operations and error_rate > limits.error_rate:
        failing: dict[str, int] = {}
        for error in evidence.recent_errors:
            failing[error["operation"]] = failing.get(error["operation"], 0) + 1
        worst = max(failing.items(), key=lambda item: item[1], default=None)
        where = f" (most recent failures: {worst[0]!r}, {worst[1]})" if worst else ""
        advice.append(
            f"Error rate is {error_rate:.1%} over the last {recent_count} operations"
            f"{describe_window(evidence.recent_window_s)}{where}; "
            "check get_performance_summary()['recent_errors'] and fix the failing operation."
        )
    window = describe_window(evidence.recent_window_s)
    for stats in sorted(evidence.operation_stats, key=lambda item: -item.p95_ms):
        if stats.p95_ms > limits.slow_operation_ms and stats.count >= limits.min_operations:
            advice.append(
                f"Operation {stats.name!r} is slow: p95 {stats.p95_ms:.0f} ms > "
                f"{limits.slow_operation_ms:.0f} ms{window}; profile it (enable_profiling=True) or move "
                "blocking work off the event loop."
            )
    samples, recent = evidence.samples, evidence.judged_samples
    max_lag = max((sample.event_loop_lag_ms for sample in recent), default=0.0)
    if max_lag > limits.event_loop_lag_ms:
        advice.append(
            f"Event loop lag reached {max_lag:.0f} ms{window} (> {limits.event_loop_lag_ms:.0f} ms): "
            "something blocks the event loop; run blocking calls with asyncio.to_thread()."
        )
    if len(recent) >= limits.min_cpu_samples:
        mean_cpu = sum(sample.cpu_percent for sample in recent) / len(recent)
        if mean_cpu > limits.cpu_percent:
            advice.append(
                f"CPU use averages {mean_cpu:.0f}% of one core{window} (> {limits.cpu_percent:.0f}%): "
                "lower max_concurrent_tasks or batch work."
            )
    compared = samples if evidence.growth_samples is None else evidence.growth_samples
    if compared:
        growth = compared[-1].rss_mb - min(sample.rss_mb for sample in compared)
        if growth > limits.memory_growth_mb:
            advice.append(
                f"Memory grew by {growth:.0f} MB over the sampled history (> "
                f"{limits.memory_growth_mb:.0f} MB): run optimize_system() and cleanup_old_memories()."
            )
    if samples and limits.memory_limit_mb is not None and samples[-1].rss_mb > limits.memory_limit_mb:
        advice.append(
            f"Memory use {samples[-1].rss_mb:.0f} MB exceeds the limit of "
            f"{limits.memory_limit_mb:.0f} MB: reduce short_term_memory_size or max_tokens."
        )
    hottest = evidence.hottest_function
    if hottest is not None and hottest["share"] > limits.hot_function_share:
        advice.append(
            f"{hottest['function']} takes {hottest['share']:.0%} of the profiled time in "
            "timed operations: optimise it first."
        )
    if evidence.sampling_failure is not None:
        advice.append(
            f"The sampler cannot read this process ({evidence.sampling_failure}; "
            f"{evidence.sampling_errors} samples failed): memory, CPU and event-loop figures are missing "
            "or out of date. Check that psutil may read it (permissions, /proc mounted with hidepid)."
        )
    return advice
