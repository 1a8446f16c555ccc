from __future__ import annotations

import asyncio
import math
import random
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from context_manager.core.errors import InvalidMetricError, InvalidSettingError
from context_manager.core.performance_monitor import (
    OperationStats,
    PerformanceMetrics,
    PerformanceMonitor,
    PerformanceThresholds,
    SystemSample,
    monitored_operation,
    percentile,
    record_library_operation,
    rules,
    running_monitors,
)
from tests.pending_tasks import DESTROYED_PENDING, run_leaving_leftovers

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


# ---------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("interval", [0, -1.0, math.nan, math.inf, True, "1"])
def test_invalid_sample_interval(interval: Any) -> None:
    with pytest.raises(InvalidSettingError, match=r"sample_interval: got .*; allowed a finite number"):
        PerformanceMonitor(sample_interval=interval)


@pytest.mark.parametrize(("setting", "value"), [("history_size", 5), ("reservoir_size", 2.5)])
def test_invalid_sizes(setting: str, value: Any) -> None:
    with pytest.raises(InvalidSettingError, match=rf"{setting}: got .*; allowed an integer >= 10"):
        PerformanceMonitor(**{setting: value})


def test_invalid_thresholds_object() -> None:
    with pytest.raises(InvalidSettingError, match="thresholds"):
        PerformanceMonitor(thresholds={"error_rate": 0.1})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "duration", "field"),
    [
        ("", 0.1, "name"),
        (None, 0.1, "name"),
        ("op", -0.1, "duration_s"),
        ("op", math.nan, "duration_s"),
        ("op", math.inf, "duration_s"),
        ("op", "fast", "duration_s"),
    ],
)
def test_invalid_record_leaves_the_monitor_unchanged(name: Any, duration: Any, field: str) -> None:
    monitor = PerformanceMonitor()
    monitor.record_operation("op", 0.5, True)
    with pytest.raises(InvalidMetricError, match=rf"{field}: got .*; allowed"):
        monitor.record_operation(name, duration, True)
    assert monitor.get_current_metrics().total_operations == 1
    with pytest.raises(InvalidMetricError, match="name"):
        monitor.operation_timer("")


# ---------------------------------------------------------------------------------------- the timer


async def test_operation_timer_with_and_async_with() -> None:
    monitor = PerformanceMonitor()
    with monitor.operation_timer("sync_block") as timer:
        time.sleep(0.002)  # noqa: ASYNC251 - a sync block being timed
    async with monitor.operation_timer("async_block") as async_timer:
        await asyncio.sleep(0)
    stats = monitor.operation_stats()
    assert stats["sync_block"].count == 1 and stats["sync_block"].successes == 1
    assert stats["sync_block"].min_ms >= 2.0
    assert timer.duration_s is not None and timer.duration_s >= 0.002
    assert stats["async_block"].count == 1 and async_timer.duration_s is not None


async def test_operation_timer_records_a_failure_and_propagates() -> None:
    monitor = PerformanceMonitor()
    with pytest.raises(KeyError, match="missing"), monitor.operation_timer("lookup"):
        raise KeyError("missing")
    with pytest.raises(ValueError, match="bad"):
        async with monitor.operation_timer("parse"):
            raise ValueError("bad")
    metrics = monitor.get_current_metrics()
    assert (metrics.total_operations, metrics.failures) == (2, 2)
    errors = monitor.recent_errors()
    assert [(e["operation"], e["error_type"]) for e in errors] == [
        ("lookup", "KeyError"),
        ("parse", "ValueError"),
    ]
    assert "bad" in errors[1]["message"]


# ------------------------------------------------------------------------------------------ sampling


async def test_sampler_records_memory_cpu_and_lag_and_stops_cleanly() -> None:
    monitor = PerformanceMonitor(sample_interval=0.01)
    await monitor.start_monitoring()
    assert monitor.is_monitoring and monitor.sampler_alive
    await monitor.start_monitoring()  # idempotent: still one sampler
    sample = await monitor.wait_for_sample()
    assert sample.rss_mb > 1.0 and sample.cpu_percent >= 0.0 and sample.event_loop_lag_ms >= 0.0
    metrics = monitor.get_current_metrics()
    assert metrics.memory_usage_mb > 1.0
    await monitor.stop_monitoring()
    await monitor.stop_monitoring()  # idempotent
    assert not monitor.is_monitoring
    assert [task for task in asyncio.all_tasks() if task is not asyncio.current_task()] == []
    with pytest.raises(RuntimeError, match="not running"):
        await monitor.wait_for_sample()


async def test_async_with_starts_and_stops() -> None:
    async with PerformanceMonitor(sample_interval=0.01) as monitor:
        assert monitor in running_monitors()
        await monitor.wait_for_sample()
    assert monitor not in running_monitors()
    assert not monitor.sampler_alive


async def test_event_loop_lag_is_measured_and_advised() -> None:
    monitor = PerformanceMonitor(sample_interval=0.01)
    async with monitor:
        await monitor.wait_for_sample()
        time.sleep(0.15)  # noqa: ASYNC251 - a real fault: block the event loop
        sample = await monitor.wait_for_sample()
        assert sample.event_loop_lag_ms >= 100.0
        advice = monitor.recommendations()
        assert any("Event loop lag" in line and "asyncio.to_thread" in line for line in advice)
        assert monitor.health_score() < 1.0


def test_no_pending_task_after_stop_in_debug_mode(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        monitor = PerformanceMonitor(sample_interval=0.005)
        await monitor.start_monitoring()
        await monitor.wait_for_sample()
        await monitor.stop_monitoring()
        assert [task for task in asyncio.all_tasks() if task is not asyncio.current_task()] == []

    log = run_leaving_leftovers(main, caplog)
    assert DESTROYED_PENDING not in log
    assert "never awaited" not in log


# ----------------------------------------------------------------------------- library-operation fan-out


class _Service:
    def __init__(self, monitor: PerformanceMonitor | None) -> None:
        self.performance_monitor = monitor

    @monitored_operation("service_call")
    async def call(self, fail: bool = False) -> str:
        if fail:
            raise RuntimeError("service down")
        return "ok"

    @monitored_operation("tool_like", succeeded=lambda result: result["success"])
    async def tool_like(self, success: bool) -> dict[str, bool]:
        return {"success": success}


async def test_running_monitors_count_library_operations_stopped_ones_do_not() -> None:
    running = PerformanceMonitor(sample_interval=10.0)
    stopped = PerformanceMonitor(sample_interval=10.0)
    private = PerformanceMonitor(sample_interval=10.0, collect_library_operations=False)
    await running.start_monitoring()
    await private.start_monitoring()
    try:
        assert running in running_monitors() and private not in running_monitors()
        record_library_operation("add_message", 0.001, True)
        assert running.get_current_metrics().total_operations == 1
        assert stopped.get_current_metrics().total_operations == 0
        assert private.get_current_metrics().total_operations == 0
        # a component's own monitor is recorded once, even when it also runs in the registry
        record_library_operation("search_memory", 0.001, True, own_monitor=running)
        record_library_operation("search_memory", 0.001, True, own_monitor=private)
        assert running.operation_stats()["search_memory"].count == 2
        assert private.operation_stats()["search_memory"].count == 1
    finally:
        await running.stop_monitoring()
        await private.stop_monitoring()
    record_library_operation("add_message", 0.001, True)
    assert running.get_current_metrics().total_operations == 3


async def test_monitored_operation_decorator_uses_the_instance_monitor() -> None:
    own = PerformanceMonitor(collect_library_operations=False)
    service = _Service(own)
    assert await service.call() == "ok"
    with pytest.raises(RuntimeError, match="service down"):
        await service.call(fail=True)
    await service.tool_like(True)
    await service.tool_like(False)
    stats = own.operation_stats()
    assert (stats["service_call"].successes, stats["service_call"].failures) == (1, 1)
    assert (stats["tool_like"].successes, stats["tool_like"].failures) == (1, 1)
    assert own.recent_errors()[0]["error_type"] == "RuntimeError"
    # without any monitor the decorator just calls through
    assert await _Service(None).call() == "ok"


# ------------------------------------------------------------------------------- health and advice


def test_a_healthy_monitor_scores_one_and_gives_no_advice() -> None:
    monitor = PerformanceMonitor()
    for _ in range(50):
        monitor.record_operation("fast", 0.001, True)
    assert monitor.health_score() == 1.0
    assert monitor.recommendations() == []


def test_rule_error_rate() -> None:
    monitor = PerformanceMonitor()
    for index in range(20):
        monitor.record_operation("search_memory", 0.001, index % 4 != 0, error="index missing")
    assert monitor.health_score() == pytest.approx(0.75)
    advice = monitor.recommendations()
    assert len(advice) == 1
    assert "Error rate is 25.0% over the last 20 operations" in advice[0]
    assert "'search_memory', 5" in advice[0]


def test_rule_error_rate_needs_enough_operations() -> None:
    monitor = PerformanceMonitor()
    monitor.record_operation("op", 0.001, False)
    monitor.record_operation("op", 0.001, True)
    assert monitor.recommendations() == []


def test_rule_slow_operation() -> None:
    monitor = PerformanceMonitor(thresholds=PerformanceThresholds(slow_operation_ms=100.0))
    for _ in range(20):
        monitor.record_operation("slow_search", 0.4, True)
        monitor.record_operation("quick", 0.001, True)
    advice = monitor.recommendations()
    assert len(advice) == 1
    assert advice[0].startswith("Operation 'slow_search' is slow: p95 400 ms > 100 ms")
    assert monitor.health_score() == pytest.approx(0.5)  # factor max(0.5, 100 / 400)


async def test_rule_high_cpu() -> None:
    limits = PerformanceThresholds(cpu_percent=-1.0, min_cpu_samples=3)  # any real CPU use is "high"
    async with PerformanceMonitor(sample_interval=0.01, thresholds=limits) as monitor:
        for _ in range(3):
            await monitor.wait_for_sample()
        assert any(line.startswith("CPU use averages") for line in monitor.recommendations())
        assert monitor.health_score() == pytest.approx(0.9)


async def test_rule_memory_growth() -> None:
    limits = PerformanceThresholds(memory_growth_mb=20.0)
    async with PerformanceMonitor(sample_interval=0.01, thresholds=limits) as monitor:
        await monitor.wait_for_sample()
        assert not any("Memory grew" in line for line in monitor.recommendations())
        ballast = b"x" * (64 * 1024 * 1024)  # a real 64 MiB allocation
        await monitor.wait_for_sample()
        advice = monitor.recommendations()
        assert len(ballast) > 0
        assert any(line.startswith("Memory grew by") and "optimize_system()" in line for line in advice)


async def test_rule_memory_limit() -> None:
    limits = PerformanceThresholds(memory_limit_mb=1.0)
    monitor = PerformanceMonitor(thresholds=limits)
    await monitor.start_monitoring()
    try:
        advice = monitor.recommendations()
        assert any(line.startswith("Memory use") and "exceeds the limit of 1 MB" in line for line in advice)
        assert monitor.health_score() == pytest.approx(0.8)
    finally:
        await monitor.stop_monitoring()


def _busy_function() -> int:
    total = 0
    for index in range(300_000):
        total += index * index
    return total


async def test_profiling_names_the_hottest_function_and_advises() -> None:
    monitor = PerformanceMonitor(enable_profiling=True)
    with monitor.operation_timer("crunch"):
        _busy_function()
    async with monitor.operation_timer("crunch"):
        await asyncio.sleep(0)
    summary = monitor.get_performance_summary()
    hottest = summary["profile"]["hottest_functions"]
    assert hottest[0]["function"].endswith("(_busy_function)")
    assert hottest[0]["share"] > 0.5 and hottest[0]["calls"] == 1
    assert any(
        "_busy_function" in line and "optimise it first" in line for line in summary["recommendations"]
    )


def test_profiling_off_reports_no_functions() -> None:
    monitor = PerformanceMonitor()
    with monitor.operation_timer("crunch"):
        _busy_function()
    assert monitor.get_performance_summary()["profile"]["hottest_functions"] == []


def test_performance_summary_shape() -> None:
    monitor = PerformanceMonitor()
    monitor.record_operation("a", 0.01, True)
    monitor.record_operation("b", 0.02, False, error=ValueError("nope"))
    summary = monitor.get_performance_summary()
    assert set(summary) >= {
        "health_score",
        "recommendations",
        "metrics",
        "operations",
        "system",
        "recent_errors",
    }
    assert isinstance(summary["recommendations"], list)
    assert summary["operations"]["b"]["failures"] == 1
    assert summary["metrics"]["total_operations"] == 2
    assert summary["system"]["memory_usage_mb"] > 1.0
    assert summary["recent_errors"][0]["message"] == "ValueError: nope"


# --------------------------------------------------------------------------------------- prometheus


async def test_prometheus_collector_exposes_the_same_figures() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    monitor = PerformanceMonitor(sample_interval=0.01)
    for _ in range(3):
        monitor.record_operation("add_message", 0.002, True)
    monitor.record_operation("add_message", 0.004, False)
    registry = CollectorRegistry()
    registry.register(monitor.prometheus_collector())
    async with monitor:
        await monitor.wait_for_sample()
        value = registry.get_sample_value
        assert (
            value("context_manager_operations_total", {"operation": "add_message", "outcome": "success"}) == 3
        )
        assert (
            value("context_manager_operations_total", {"operation": "add_message", "outcome": "failure"}) == 1
        )
        p50 = value(
            "context_manager_operation_latency_seconds", {"operation": "add_message", "quantile": "0.5"}
        )
        assert p50 == pytest.approx(0.002)
        assert value("context_manager_error_rate") == pytest.approx(0.25)
        assert value("context_manager_health_score") == pytest.approx(monitor.health_score())
        assert value("context_manager_memory_usage_bytes") > 1e6
        assert value("context_manager_event_loop_lag_seconds") is not None
        text = generate_latest(registry).decode()
    assert "context_manager_cpu_percent" in text and "context_manager_operations_per_second" in text


def test_prometheus_collector_without_the_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from context_manager.core.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if the extra were not installed
    monkeypatch.setitem(sys.modules, "prometheus_client.core", None)
    with pytest.raises(MissingDependencyError, match=r"python-context-manager\[prometheus\]"):
        PerformanceMonitor().prometheus_collector()


def test_importing_the_module_does_not_import_psutil_or_prometheus() -> None:
    code = (
        "import sys; import context_manager.core.performance_monitor, context_manager.core.health_checker, "
        "context_manager.core.async_operations; "
        "print([m for m in ('psutil', 'prometheus_client', 'cProfile') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_throughput_is_not_capped_by_the_ring_buffer() -> None:
    monitor = PerformanceMonitor(history_size=100)
    start = time.perf_counter()
    for _ in range(5000):
        monitor.record_operation("fast", 0.0, True)
    elapsed = time.perf_counter() - start
    rate = monitor.get_current_metrics().operations_per_second
    # 5,000 operations in `elapsed` seconds; the buffer holds only the last 100 of them
    assert rate > 0.5 * 5000 / max(elapsed, 1e-3)


# ------------------------------------------------------------------------------ the rules, one by one


def _evidence(**changes: Any) -> rules.Evidence:
    """A quiet snapshot (every figure at a rule's limit, none over it) with ``changes`` applied."""
    quiet = {
        "recent_error_rate": 0.05,
        "recent_count": 100,
        "recent_errors": [{"operation": "op"}] * 5,
        "operation_stats": [_stats("op", p95_ms=1000.0)],
        "samples": [SystemSample(0.0, 100.0, 85.0, 100.0)] * 3,
        "hottest_function": {"function": "work", "share": 0.5},
    }
    return rules.Evidence(**{**quiet, **changes})


def _stats(name: str, p95_ms: float) -> OperationStats:
    return OperationStats(name, 10, 10, 0, 0.0, p95_ms, p95_ms, p95_ms, p95_ms, p95_ms, p95_ms)


LIMITS = PerformanceThresholds(memory_limit_mb=100.0)


@pytest.mark.parametrize(
    ("changes", "advice_start", "factor"),
    [
        ({"recent_error_rate": 0.2}, "Error rate is 20.0% over the last 100 operations", 0.8 / 0.95),
        ({"operation_stats": [_stats("op", p95_ms=4000.0)]}, "Operation 'op' is slow: p95 4000 ms", 0.5),
        ({"samples": [SystemSample(0.0, 100.0, 85.0, 400.0)] * 3}, "Event loop lag reached 400 ms", 0.5),
        ({"samples": [SystemSample(0.0, 100.0, 90.0, 10.0)] * 3}, "CPU use averages 90% of one core", 0.9),
        (
            {"samples": [SystemSample(0.0, 50.0, 85.0, 100.0), SystemSample(1.0, 250.5, 85.0, 1.0)]},
            "Memory grew by 200 MB over the sampled history (> 200 MB)",
            None,  # growth itself does not lower the score; the limit rule below does
        ),
        (
            {"samples": [SystemSample(0.0, 100.5, 85.0, 100.0)] * 3},
            "Memory use 100 MB exceeds the limit",
            0.8,
        ),
        (
            {"hottest_function": {"function": "work", "share": 0.9}},
            "work takes 90% of the profiled time",
            1.0,
        ),
    ],
)
def test_each_rule_fires_just_above_its_limit_and_not_at_it(
    changes: dict[str, Any], advice_start: str, factor: float | None
) -> None:
    quiet = _evidence()
    assert rules.recommendations(LIMITS, quiet) == []
    baseline = rules.health_score(LIMITS, quiet)
    assert baseline == pytest.approx(0.95)  # only the 5 % recent error rate lowers it
    fired = _evidence(**changes)
    advice = rules.recommendations(LIMITS, fired)
    assert [line for line in advice if line.startswith(advice_start)], advice
    if factor is not None:
        assert rules.health_score(LIMITS, fired) == pytest.approx(baseline * factor)


def test_the_error_rule_needs_min_operations() -> None:
    few = _evidence(recent_error_rate=0.5, recent_count=9)
    assert rules.recommendations(LIMITS, few) == []
