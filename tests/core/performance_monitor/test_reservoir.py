"""Latency reservoir and percentiles (core/performance_monitor/reservoir.py)."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from context_manager.core.errors import InvalidArgumentError
from context_manager.core.performance_monitor import (
    PerformanceMetrics,
    PerformanceMonitor,
    percentile,
)

# ------------------------------------------------------------------------------------------- numbers


def test_percentiles_of_a_known_distribution_are_exact_below_the_reservoir_size() -> None:
    monitor = PerformanceMonitor(reservoir_size=2000)
    values = list(range(1, 1001))  # 1 .. 1000 ms
    random.Random(7).shuffle(values)
    for value in values:
        monitor.record_operation("op", value / 1000.0, True)
    metrics = monitor.get_current_metrics()
    # numpy's default linear interpolation: position (n - 1) * q
    assert metrics.p50_latency_ms == pytest.approx(500.5)
    assert metrics.p95_latency_ms == pytest.approx(950.05)
    assert metrics.p99_latency_ms == pytest.approx(990.01)
    assert metrics.avg_latency_ms == pytest.approx(500.5)
    stats = monitor.operation_stats()["op"]
    assert (stats.min_ms, stats.max_ms, stats.count) == (pytest.approx(1.0), pytest.approx(1000.0), 1000)


def test_percentiles_beyond_the_reservoir_are_a_close_uniform_sample() -> None:
    monitor = PerformanceMonitor(reservoir_size=512)
    values = list(range(20_000))
    random.Random(3).shuffle(values)
    for value in values:
        monitor.record_operation("op", value / 1000.0, True)
    stats = monitor.operation_stats()["op"]
    assert stats.count == 20_000
    assert stats.avg_ms == pytest.approx(9999.5)  # exact: kept as running totals
    assert stats.max_ms == pytest.approx(19_999.0)
    assert stats.p50_ms == pytest.approx(10_000, rel=0.08)
    assert stats.p95_ms == pytest.approx(19_000, rel=0.03)
    assert stats.p99_ms == pytest.approx(19_800, rel=0.02)


def test_overall_percentiles_weight_each_operation_by_its_count() -> None:
    monitor = PerformanceMonitor(reservoir_size=512)
    fast = list(range(30_000))  # 0 .. 30 s spread, 30,000 operations
    slow = list(range(30_000, 40_000))  # 30 .. 40 s, 10,000 operations
    for values in (fast, slow):
        random.Random(5).shuffle(values)
    for value in fast:
        monitor.record_operation("fast", value / 1000.0, True)
    for value in slow:
        monitor.record_operation("slow", value / 1000.0, True)
    metrics = monitor.get_current_metrics()
    assert metrics.total_operations == 40_000
    assert metrics.avg_latency_ms == pytest.approx(19_999.5)
    # the true quantiles of 0 .. 39,999 ms: 20,000 / 38,000 / 39,600
    assert metrics.p50_latency_ms == pytest.approx(20_000, rel=0.06)
    assert metrics.p95_latency_ms == pytest.approx(38_000, rel=0.02)
    assert metrics.p99_latency_ms == pytest.approx(39_600, rel=0.01)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=100.0), min_size=1, max_size=300))
def test_percentiles_are_ordered_and_within_range(durations: list[float]) -> None:
    monitor = PerformanceMonitor(reservoir_size=64, history_size=50)
    for duration in durations:
        monitor.record_operation("op", duration, True)
    stats = monitor.operation_stats()["op"]
    assert stats.min_ms - 1e-9 <= stats.p50_ms <= stats.p95_ms + 1e-9
    assert stats.p95_ms <= stats.p99_ms + 1e-9 <= stats.max_ms + 2e-9
    assert stats.count == len(durations)
    # bounded memory whatever the input size
    assert len(monitor._operations["op"].values) <= 64
    assert len(monitor._recent) <= 50


def test_percentile_helper_matches_linear_interpolation() -> None:
    assert percentile([], 0.5) == 0.0
    assert percentile([3.0], 0.99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 1.0) == 4.0


def test_counts_error_rate_and_throughput() -> None:
    monitor = PerformanceMonitor()
    for index in range(10):
        monitor.record_operation("op", 0.001, index % 5 != 0)
    metrics = monitor.get_current_metrics()
    assert isinstance(metrics, PerformanceMetrics)
    assert (metrics.total_operations, metrics.successes, metrics.failures) == (10, 8, 2)
    assert metrics.error_rate == pytest.approx(0.2)
    assert metrics.operations_per_second > 0
    assert metrics.memory_usage_mb > 1.0  # sampled on demand, even without start_monitoring()
    assert 0.0 <= metrics.health_score <= 1.0


def test_recording_from_many_threads_loses_nothing() -> None:
    monitor = PerformanceMonitor()

    def record() -> None:
        for _ in range(2000):
            monitor.record_operation("threaded", 0.0001, True)

    threads = [threading.Thread(target=record) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert monitor.get_current_metrics().total_operations == 8000


def test_reset_forgets_everything() -> None:
    monitor = PerformanceMonitor()
    monitor.record_operation("op", 0.01, False, error="boom")
    monitor.reset()
    assert monitor.get_current_metrics().total_operations == 0
    assert monitor.recent_errors() == []
    assert monitor.operation_stats() == {}


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan"), "0.5", True, None])
def test_percentile_refuses_a_fraction_outside_0_to_1(fraction: Any) -> None:
    """``percentile(values, -1)`` returned the median and ``percentile(values, 2)`` raised IndexError."""
    with pytest.raises(InvalidArgumentError, match=r"^fraction: got .*; allowed a number from 0 to 1"):
        percentile([1.0, 2.0, 3.0], fraction)
    assert percentile([1.0, 2.0, 3.0], 0) == 1.0 and percentile([1.0, 2.0, 3.0], 1) == 3.0


def test_percentile_takes_numpy_fractions() -> None:
    """numpy.float32(0.5) (or numpy.int64(1)) was refused as "not a number from 0 to 1"."""
    import numpy

    assert percentile([1.0, 2.0, 3.0], numpy.float32(0.5)) == 2.0
    assert percentile([1.0, 2.0, 3.0], numpy.int64(1)) == 3.0


def test_reading_the_figures_of_many_operations_does_not_make_records_wait() -> None:
    """``get_current_metrics()`` (every Prometheus scrape, ``get_system_status``) computed the overall
    percentiles under the monitor's lock, sorting every kept latency as (value, weight) pairs: with 200
    operation names (500 are kept) a read took 0.5 s, and every ``record_operation`` meanwhile (each
    failure, every call of the application's own) waited for it. The values are copied under the lock and
    the percentiles computed outside it, by bisection."""
    monitor = PerformanceMonitor()
    for name in range(200):
        for index in range(1030):  # past the reservoir's 1024: the weighted percentiles
            monitor.record_operation(f"tool_{name}", ((index * 7919) % 1000) / 1000.0, True)
    durations: list[float] = []
    done = threading.Event()

    def read() -> None:
        try:
            for _ in range(3):
                started = time.perf_counter()
                monitor.get_current_metrics()
                monitor.operation_stats()  # what a Prometheus scrape reads
                durations.append(time.perf_counter() - started)
        finally:
            done.set()

    reader = threading.Thread(target=read)
    reader.start()
    waits: list[float] = []
    while not done.is_set():
        started = time.perf_counter()
        monitor.record_operation("tool_1", 0.001, False, error="TimeoutError")  # takes the lock
        waits.append(time.perf_counter() - started)
        time.sleep(0.001)
    reader.join()
    assert len(durations) == 3
    assert max(waits) < 0.5 * sorted(durations)[1], (waits, durations)  # the whole read, before


def _reference_weighted_quantile(groups: list[tuple[list[float], int]], fraction: float) -> float:
    """Each kept value weighs count / kept of its operation: the first value (ascending) whose cumulative
    weight reaches ``fraction`` of the total."""
    weighted = sorted((value, count / len(values)) for values, count in groups for value in values)
    target = fraction * sum(weight for _, weight in weighted)
    cumulative = 0.0
    for value, weight in weighted:
        cumulative += weight
        if cumulative >= target:
            return value
    return weighted[-1][0]


def test_weighted_overall_percentiles_are_the_weighted_quantiles() -> None:
    from context_manager.core.performance_monitor.reservoir import ReservoirFigures, overall_stats

    generator = random.Random(11)
    for _ in range(30):
        groups = []
        for _ in range(generator.randint(1, 12)):
            values = [generator.uniform(0.0, 5.0) for _ in range(generator.randint(1, 40))]
            groups.append((values, len(values) * generator.randint(1, 50)))
        figures = [
            ReservoirFigures(count, 0, 0, sum(values), min(values), max(values), values)
            for values, count in groups
        ]
        stats = overall_stats(figures)
        for fraction, found in ((0.5, stats.p50_ms), (0.95, stats.p95_ms), (0.99, stats.p99_ms)):
            assert found == pytest.approx(_reference_weighted_quantile(groups, fraction) * 1000.0), fraction
