"""Library operations reach running monitors (registry.py, instrumentation.py)."""

from __future__ import annotations

import asyncio

import pytest

from context_manager.core.performance_monitor import (
    PerformanceMonitor,
    monitored_operation,
    record_library_operation,
    running_monitors,
)

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


class _Waiter:
    def __init__(self, monitor: PerformanceMonitor) -> None:
        self.performance_monitor = monitor
        self.started = asyncio.Event()

    @monitored_operation("slow_call")
    async def slow(self) -> None:
        self.started.set()
        await asyncio.Event().wait()


async def test_cancelled_operations_are_not_counted_as_failures() -> None:
    """Issue 18.11: a caller's timeout cancelling an operation counted as a failed operation."""
    monitor = PerformanceMonitor(collect_library_operations=False)
    waiter = _Waiter(monitor)
    for _ in range(3):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(waiter.slow(), 0.01)
    task = asyncio.create_task(waiter.slow())
    await waiter.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01), monitor.operation_timer("timed_block"):
            await asyncio.Event().wait()
    metrics = monitor.get_current_metrics()
    assert (metrics.total_operations, metrics.error_rate) == (0, 0.0)
    assert monitor.recent_errors() == [] and monitor.recent_error_rate() == (0.0, 0)
    # a real failure still counts
    with pytest.raises(RuntimeError):
        async with monitor.operation_timer("timed_block"):
            raise RuntimeError("broken")
    assert monitor.get_current_metrics().error_rate == 1.0


async def test_monitored_operation_refuses_what_it_cannot_record_before_anything_runs() -> None:
    """A bad name or ``succeeded`` failed only after the decorated call had run (its result lost, its side
    effects done), and a plain function ran, then failed on the decorator's ``await``."""
    from context_manager.core.errors import InvalidArgumentError, InvalidMetricError

    calls: list[str] = []

    async def work() -> str:
        calls.append("ran")
        return "done"

    def blocking() -> str:
        calls.append("ran")
        return "done"

    for name in ("", 7, None):
        with pytest.raises(InvalidMetricError, match="name: got .*; allowed a non-empty string"):
            monitored_operation(name)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="succeeded: got 'yes'; allowed a callable"):
        monitored_operation("work", succeeded="yes")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="function: got <function .*; allowed an async function"):
        monitored_operation("blocking")(blocking)  # type: ignore[arg-type]
    assert calls == []
    async with PerformanceMonitor(sample_interval=10.0) as monitor:
        assert await monitored_operation("work")(work)() == "done"
    assert calls == ["ran"]
    assert monitor.operation_stats()["work"].successes == 1


async def test_a_success_test_that_raises_does_not_break_the_operation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``succeeded`` raising (a result without the key it reads) raised into the caller: the operation had
    done its work, its result was lost, and nothing was recorded. Monitoring must not change what the
    operation does: the result is returned, the call is recorded as a failure naming the test's error,
    and a warning is logged."""
    monitor = PerformanceMonitor(collect_library_operations=False)
    service = _Service(monitor)

    @monitored_operation("lookup", succeeded=lambda result: result["success"])
    async def lookup(self: _Service) -> dict[str, bool]:
        return {}  # no "success" key: the test raises KeyError

    with caplog.at_level("WARNING", logger="context_manager.core.performance_monitor.instrumentation"):
        assert await lookup(service) == {}
    stats = monitor.operation_stats()["lookup"]
    assert (stats.count, stats.failures) == (1, 1)
    assert "succeeded" in (monitor.recent_errors()[-1]["message"] or "")
    assert "KeyError" in caplog.text and "lookup" in caplog.text
