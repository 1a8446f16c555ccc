"""PerformanceMonitor: bad input, the timer, sampling, throughput, lazy imports."""

from __future__ import annotations

import asyncio
import decimal
import gc
import math
import os
import subprocess
import sys
import time
from typing import Any

import psutil
import pytest

from context_manager.core.errors import InvalidArgumentError, InvalidMetricError, InvalidSettingError
from context_manager.core.performance_monitor import (
    PerformanceMonitor,
    PerformanceThresholds,
    running_monitors,
)
from context_manager.core.warmup import warm_ups, warming_up
from tests.pending_tasks import DESTROYED_PENDING, run_leaving_leftovers

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
        ("op", decimal.Decimal("0.01"), "duration_s"),  # raised TypeError after counting the operation
        ("op", 10**400, "duration_s"),  # raised OverflowError after counting the operation
        ("op", True, "duration_s"),
    ],
)
def test_invalid_record_leaves_the_monitor_unchanged(name: Any, duration: Any, field: str) -> None:
    monitor = PerformanceMonitor()
    monitor.record_operation("op", 0.5, True)
    with pytest.raises(InvalidMetricError, match=rf"{field}: got .*; allowed"):
        monitor.record_operation(name, duration, True)
    assert monitor.get_current_metrics().total_operations == 1
    assert monitor.operation_stats()["op"].count == 1 and monitor.operation_stats()["op"].avg_ms == 500.0
    with pytest.raises(InvalidMetricError, match="name"):
        monitor.operation_timer("")


def test_a_duration_too_large_for_a_finite_figure_in_ms_is_refused() -> None:
    """``record_operation("op", 1e308, True)`` was taken: its figures in ms were ``inf``, and
    ``get_performance_summary()`` then failed ``json.dumps(..., allow_nan=False)`` (a metrics endpoint)."""
    import json

    monitor = PerformanceMonitor()
    monitor.record_operation("op", 0.5, True)
    for huge in (1e308, 1e200, 10**20, 1e12 * 1.0000001):
        with pytest.raises(InvalidMetricError, match=r"^duration_s: got .*; allowed .* from 0 to 1e12"):
            monitor.record_operation("op", huge, True)
    assert monitor.operation_stats()["op"].count == 1
    for _ in range(3):
        monitor.record_operation("longest", 1e12, True)
    assert monitor.operation_stats()["longest"].max_ms == 1e15
    json.dumps(monitor.get_performance_summary(), allow_nan=False)


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
    started = time.perf_counter()
    await monitor.start_monitoring()
    assert monitor.is_monitoring and monitor.sampler_alive
    await monitor.start_monitoring()  # idempotent: still one sampler
    sample = await monitor.wait_for_sample()
    waited_ms = (time.perf_counter() - started) * 1000.0
    assert sample.rss_mb == pytest.approx(psutil.Process().memory_info().rss / 1048576.0, rel=0.5)
    assert 0.0 <= sample.cpu_percent <= 100.0 * (os.cpu_count() or 1)  # percent of one core, per core
    assert 0.0 <= sample.event_loop_lag_ms <= waited_ms  # late by at most the time we waited
    metrics = monitor.get_current_metrics()
    assert metrics.memory_usage_mb > 1.0
    await monitor.stop_monitoring()
    await monitor.stop_monitoring()  # idempotent
    assert not monitor.is_monitoring
    assert [task for task in asyncio.all_tasks() if task is not asyncio.current_task()] == []
    with pytest.raises(RuntimeError, match="not running"):
        await monitor.wait_for_sample()


def _spin(seconds: float) -> None:
    """Keep this thread's CPU busy for ``seconds``."""
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


def test_samples_taken_close_together_report_a_possible_cpu_figure() -> None:
    """Two reads of psutil's CPU counter a millisecond apart read one 10 ms tick as 1,000 % and more.

    The first sample (read right after priming the counter) and a sample_now() soon after another one
    reported up to 50,000 % of one core: a false "high CPU" in the advice, the score and Prometheus.
    """
    ceiling = 100.0 * (os.cpu_count() or 1)
    first = [PerformanceMonitor().sample_now() for _ in range(50)]
    assert all(sample is not None and 0.0 <= sample.cpu_percent <= ceiling for sample in first)
    monitor = PerformanceMonitor()
    monitor.sample_now()
    figures = []
    for _ in range(200):  # a read 1 ms after the previous one crosses a tick about one time in ten
        _spin(0.001)
        sample = monitor.sample_now()
        assert sample is not None
        figures.append(sample.cpu_percent)
    assert max(figures) <= ceiling, sorted(figures)[-5:]
    _spin(0.3)  # a read over a longer span still measures (a share of a core on a loaded machine)
    busy = monitor.sample_now()
    assert busy is not None and 0.0 < busy.cpu_percent <= ceiling


def test_the_figures_of_a_monitor_not_sampling_are_not_frozen_at_its_first_read() -> None:
    """A monitor never started (its Prometheus collector registered, as the docs show) sampled once.

    Every later scrape exported the RSS and CPU of that first read, however the process changed.
    """
    monitor = PerformanceMonitor(sample_interval=0.05)
    before = monitor.get_current_metrics().memory_usage_mb
    ballast = b"\x01" * (64 << 20)  # 64 MB the process really holds
    time.sleep(0.06)
    after = monitor.get_current_metrics()
    assert after.memory_usage_mb >= before + 48.0, (before, after.memory_usage_mb)
    assert after.memory_usage_mb == pytest.approx(psutil.Process().memory_info().rss / 1048576.0, abs=8.0)
    assert len(ballast) == 64 << 20
    samples = len(monitor.samples())
    monitor.get_current_metrics()  # read again at once: the latest sample is recent enough
    assert len(monitor.samples()) == samples


async def test_a_wait_for_the_next_sample_ends_when_the_monitor_stops() -> None:
    """wait_for_sample() waited for ever when the monitor was stopped meanwhile (no sample would come)."""
    from context_manager.core.errors import LifecycleError

    monitor = PerformanceMonitor(sample_interval=30.0)
    await monitor.start_monitoring()
    waiting = asyncio.create_task(monitor.wait_for_sample())
    await asyncio.sleep(0.01)
    await monitor.stop_monitoring()
    with pytest.raises(LifecycleError, match="the monitor stopped before its next sample"):
        await asyncio.wait_for(waiting, 2.0)
    assert [task for task in asyncio.all_tasks() if task is not asyncio.current_task()] == []


async def test_a_wait_for_a_sample_ends_with_an_error_when_the_sampler_cannot_read_the_process() -> None:
    """Every sample failed (psutil raised NoSuchProcess): wait_for_sample() waited for ever."""
    from context_manager import MonitoringError

    child = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(60)")
    try:
        gone = psutil.Process(child.pid)
    finally:
        child.kill()
        await child.wait()  # reaped: the handle now refers to no process
    monitor = PerformanceMonitor(sample_interval=0.01)
    async with monitor:
        monitor._process = gone  # the sampler's process handle: a real psutil failure on every sample
        started = time.perf_counter()
        with pytest.raises(MonitoringError, match=r"could not sample the process \(NoSuchProcess") as caught:
            await asyncio.wait_for(monitor.wait_for_sample(), 5.0)
        assert time.perf_counter() - started < 2.0
        assert "sample_now()" in str(caught.value)
        assert isinstance(caught.value.__cause__, psutil.NoSuchProcess)
        assert monitor.sampler_alive  # the sampler keeps trying
        assert monitor.sample_now() is None
        advice = [line for line in monitor.recommendations() if line.startswith("The sampler cannot read")]
        assert advice and "(NoSuchProcess" in advice[0] and "samples failed" in advice[0]
        assert monitor.health_score() == 1.0  # unknown figures are not bad ones
        monitor._process = psutil.Process()  # the process can be read again: samples come again
        assert monitor.get_performance_summary()["system"]["sampling_errors"] > 0
        monitor.reset()  # "forget every recorded ... sample": the failures too
        assert monitor.get_performance_summary()["system"]["sampling_errors"] == 0
        sample = await asyncio.wait_for(monitor.wait_for_sample(), 5.0)
        assert sample.rss_mb > 1.0
        assert not any(line.startswith("The sampler cannot read") for line in monitor.recommendations())


async def test_two_waiters_both_get_the_sample() -> None:
    """A second wait_for_sample() that began before the first waiter woke cleared the shared event: the
    first one then raised "the monitor stopped before its next sample" on a running monitor."""
    monitor = PerformanceMonitor(sample_interval=30.0)
    async with monitor:
        first = asyncio.create_task(monitor.wait_for_sample())
        for _ in range(3):
            await asyncio.sleep(0)  # the first waiter is waiting
        sample = monitor.sample_now()
        second = asyncio.create_task(monitor.wait_for_sample())  # starts before the first wakes
        assert await asyncio.wait_for(first, 5.0) is sample
        assert not second.done()  # it waits for the sample after
        monitor.sample_now()
        assert (await asyncio.wait_for(second, 5.0)).rss_mb > 1.0


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
    # 5,000 operations in `elapsed` seconds; the buffer holds only the last 100 of them. A rate capped by
    # the buffer would be 100 per minute-long window (1.7/s). The rate is measured over the buffer's span
    # up to the reading, so a pause of the process before the reading (a loaded machine) lowers it: the
    # bound allows a pause of up to 0.1 s (100 operations in 0.1 s)
    assert elapsed < 5.0
    assert rate > 1000


def test_queued_successes_count_like_recorded_ones_at_every_read() -> None:
    """The hot path's queued successes (_record_success, used by add_message) show in every reading as
    record_operation's do, keep their order with recorded failures, and are forgotten by reset()."""
    queued, recorded = PerformanceMonitor(history_size=50), PerformanceMonitor(history_size=50)
    durations = [0.001 * (n % 7) for n in range(133)]  # over the ring buffer of 50
    for n, duration in enumerate(durations):
        if n % 10 == 9:
            for monitor in (queued, recorded):
                monitor.record_operation("add_message", duration, False, error=ValueError("bad"))
        else:
            queued._record_success("add_message", duration)
            recorded.record_operation("add_message", duration, True)
    assert queued._queued, "nothing left queued: the test proves nothing"
    assert queued.recent_error_rate() == recorded.recent_error_rate()
    assert queued.operation_stats() == recorded.operation_stats()
    stats = queued.operation_stats()["add_message"]
    assert (stats.count, stats.failures) == (133, 13)
    queued._record_success("add_message", 0.002)
    metrics = queued.get_current_metrics()
    assert metrics.total_operations == 134 and metrics.operations_per_second > 0
    queued._record_success("add_message", 0.002)
    queued.reset()
    assert queued.operation_stats() == {} and queued.recent_error_rate() == (0.0, 0)
    for _ in range(100):  # with no read between them: counted 64 at a time
        queued._record_success("add_message", 0.001)
    assert len(queued._queued) == 100 - 64
    assert queued.operation_stats()["add_message"].count == 100


def test_successes_queued_from_several_threads_are_all_counted() -> None:
    """The queue takes no lock: successes from four threads while another reads are all counted."""
    import threading

    monitor = PerformanceMonitor()
    done = threading.Event()

    def record() -> None:
        for _ in range(5000):
            monitor._record_success("op", 0.001)

    def read() -> None:
        while not done.is_set():
            monitor.operation_stats()

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=record) for _ in range(4)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    done.set()
    reader.join()
    assert monitor.operation_stats()["op"].count == 20_000


# --------------------------------------------------------------------------------------- token usage


def test_token_usage_is_summed_per_operation_and_reset() -> None:

    monitor = PerformanceMonitor()
    monitor.record_token_usage("summarize", 120, 30)
    monitor.record_token_usage("summarize", 80, 20)
    monitor.record_token_usage("classify", 5, 1)
    assert monitor.token_usage() == {
        "summarize": {"calls": 2, "input_tokens": 200, "output_tokens": 50, "total_tokens": 250},
        "classify": {"calls": 1, "input_tokens": 5, "output_tokens": 1, "total_tokens": 6},
    }
    assert monitor.get_performance_summary()["token_usage"]["summarize"]["total_tokens"] == 250
    for bad in (
        {"input_tokens": -1, "output_tokens": 0},
        {"input_tokens": 1.5, "output_tokens": 0},
        {"input_tokens": 2**63, "output_tokens": 0},  # more than a metric exporter's 64-bit integer carries
    ):
        with pytest.raises(InvalidMetricError, match="input_tokens: got"):
            monitor.record_token_usage("summarize", bad["input_tokens"], bad["output_tokens"])  # type: ignore[arg-type]
    assert monitor.token_usage()["summarize"]["calls"] == 2  # a rejected record changes nothing
    monitor.reset()
    assert monitor.token_usage() == {}


# ------------------------------------------------------------------------ distinct operation names


def test_distinct_operation_names_are_capped_into_an_overflow_bucket(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One latency reservoir per name without limit: a name per URL or user id grew memory without end."""
    monitor = PerformanceMonitor(max_operation_names=20)
    with caplog.at_level("WARNING", logger="context_manager.core.performance_monitor.monitor"):
        for user in range(500):
            monitor.record_operation(f"fetch_user:{user}", 0.001, user % 50 != 0, error="not found")
        for user in range(500):
            monitor._record_success(f"lookup:{user}", 0.002)  # the library's hot path too
            monitor.record_token_usage(f"summarize:{user}", 10, 2)
    stats = monitor.operation_stats()
    overflow = PerformanceMonitor.OVERFLOW_OPERATION
    assert len(stats) == 20 + 1
    assert [name for name in stats if name != overflow] == [f"fetch_user:{user}" for user in range(20)]
    assert stats[overflow].count == 500 - 20 + 500  # the later fetch_user and every lookup
    assert stats[overflow].failures == 9  # fetch_user 50, 100 ... 450
    metrics = monitor.get_current_metrics()
    assert (metrics.total_operations, metrics.failures) == (1000, 10)  # nothing is lost from the totals
    tokens = monitor.token_usage()
    assert len(tokens) == 21 and tokens[overflow] == {
        "calls": 480,
        "input_tokens": 4800,
        "output_tokens": 960,
        "total_tokens": 5760,
    }
    assert monitor.recent_errors()[-1]["operation"] == "fetch_user:450"  # errors keep the real name
    warnings = [record for record in caplog.records if "distinct operation names" in record.getMessage()]
    assert len(warnings) == 1, "one warning, not one per folded record"
    assert "max_operation_names" in warnings[0].getMessage() and overflow in warnings[0].getMessage()

    monitor.reset()  # forgets the names: new ones are counted again, and warned about again
    monitor.record_operation("fresh", 0.001, True)
    assert list(monitor.operation_stats()) == ["fresh"]


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "100", None])
def test_invalid_max_operation_names(value: Any) -> None:
    with pytest.raises(InvalidSettingError, match=r"max_operation_names: got .*; allowed an integer >= 1"):
        PerformanceMonitor(max_operation_names=value)


def test_the_default_cap_of_operation_names() -> None:
    monitor = PerformanceMonitor()
    assert monitor.max_operation_names == 500
    for index in range(600):
        monitor.record_operation(f"op{index}", 0.0, True)
    assert len(monitor.operation_stats()) == 501


# ------------------------------------------------------------------------------------ bad arguments


@pytest.mark.parametrize("success", ["no", "yes", 0, 1, None, 0.0, [], "False"])
def test_a_success_that_is_not_a_bool_is_refused(success: Any) -> None:
    """``success="no"`` was counted as a success: any truthy value was."""
    monitor = PerformanceMonitor()
    monitor.record_operation("op", 0.5, True)
    with pytest.raises(InvalidMetricError, match=r"^success: got .*; allowed True or False"):
        monitor.record_operation("op", 0.1, success)
    stats = monitor.operation_stats()["op"]
    assert (stats.count, stats.failures) == (1, 0)
    assert monitor.recent_error_rate() == (0.0, 1) and monitor.recent_errors() == []


def test_a_numpy_bool_success_is_accepted() -> None:
    import numpy

    monitor = PerformanceMonitor()
    latencies = numpy.array([0.1, 2.0])
    for latency in latencies:
        monitor.record_operation("op", latency, latency < 1.0)  # numpy.bool_, as numpy comparisons give
    stats = monitor.operation_stats()["op"]
    assert (stats.count, stats.failures) == (2, 1)


@pytest.mark.parametrize("limit", ["x", -1, 2.5, True, None])
def test_hottest_functions_refuses_a_bad_limit(limit: Any) -> None:
    """``hottest_functions("x")`` returned [] as if nothing had been profiled."""
    monitor = PerformanceMonitor(enable_profiling=True)
    with monitor.operation_timer("work"):
        sum(range(10_000))
    with pytest.raises(InvalidArgumentError, match=r"^limit: got .*; allowed an integer >= 0"):
        monitor.hottest_functions(limit)
    with pytest.raises(InvalidArgumentError, match=r"^limit: got "):
        monitor.profiler.hottest_functions(limit)
    assert monitor.hottest_functions(0) == []
    assert len(monitor.hottest_functions(1)) == 1


def test_hottest_functions_takes_a_numpy_integer_limit() -> None:
    """``hottest_functions(numpy.int64(1))`` was refused as "not an integer >= 0"."""
    import numpy

    monitor = PerformanceMonitor(enable_profiling=True)
    with monitor.operation_timer("work"):
        sum(range(10_000))
    assert len(monitor.hottest_functions(numpy.int64(1))) == 1


@pytest.mark.parametrize("setting", ["enable_profiling", "collect_library_operations"])
@pytest.mark.parametrize("value", ["no", "false", 0, None])
def test_switches_that_are_not_bools_are_refused(setting: str, value: Any) -> None:
    """``enable_profiling="no"`` switched profiling on (any truthy value did)."""
    with pytest.raises(InvalidSettingError, match=rf"^{setting}: got .*; allowed True or False"):
        PerformanceMonitor(**{setting: value})


def test_a_huge_error_message_is_kept_shortened() -> None:
    """The 50 recent errors kept each message whole: an exception quoting a large payload kept it alive."""
    monitor = PerformanceMonitor()
    payload = "x" * 1_000_000
    for _ in range(50):
        monitor.record_operation("parse", 0.001, False, error=ValueError(f"bad payload {payload}"))
    message = monitor.recent_errors()[-1]["message"]
    assert message.startswith("ValueError: bad payload xxx") and message.endswith("...<1000024 chars>")
    assert len(message) <= 1000
    monitor.record_operation("parse", 0.001, False, error="short")
    assert monitor.recent_errors()[-1]["message"] == "short"


def test_a_monitor_whose_event_loop_was_closed_samples_again_in_a_new_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its loop closed with the sampler pending, the monitor still counted the sampler alive:
    ``start_monitoring()`` in a new loop did nothing (no sample ever came, ``wait_for_sample()`` hung) and
    ``stop_monitoring()`` raised ``RuntimeError: Event loop is closed``."""
    monitor = PerformanceMonitor(sample_interval=0.02, collect_library_operations=False)

    async def start() -> None:
        await monitor.start_monitoring()

    run_leaving_leftovers(start, caplog)  # the loop is closed with the sampler pending
    assert not monitor.sampler_alive

    async def afterwards() -> None:
        await monitor.start_monitoring()
        assert monitor.sampler_alive
        sample = await asyncio.wait_for(monitor.wait_for_sample(), 5.0)
        assert sample.rss_mb > 0
        await asyncio.wait_for(monitor.stop_monitoring(), 5.0)
        assert not monitor.is_monitoring

    asyncio.run(afterwards())

    run_leaving_leftovers(start, caplog)

    async def stop_only() -> None:  # a plain stop in the new loop
        await asyncio.wait_for(monitor.stop_monitoring(), 5.0)

    asyncio.run(stop_only())
    assert not monitor.is_monitoring
    gc.collect()  # the dropped tasks of the closed loops go now, not in a later test's log


@pytest.mark.timeout(30)  # before the fix the waiter stayed wedged: the loop never finished
def test_sample_now_from_a_worker_thread_wakes_a_waiter_on_the_loop() -> None:
    """``sample_now()`` from a worker thread (a sync health check, a sync tool) set the sampler's
    ``asyncio.Event`` off the loop: in debug mode it raised ``RuntimeError: Non-thread-safe operation``
    and the pending ``wait_for_sample()`` was never woken (its ``stop_monitoring`` hung with it)."""

    async def main() -> None:
        monitor = PerformanceMonitor(sample_interval=60.0, collect_library_operations=False)
        await monitor.start_monitoring()
        waiter = asyncio.create_task(monitor.wait_for_sample())
        await asyncio.sleep(0.01)
        sample = await asyncio.to_thread(monitor.sample_now)
        assert sample is not None and sample.rss_mb > 0
        assert await asyncio.wait_for(waiter, 5.0) == sample
        await asyncio.wait_for(monitor.stop_monitoring(), 5.0)

    asyncio.run(main(), debug=True)


def test_thresholds_assigned_later_are_checked_and_used() -> None:
    """The context manager's own monitor is made with the default limits; assigning ``monitor.thresholds``
    is how they change. A dict (or None) was taken silently, then every health score, recommendation
    and metrics read failed with AttributeError."""
    monitor = PerformanceMonitor()
    for _ in range(10):
        monitor.record_operation("op", 0.001, False)
    with pytest.raises(InvalidSettingError, match=r"^thresholds: got .*; allowed a PerformanceThresholds"):
        monitor.thresholds = {"recent_window_s": 60.0}  # type: ignore[assignment]
    with pytest.raises(InvalidSettingError, match=r"^thresholds: got None; allowed a PerformanceThresholds"):
        monitor.thresholds = None  # type: ignore[assignment]
    assert monitor.thresholds == PerformanceThresholds()  # unchanged
    assert monitor.health_score() == 0.0
    monitor.thresholds = PerformanceThresholds(min_operations=11)
    assert monitor.health_score() == 1.0  # the new limits are used at the next read


# ------------------------------------------------------------------------- client errors, recent latency


def test_a_call_rejected_for_bad_input_is_not_an_error_of_the_service() -> None:
    """A ContextManagerError for an invalid argument (HTTP's 4xx) was counted as a failure, so a client
    sending bad input made the service read unhealthy. It is counted as rejected, outside the error
    rate; a real failure (5xx) still counts."""
    from context_manager.core.errors import InvalidRoleError, MemoryNotFoundError, ToolCallPairingError

    monitor = PerformanceMonitor()
    bad_role = InvalidRoleError("role", "robot", "user")
    for _ in range(20):
        monitor.record_operation("add_message", 0.0001, False, error=bad_role)
    unpaired = ToolCallPairingError("tool_call_id", "x", "an earlier call's id")
    monitor.record_operation("add_message", 0.0001, False, error=unpaired)
    monitor.record_operation("delete_memory", 0.0001, False, error=MemoryNotFoundError("m-1"))
    for _ in range(10):
        monitor.record_operation("add_message", 0.002, True)
    stats = monitor.operation_stats()["add_message"]
    assert (stats.count, stats.successes, stats.failures, stats.rejected) == (31, 10, 0, 21)
    assert stats.error_rate == 0.0 and stats.p50_ms == pytest.approx(2.0)  # rejections did no work
    metrics = monitor.get_current_metrics()
    figures = (metrics.total_operations, metrics.failures, metrics.rejected, metrics.error_rate)
    assert figures == (32, 0, 22, 0.0)
    assert monitor.recent_error_rate() == (0.0, 10)
    assert monitor.health_score() == 1.0 and monitor.recommendations() == []
    assert monitor.recent_errors() == []
    rejections = monitor.recent_rejections()
    assert len(rejections) == 22 and rejections[-1]["error_type"] == "MemoryNotFoundError"
    assert monitor.get_performance_summary()["recent_rejections"] == rejections
    # a failure of the service still counts, with the same rules as before
    for _ in range(10):
        monitor.record_operation("add_message", 0.002, False, error=RuntimeError("disk gone"))
    assert monitor.recent_error_rate() == (0.5, 20)
    assert monitor.operation_stats()["add_message"].error_rate == 0.5
    assert monitor.health_score() == 0.5
    # a flood of rejections does not push the failures out of the recent operations judged
    for _ in range(3 * monitor.history_size):
        monitor.record_operation("add_message", 0.0001, False, error=bad_role)
    assert monitor.recent_error_rate() == (0.5, 20)
    assert monitor.health_score() == 0.5
    # an explicit rejection (an HTTP handler's 4xx), and a contradictory one refused
    monitor.record_operation("handler", 0.001, False, rejected=True, error="400 Bad Request")
    assert monitor.operation_stats()["handler"].rejected == 1
    with pytest.raises(InvalidMetricError, match="rejected"):
        monitor.record_operation("handler", 0.001, True, rejected=True)


def test_the_slow_operation_rule_judges_the_recent_window() -> None:
    """It judged the lifetime percentiles: an operation slow an hour ago and fast since was reported
    slow for ever (the error-rate, lag and CPU rules judge the recent window)."""
    monitor = PerformanceMonitor(thresholds=PerformanceThresholds(recent_window_s=0.3, slow_operation_ms=100))
    for _ in range(50):
        monitor.record_operation("search", 2.0, True)
    assert any("'search' is slow" in line for line in monitor.recommendations())
    assert monitor.health_score() < 1.0
    time.sleep(0.35)
    for _ in range(10):
        monitor.record_operation("search", 0.01, True)
    assert monitor.recommendations() == []
    assert monitor.health_score() == 1.0
    assert monitor.operation_stats()["search"].p95_ms == pytest.approx(2000.0)  # lifetime figures stay
    time.sleep(0.35)
    monitor.record_operation("search", 5.0, True)  # alone in the window: one slow call is not judged
    assert monitor.recommendations() == []
    for _ in range(9):
        monitor._record_success("search", 3.0)  # the hot path's queued successes count too
    advice = monitor.recommendations()
    assert len(advice) == 1
    assert advice[0].startswith("Operation 'search' is slow: p95 4100 ms > 100 ms (in the last 0.3 s)")


_FORKED_MONITOR: PerformanceMonitor | None = None


def _sample_in_forked_child(queue: Any) -> None:
    # The child's own memory, which the parent does not have, until the two sizes are far apart: a
    # forked child maps the parent's file-backed pages lazily, so right after the fork its RSS may be
    # hundreds of megabytes below the parent's (a parent that loaded torch: 1.2 GB)
    parent_mb = psutil.Process(os.getppid()).memory_info().rss / 1048576.0
    blocks = []
    for _ in range(16):
        own_mb = psutil.Process().memory_info().rss / 1048576.0
        if own_mb > parent_mb + 150:
            break
        block = bytearray(100 * 1048576)
        for offset in range(0, len(block), 4096):
            block[offset] = 1
        blocks.append(block)
    assert _FORKED_MONITOR is not None
    sample = _FORKED_MONITOR.sample_now()
    own_mb = psutil.Process().memory_info().rss / 1048576.0
    queue.put((os.getpid(), own_mb, parent_mb, sample and sample.rss_mb))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork start method: POSIX only")
def test_a_forked_worker_samples_its_own_process_not_the_parent() -> None:
    # gunicorn --preload, multiprocessing's fork: a monitor that sampled before the fork kept psutil's
    # handle of the parent, so every worker reported the parent's memory and CPU as its own
    import multiprocessing

    global _FORKED_MONITOR
    monitor = PerformanceMonitor()
    parent = monitor.sample_now()
    assert parent is not None
    _FORKED_MONITOR = monitor
    try:
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        child = context.Process(target=_sample_in_forked_child, args=(queue,))
        child.start()
        pid, own_rss_mb, parent_rss_mb, sampled_rss_mb = queue.get(timeout=60)
        child.join(timeout=60)
    finally:
        _FORKED_MONITOR = None
    assert pid != os.getpid()
    assert sampled_rss_mb is not None
    assert own_rss_mb > parent_rss_mb + 150  # the two processes' sizes are far apart ...
    assert abs(sampled_rss_mb - own_rss_mb) < 50  # ... and the child's monitor gives the child's own


async def test_a_warm_up_blocking_the_loop_is_not_judged_but_a_block_after_it_is() -> None:
    # The embedding model's load holds the interpreter for a second or so, once: the monitor read it as a
    # blocked loop and scored 0.5 for the next five minutes.
    monitor = PerformanceMonitor(sample_interval=0.01)
    async with monitor:
        await monitor.wait_for_sample()
        with warming_up("test warm-up"):
            time.sleep(0.15)  # noqa: ASYNC251 - a real block of the loop, inside a warm-up
            await asyncio.sleep(0)
        sample = await monitor.wait_for_sample()
        await monitor.wait_for_sample()
        assert max(s.event_loop_lag_ms for s in monitor.samples()) >= 100.0  # the figures stay as measured
        assert sample.event_loop_lag_ms >= 100.0
        assert monitor.health_score() == 1.0
        assert not [line for line in monitor.recommendations() if "Event loop lag" in line]
        time.sleep(0.15)  # noqa: ASYNC251 - the same block, outside a warm-up
        await monitor.wait_for_sample()
        assert monitor.health_score() < 1.0
        assert any("Event loop lag" in line for line in monitor.recommendations())


async def test_a_wall_clock_step_during_a_warm_up_leaves_it_unjudged(monkeypatch: pytest.MonkeyPatch) -> None:
    # The warm-up's span was on the wall clock: stepped back an hour during it (NTP, a resumed VM), the span
    # ended before it started, and the loop it held was judged blocked (score 0.64-0.70). Spans are monotonic
    # now.
    monitor = PerformanceMonitor(sample_interval=0.01)
    wall = time.time
    async with monitor:
        await monitor.wait_for_sample()
        with warming_up("test warm-up"):
            time.sleep(0.15)  # noqa: ASYNC251 - a real block of the loop, inside a warm-up
            monkeypatch.setattr(time, "time", lambda: wall() - 3600.0)
        sample = await monitor.wait_for_sample()
        await monitor.wait_for_sample()
        assert sample.event_loop_lag_ms >= 100.0
        assert monitor.health_score() == 1.0
        assert not [line for line in monitor.recommendations() if "Event loop lag" in line]
    [span] = [span for span in warm_ups() if span.what == "test warm-up"][-1:]
    assert span.duration is not None and 0.15 <= span.duration < 60.0


async def test_memory_a_warm_up_loads_is_not_growth_but_memory_grown_after_it_is() -> None:
    monitor = PerformanceMonitor(sample_interval=0.01, thresholds=PerformanceThresholds(memory_growth_mb=40))
    async with monitor:
        await monitor.wait_for_sample()
        with warming_up("test model"):
            loaded = bytearray(os.urandom(1024)) * (80 * 1024)  # 80 MiB resident, kept (like a model)
            await monitor.wait_for_sample()
            # while it runs, what it loads is not judged either
            assert not [line for line in monitor.recommendations() if "Memory grew" in line]
        await monitor.wait_for_sample()
        await monitor.wait_for_sample()
        assert not [line for line in monitor.recommendations() if "Memory grew" in line]
        grown = bytearray(os.urandom(1024)) * (80 * 1024)  # 80 MiB more, after the warm-up
        await monitor.wait_for_sample()
        assert any("Memory grew by" in line for line in monitor.recommendations())
        assert len(loaded) == len(grown)


async def test_a_sample_now_between_a_warm_up_and_the_late_sample_leaves_the_lag_unjudged() -> None:
    # A sample_now() (optimize_system's reading after its work, a sync health check on a worker thread)
    # after a warm-up that held the loop, before the sampler's late sample: that sample's span was counted
    # from it, missed the warm-up, and its lag read as a blocked loop (score 0.5)
    monitor = PerformanceMonitor(sample_interval=0.05)
    async with monitor:
        await monitor.wait_for_sample()
        with warming_up("test warm-up"):
            time.sleep(0.3)  # noqa: ASYNC251 - a real block of the loop, inside a warm-up
        monitor.sample_now()
        late = await monitor.wait_for_sample()
        assert late.event_loop_lag_ms >= 100.0
        assert monitor.health_score() == 1.0
        assert not [line for line in monitor.recommendations() if "Event loop lag" in line]


class SteppedClock:
    """A monotonic clock the test moves by hand (the monitor's ``clock``)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_monitor_windows_and_uptime_follow_its_monotonic_clock_not_the_wall_clock() -> None:
    """The recent windows, the throughput and the uptime were measured with ``time.time()``: after the wall
    clock stepped back an hour (NTP, a resumed VM), failures from before the step counted as recent for
    another hour (error rate 0.5) and ``uptime_s`` read -3600. They follow the monitor's monotonic clock
    now; the times shown (an error's ``timestamp``) stay wall-clock dates."""
    clock = SteppedClock()
    monitor = PerformanceMonitor(clock=clock)
    window_s = monitor.thresholds.recent_window_s
    for index in range(10):
        monitor.record_operation("fetch", 0.01, success=index % 2 == 0, error="upstream down")
    monitor._record_success("fetch", 0.01)  # the library's hot path, queued
    assert monitor.recent_error_rate() == (5 / 11, 11)
    errors = monitor.recent_errors()
    assert len(errors) == 5 and all(abs(error["timestamp"] - time.time()) < 60 for error in errors)

    clock.now += 30.0
    assert monitor.get_performance_summary()["system"]["uptime_s"] == 30.0
    assert monitor.get_current_metrics().operations_per_second == 11 / 30.0
    assert monitor.recent_error_rate() == (5 / 11, 11)  # still inside the window

    clock.now += window_s  # the window has passed on the monotonic clock, whatever the wall clock says
    assert monitor.recent_error_rate() == (0.0, 0)
    assert monitor.health_score() == 1.0
    assert not any("error" in advice.lower() for advice in monitor.recommendations())
    assert monitor.get_current_metrics().operations_per_second == 0.0
    assert monitor.get_performance_summary()["system"]["uptime_s"] == 30.0 + window_s
    assert len(monitor.recent_errors()) == 5  # still listed, with their dates: only the window moved on
    sample = monitor.sample_now()
    assert sample is not None and sample.monotonic == clock.now and abs(sample.timestamp - time.time()) < 60
    monitor.reset()
    assert monitor.get_performance_summary()["system"]["uptime_s"] == 0.0


def test_monitor_clock_must_be_callable() -> None:
    with pytest.raises(InvalidSettingError, match="clock: got 12.5; allowed a function returning monotonic"):
        PerformanceMonitor(clock=12.5)  # type: ignore[arg-type]
