"""Health score and recommendation rules: through a monitor on real data, then one by one."""

from __future__ import annotations

import asyncio
import math
import mmap
import time
from typing import Any

import pytest

from context_manager.core.performance_monitor import (
    OperationStats,
    PerformanceMonitor,
    PerformanceThresholds,
    SystemSample,
    rules,
)

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


def test_rule_slow_operation_needs_min_operations_calls() -> None:
    """One slow call made the operation "slow" (advice, half the health score): no minimum, unlike the
    error-rate rule's min_operations."""
    monitor = PerformanceMonitor(thresholds=PerformanceThresholds(slow_operation_ms=100.0))
    for _ in range(50):
        monitor.record_operation("quick", 0.001, True)
    monitor.record_operation("cold_start", 2.0, True)  # one slow call (a cold cache, a first connection)
    assert monitor.recommendations() == []
    assert monitor.health_score() == 1.0
    for _ in range(8):
        monitor.record_operation("cold_start", 2.0, True)
    assert monitor.recommendations() == []  # 9 calls, min_operations is 10
    monitor.record_operation("cold_start", 2.0, True)
    assert monitor.recommendations()[0].startswith("Operation 'cold_start' is slow: p95 2000 ms > 100 ms")
    assert monitor.health_score() == pytest.approx(0.5)
    strict = PerformanceMonitor(thresholds=PerformanceThresholds(slow_operation_ms=100.0, min_operations=1))
    strict.record_operation("cold_start", 2.0, True)
    assert strict.recommendations()[0].startswith("Operation 'cold_start' is slow")


async def test_rule_high_cpu() -> None:
    limits = PerformanceThresholds(cpu_percent=0.0, min_cpu_samples=3)  # any real CPU use is "high"
    async with PerformanceMonitor(sample_interval=0.01, thresholds=limits) as monitor:
        for _ in range(3):
            busy_until = time.perf_counter() + 0.02
            while time.perf_counter() < busy_until:  # real CPU use before each sample
                pass
            await monitor.wait_for_sample()
        assert any(line.startswith("CPU use averages") for line in monitor.recommendations())
        assert monitor.health_score() == pytest.approx(0.9)


async def test_rule_memory_growth() -> None:
    limits = PerformanceThresholds(memory_growth_mb=20.0)
    async with PerformanceMonitor(sample_interval=0.01, thresholds=limits) as monitor:
        await monitor.wait_for_sample()
        assert not any("Memory grew" in line for line in monitor.recommendations())
        # A real 64 MiB allocation of fresh pages: a bytes object of that size reuses the heap memory earlier
        # tests freed (still resident: RSS does not grow) when the suite has run for a while.
        ballast = mmap.mmap(-1, 64 * 1024 * 1024)
        for offset in range(0, len(ballast), mmap.PAGESIZE):
            ballast[offset] = 1  # touched: resident
        await monitor.wait_for_sample()
        advice = monitor.recommendations()
        ballast.close()
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


async def test_time_an_awaited_block_spends_waiting_is_reported_as_waiting_and_never_advised() -> None:
    """A timed block that awaits I/O spends its profiled time in the event loop's selector (``poll``): the
    monitor advised optimising ``<method 'poll' of 'select.epoll' objects>``. It is marked ``waiting`` and
    the advice names the hottest function that works, if one takes enough of the time."""
    monitor = PerformanceMonitor(enable_profiling=True)
    async with monitor.operation_timer("fetch"):
        await asyncio.sleep(0.05)
    summary = monitor.get_performance_summary()
    hottest = summary["profile"]["hottest_functions"]
    assert hottest[0]["waiting"] and "select" in hottest[0]["function"] and hottest[0]["share"] > 0.5
    assert not any("optimise it first" in line for line in summary["recommendations"])
    # a block that waits a little and works more: the advice is about the work, the wait is marked
    monitor = PerformanceMonitor(enable_profiling=True)
    async with monitor.operation_timer("fetch"):
        await asyncio.sleep(0.005)
        _busy_function()
    summary = monitor.get_performance_summary()
    entries = summary["profile"]["hottest_functions"]
    assert entries[0]["function"].endswith("(_busy_function)") and not entries[0]["waiting"]
    assert any(entry["waiting"] and "select" in entry["function"] for entry in entries)
    assert (
        [line for line in summary["recommendations"] if "optimise it first" in line]
        == [line for line in summary["recommendations"] if "_busy_function" in line]
        != []
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


def test_the_slow_rule_needs_min_operations_calls_of_the_operation() -> None:
    few = OperationStats("op", 9, 9, 0, 0.0, 4000.0, 4000.0, 4000.0, 4000.0, 4000.0, 4000.0)
    assert rules.recommendations(LIMITS, _evidence(operation_stats=[few])) == []
    quiet = rules.health_score(LIMITS, _evidence())
    assert rules.health_score(LIMITS, _evidence(operation_stats=[few])) == quiet


def test_the_error_rate_lowers_the_score_only_from_min_operations() -> None:
    """One failure of one operation scored 0.0: the score now waits for as many operations as the advice."""
    assert rules.health_score(LIMITS, _evidence(recent_error_rate=1.0, recent_count=9)) == 1.0
    assert rules.health_score(LIMITS, _evidence(recent_error_rate=1.0, recent_count=10)) == 0.0
    strict = PerformanceThresholds(min_operations=1)
    assert rules.health_score(strict, _evidence(recent_error_rate=1.0, recent_count=1)) == 0.0
    monitor = PerformanceMonitor()
    monitor.record_operation("add_message", 0.001, False, error="role 'robot'")
    assert monitor.health_score() == 1.0  # one failure: not enough to judge (as the advice and checks say)
    assert monitor.recent_errors()[0]["message"] == "role 'robot'"
    for _ in range(8):
        monitor.record_operation("add_message", 0.001, True)
    assert monitor.health_score() == 1.0
    monitor.record_operation("add_message", 0.001, False)
    assert monitor.health_score() == pytest.approx(0.8)  # 2 of 10


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"slow_operation_ms": -1.0}, "slow_operation_ms"),  # ZeroDivisionError in every health score
        ({"slow_operation_ms": "250"}, "slow_operation_ms"),
        ({"error_rate": float("nan")}, "error_rate"),
        ({"error_rate": 5.0}, "error_rate"),  # 5 meant as 5 %: the rule never fired
        ({"error_rate": -0.1}, "error_rate"),
        ({"hot_function_share": 50}, "hot_function_share"),
        ({"event_loop_lag_ms": None}, "event_loop_lag_ms"),
        ({"min_operations": 2.5}, "min_operations"),
        ({"min_cpu_samples": True}, "min_cpu_samples"),
        ({"memory_limit_mb": "1 GB"}, "memory_limit_mb"),
    ],
)
def test_bad_thresholds_are_refused_when_made(kwargs: dict[str, Any], field: str) -> None:
    """Bad limits were accepted, then failed (TypeError, ZeroDivisionError) inside every metrics read."""
    from context_manager.core.errors import InvalidSettingError

    with pytest.raises(InvalidSettingError, match=f"^{field}: got "):
        PerformanceThresholds(**kwargs)
    accepted = PerformanceThresholds(slow_operation_ms=0.0, cpu_percent=0.0, memory_limit_mb=None)
    monitor = PerformanceMonitor(thresholds=accepted)
    monitor.record_operation("instant", 0.0)
    assert monitor.get_current_metrics().health_score == 1.0


def test_numpy_numbers_are_accepted_as_thresholds() -> None:
    """A limit computed with numpy (numpy.int64, numpy.float32) was refused as "not a number", although
    record_operation takes numpy's numbers; they are kept as Python numbers (reports stay JSON-safe)."""
    import json
    from dataclasses import asdict

    import numpy

    limits = PerformanceThresholds(
        error_rate=numpy.float32(0.25),
        min_operations=numpy.int64(4),
        slow_operation_ms=numpy.int64(500),
        event_loop_lag_ms=numpy.percentile(numpy.array([10.0, 20.0]), 95),
    )
    assert limits.min_operations == 4 and type(limits.min_operations) is int
    assert type(limits.error_rate) is float and limits.error_rate == pytest.approx(0.25)
    assert type(limits.slow_operation_ms) is int
    json.dumps(asdict(limits))
    monitor = PerformanceMonitor(thresholds=limits)
    for success in (True, True, True, False):
        monitor.record_operation("op", 0.001, success)
    assert monitor.health_score() == pytest.approx(0.75)
    from context_manager.core.errors import InvalidSettingError

    with pytest.raises(InvalidSettingError, match="^min_operations: got "):
        PerformanceThresholds(min_operations=numpy.float64(4.0))  # a count is an integer
    with pytest.raises(InvalidSettingError, match="^error_rate: got "):
        PerformanceThresholds(error_rate=numpy.float64(5.0))
    with pytest.raises(InvalidSettingError, match="^error_rate: got "):
        PerformanceThresholds(error_rate=numpy.bool_(True))


# ---------------------------------------------------------------------------------- the error window


async def test_failures_older_than_the_error_window_no_longer_count() -> None:
    """The error rate was that of the last 1,000 operations whatever their age: a burst of failures an hour
    ago kept a service that had recovered (and got little traffic since) unhealthy and advised, forever."""
    limits = PerformanceThresholds(recent_window_s=0.3)
    monitor = PerformanceMonitor(thresholds=limits)
    for _ in range(10):
        monitor.record_operation("search_memory", 0.001, False, error="index missing")
    assert monitor.recent_error_rate() == (1.0, 10)
    assert monitor.health_score() == 0.0
    assert monitor.recommendations()[0].startswith("Error rate is 100.0% over the last 10 operations")
    await asyncio.sleep(0.4)  # the burst is now older than the window
    assert monitor.recent_error_rate() == (0.0, 0)  # a quiet service: nothing recent to judge
    assert monitor.health_score() == 1.0
    assert monitor.recommendations() == []
    for _ in range(10):  # the service recovered: only the new operations are judged
        monitor.record_operation("search_memory", 0.001, True)
    assert monitor.recent_error_rate() == (0.0, 10)
    assert monitor.health_score() == 1.0
    # the lifetime figures still count everything; the recent errors still list the burst
    assert monitor.get_current_metrics().failures == 10
    assert len(monitor.recent_errors()) == 10
    # an explicit window for one read; math.inf: the whole ring buffer, as before
    assert monitor.recent_error_rate(window_s=math.inf) == (0.5, 20)


def test_the_error_window_is_five_minutes_by_default_and_named_in_the_advice() -> None:
    assert PerformanceThresholds().recent_window_s == 300.0
    monitor = PerformanceMonitor()
    for index in range(20):
        monitor.record_operation("execute_tool", 0.001, index % 2 == 0)
    assert "over the last 20 operations (in the last 300 s)" in monitor.recommendations()[0]


@pytest.mark.parametrize("window", [0, 0.0, -1.0, float("nan"), "300", True, None])
def test_a_bad_error_window_is_refused(window: Any) -> None:
    from context_manager.core.errors import InvalidSettingError

    with pytest.raises(InvalidSettingError, match=r"^recent_window_s: got .*; allowed a number > 0"):
        PerformanceThresholds(recent_window_s=window)
    monitor = PerformanceMonitor()
    with pytest.raises(InvalidSettingError, match=r"^window_s: got .*; allowed a number of seconds > 0"):
        monitor.recent_error_rate(window_s=window if window is not None else -5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cpu_percent": -1.0}, "cpu_percent: got -1.0; allowed a percentage of one core from 0 to "),
        ({"memory_growth_mb": -5.0}, "memory_growth_mb: got -5.0; allowed a number >= 0"),
        ({"memory_limit_mb": -512.0}, "memory_limit_mb: got -512.0; allowed a number >= 0 or None"),
    ],
)
async def test_negative_limits_that_always_fire_are_refused(kwargs: dict[str, Any], message: str) -> None:
    """A negative CPU, memory-growth or memory limit was accepted and then fired at every read: "CPU use
    averages 0% of one core (> -1%)", a health score lowered for ever."""
    import re

    from context_manager.core.errors import InvalidSettingError

    with pytest.raises(InvalidSettingError, match=f"^{re.escape(message)}"):
        PerformanceThresholds(**kwargs)


def test_a_cpu_limit_this_machine_cannot_reach_is_refused() -> None:
    """cpu_percent is a percentage of one core (psutil's process CPU use: 250 is two and a half cores);
    beyond 100 x the logical CPUs it can never fire, and was accepted silently (850 meant as 85 %)."""
    import os
    import re

    from context_manager.core.errors import InvalidSettingError

    cpus = os.cpu_count() or 1
    ceiling = 100 * cpus
    expected = f"cpu_percent: got {ceiling + 1}; allowed a percentage of one core from 0 to {ceiling} ({cpus}"
    with pytest.raises(InvalidSettingError, match=f"^{re.escape(expected)} logical CPU"):
        PerformanceThresholds(cpu_percent=ceiling + 1)
    assert PerformanceThresholds(cpu_percent=ceiling).cpu_percent == ceiling  # all cores busy: may fire
    assert PerformanceThresholds(cpu_percent=0).cpu_percent == 0
    if cpus >= 2:  # a multi-threaded process may use more than one core: a limit above 100 is meaningful
        assert PerformanceThresholds(cpu_percent=150.0).cpu_percent == 150.0


async def test_the_error_advice_names_the_operation_failing_in_the_window() -> None:
    """The advice named the operation with the most of the last 50 failures whatever their age: after an
    old burst of one operation, the failures of another one now were blamed on the old one."""
    monitor = PerformanceMonitor(thresholds=PerformanceThresholds(recent_window_s=0.3))
    for _ in range(20):
        monitor.record_operation("old_import", 0.001, False)
    await asyncio.sleep(0.4)
    for index in range(10):
        monitor.record_operation("search_memory", 0.001, index >= 5)  # 5 of 10 fail now
    advice = monitor.recommendations()
    assert len(advice) == 1
    assert "(most recent failures: 'search_memory', 5)" in advice[0], advice


async def test_event_loop_lag_and_cpu_older_than_the_recent_window_no_longer_count() -> None:
    """The lag and CPU rules judged every sample of the history (1,000 samples: about 17 minutes at the
    manager's one sample a second), so one blocked moment kept the health score lowered and the advice
    "Event loop lag reached ..." long after the loop ran freely again. The memory-growth rule still
    looks at the whole history (a slow leak shows only over a long span)."""
    limits = PerformanceThresholds(recent_window_s=0.3, min_cpu_samples=1)
    async with PerformanceMonitor(sample_interval=0.01, thresholds=limits) as monitor:
        await monitor.wait_for_sample()
        time.sleep(0.15)  # noqa: ASYNC251 - a real fault: block the event loop
        assert (await monitor.wait_for_sample()).event_loop_lag_ms >= 100.0
        assert any(line.startswith("Event loop lag reached") for line in monitor.recommendations())
        assert monitor.health_score() < 1.0
        await asyncio.sleep(0.5)  # the loop runs freely: the blocked sample is older than the window
        await monitor.wait_for_sample()
        assert max(sample.event_loop_lag_ms for sample in monitor.samples()) >= 100.0  # still in history
        assert not any(line.startswith("Event loop lag") for line in monitor.recommendations())
        assert monitor.health_score() == 1.0
