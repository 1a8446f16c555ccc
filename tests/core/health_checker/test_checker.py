from __future__ import annotations

import asyncio
import gc
import importlib
import json
import re
import shutil
import sqlite3
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest

from context_manager.core.config import ContextManagerConfig
from context_manager.core.errors import InvalidHealthCheckError, InvalidSettingError
from context_manager.core.health_checker import (
    CheckOutcome,
    DiagnosticReport,
    HealthChecker,
    HealthState,
    HealthStatus,
    HealthThresholds,
)
from context_manager.core.memory.models import Memory, MemoryTier
from context_manager.core.memory.sqlite_store import SQLiteStore
from context_manager.core.performance_monitor import PerformanceMonitor
from tests.pending_tasks import DESTROYED_PENDING, run_leaving_leftovers

BUILTIN = [
    "storage",
    "storage_writes",
    "database",
    "memory_pressure",
    "event_loop",
    "error_rate",
    "background_tasks",
]

LOAD_PROOF = HealthThresholds(event_loop_lag_ms=5_000.0)
"""Thresholds for tests about other checks: a loaded machine's timers fire 100 ms late and more, which the
built-in event-loop check reports (a failing check these tests did not expect)."""


class _Parts:
    """Carries real parts (a SQLite store, a monitor) the way a context manager exposes them."""

    def __init__(
        self,
        memory_manager: Any = None,
        performance_monitor: PerformanceMonitor | None = None,
        config: ContextManagerConfig | None = None,
    ) -> None:
        self.memory_manager = memory_manager
        self.performance_monitor = performance_monitor
        if config is not None:
            self.config = config


def _others() -> list[asyncio.Task[Any]]:
    return [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]


# ------------------------------------------------------------------------------------------- basics


async def test_a_fresh_checker_is_healthy() -> None:
    checker = HealthChecker(check_interval=5.0)
    await checker.start()
    started = time.perf_counter()
    status = await checker.perform_health_check()
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    await checker.stop()
    assert isinstance(status, HealthStatus)
    assert status.status is HealthState.HEALTHY and status.status.value == "healthy"
    assert status.health_score == 1.0
    assert list(status.checks) == BUILTIN
    for result in status.checks.values():
        assert 0.0 < result.duration_ms <= elapsed_ms and result.message and result.recommendation is None
    assert status.checks["event_loop"].duration_ms >= 20.0  # its probe sleeps 20 ms
    assert 0.0 < status.duration_ms <= elapsed_ms
    assert checker.last_status is status
    assert _others() == []


async def test_custom_checks_decide_the_state_and_score() -> None:
    checker = HealthChecker(thresholds=LOAD_PROOF)  # a lagging loop would fail one more check
    checker.register_check("cache_reachable", lambda: False)
    status = await checker.perform_health_check()
    assert status.status is HealthState.DEGRADED  # not critical: degraded, not unhealthy
    # the built-in database and storage_writes checks are critical (x2): weights 5 + 2 x 2, plus this one
    assert status.health_score == pytest.approx(9 / 10)
    assert [result.name for result in status.failing_checks] == ["cache_reachable"]

    checker.register_check("cache_reachable", lambda: False, critical=True, replace=True)
    status = await checker.perform_health_check()
    assert status.status is HealthState.UNHEALTHY
    assert status.health_score == pytest.approx(9 / 11)


async def test_a_malformed_outcome_fails_its_check_not_the_run() -> None:
    """CheckOutcome("degraded", ...) (a string status) or details=None raised out of perform_health_check."""
    checker = HealthChecker()
    checker.register_check("string_status", lambda: CheckOutcome("degraded", "meh"))  # type: ignore[arg-type]
    checker.register_check("no_details", lambda: CheckOutcome(HealthState.HEALTHY, "ok", None))  # type: ignore[arg-type]
    status = await checker.perform_health_check()
    failing = {result.name: result for result in status.failing_checks}
    assert set(failing) == {"string_status", "no_details"}
    assert all(result.status is HealthState.UNHEALTHY for result in failing.values())
    assert "malformed outcome" in failing["string_status"].message
    assert status.status is HealthState.DEGRADED  # not critical


async def test_a_hung_repair_is_given_up_and_a_sync_one_runs_off_the_loop(tmp_path: Path) -> None:
    """A repair had no time limit and ran under the checker's lock (every later run waited for it); a
    sync repair ran on the event loop."""

    async def hangs() -> str:
        await asyncio.Event().wait()
        return "never"

    checker = HealthChecker(storage_path=tmp_path, enable_auto_recovery=True, repair_timeout=0.2)
    checker.register_check("queue", lambda: CheckOutcome(HealthState.UNHEALTHY, "stuck", repair=hangs))
    status = await asyncio.wait_for(checker.perform_health_check(), timeout=10)
    [recovery] = status.recoveries
    assert recovery.check == "queue" and not recovery.success
    assert recovery.action == "repair failed: timed out after 0.2 s"
    await asyncio.wait_for(checker.perform_health_check(), timeout=10)  # the lock was released

    loop_thread = threading.get_ident()
    repaired_in: list[int] = []

    def sync_repair() -> str:
        repaired_in.append(threading.get_ident())
        time.sleep(0.2)
        return "fixed"

    def check() -> CheckOutcome:
        if repaired_in:
            return CheckOutcome(HealthState.HEALTHY, "ok")
        return CheckOutcome(HealthState.UNHEALTHY, "broken", repair=sync_repair)

    other = HealthChecker(storage_path=tmp_path, enable_auto_recovery=True)
    other.register_check("thing", check)
    status = await other.perform_health_check()
    assert repaired_in and repaired_in[0] != loop_thread
    assert [(r.action, r.success) for r in status.recoveries] == [("fixed", True)]
    with pytest.raises(InvalidSettingError, match="repair_timeout"):
        HealthChecker(repair_timeout=0)


async def test_check_outcomes_exceptions_timeouts_and_threads() -> None:
    loop_thread = threading.get_ident()
    seen_threads: list[int] = []
    hang = asyncio.Event()

    def sync_check() -> CheckOutcome:
        seen_threads.append(threading.get_ident())
        return CheckOutcome(HealthState.DEGRADED, "queue is long", {"length": 900}, "drain the queue")

    async def failing_check() -> bool:
        raise ConnectionError("upstream unreachable")

    async def hanging_check() -> None:
        await hang.wait()

    # 1 s: a sync check's thread must start and return within it (0.05 s, the queue check itself timed out
    # on a machine at load 16)
    checker = HealthChecker(check_timeout=1.0)
    checker.register_check("queue", sync_check)
    checker.register_check("upstream", failing_check)
    checker.register_check("hangs", hanging_check)
    checker.register_check("weird", lambda: 42)
    checker.register_check("state", lambda: HealthState.HEALTHY)
    status = await checker.perform_health_check()
    queue = status.checks["queue"]
    assert (queue.status, queue.message, queue.details, queue.recommendation) == (
        HealthState.DEGRADED,
        "queue is long",
        {"length": 900},
        "drain the queue",
    )
    assert seen_threads and seen_threads[0] != loop_thread
    upstream = status.checks["upstream"]
    assert upstream.status is HealthState.UNHEALTHY
    assert upstream.message == "check raised ConnectionError: upstream unreachable"
    assert status.checks["hangs"].message == "timed out after 1 s"
    assert "expected CheckOutcome" in status.checks["weird"].message
    assert status.checks["state"].status is HealthState.HEALTHY
    assert status.status is HealthState.DEGRADED


async def test_a_check_or_repair_raising_its_own_timeout_or_cancellation_fails_only_itself() -> None:
    """A check raising TimeoutError itself (its own probe's timeout) read "timed out after 10 s", as if it
    had hung; a check or repair whose own await was cancelled (a future someone else cancelled) raised
    CancelledError out of perform_health_check, which ended the periodic checks for good."""

    async def probe_times_out() -> bool:
        raise TimeoutError("upstream did not answer in 1 s")

    async def awaits_a_cancelled_future() -> bool:
        future = asyncio.get_running_loop().create_future()
        future.cancel()
        return bool(await future)

    def broken() -> CheckOutcome:
        return CheckOutcome(HealthState.UNHEALTHY, "broken", repair=awaits_a_cancelled_future)

    checker = HealthChecker(enable_auto_recovery=True)
    checker.register_check("upstream", probe_times_out)
    checker.register_check("cancelled", awaits_a_cancelled_future)
    checker.register_check("thing", broken)
    status = await checker.perform_health_check()
    assert status.checks["upstream"].message == "check raised TimeoutError: upstream did not answer in 1 s"
    cancelled = status.checks["cancelled"]
    assert cancelled.status is HealthState.UNHEALTHY
    assert cancelled.message == "check raised CancelledError (its own await was cancelled)"
    assert [(r.check, r.action) for r in status.recoveries] == [
        ("thing", "repair failed: CancelledError (its own await was cancelled)")
    ]
    assert status.status is HealthState.DEGRADED

    ran = asyncio.Event()

    async def counts_runs() -> bool:
        ran.set()
        return True

    checker.register_check("runs", counts_runs)
    async with HealthChecker(check_interval=0.01) as periodic:
        periodic.register_check("cancelled", awaits_a_cancelled_future)
        periodic.register_check("runs", counts_runs)
        for _ in range(3):  # several periodic runs: the first one's CancelledError no longer ends them
            ran.clear()
            await asyncio.wait_for(ran.wait(), timeout=5)
        assert periodic.is_running

    # the caller's own cancellation still cancels the run
    hang = asyncio.Event()

    async def hangs() -> bool:
        await hang.wait()
        return True

    slow = HealthChecker()
    slow.register_check("hangs", hangs)
    running = asyncio.create_task(slow.perform_health_check())
    await asyncio.sleep(0.05)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert _others() == []


async def test_hung_sync_checks_keep_their_own_threads() -> None:
    """Issue 18.9's thread-pool sharing, health side: a sync check that hangs past ``check_timeout``
    keeps its thread; run on the loop's default pool (memory storage's), 40 of them left no thread for
    storage I/O."""
    gate = threading.Event()

    def hangs() -> bool:
        gate.wait(30)
        return True

    checker = HealthChecker(check_timeout=0.1)
    for number in range(40):
        checker.register_check(f"hangs_{number}", hangs)
    try:
        status = await checker.perform_health_check()
        assert all(status.checks[f"hangs_{n}"].message == "timed out after 0.1 s" for n in range(40))
        # the default pool is free: a storage-like blocking call completes while the checks still hang
        assert await asyncio.wait_for(asyncio.to_thread(threading.current_thread), 5.0) is not None
        assert not gate.is_set()
    finally:
        gate.set()


# ---------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"check_interval": 0}, "check_interval"),
        ({"check_interval": -1.0}, "check_interval"),
        ({"check_timeout": float("nan")}, "check_timeout"),
        ({"thresholds": {}}, "thresholds"),
        ({"storage_path": 3}, "storage_path"),
        ({"enable_auto_recovery": "no"}, "enable_auto_recovery"),  # "no" switched repairs on
        ({"enable_auto_recovery": 0}, "enable_auto_recovery"),
    ],
)
def test_invalid_settings(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSettingError, match=rf"^{field}: got .*; allowed "):
        HealthChecker(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"event_loop_lag_ms": "100"}, "event_loop_lag_ms"),
        ({"min_free_disk_mb": None}, "min_free_disk_mb"),
        ({"min_free_disk_mb": -5.0}, "min_free_disk_mb"),
        ({"error_rate_degraded": float("nan")}, "error_rate_degraded"),
        ({"error_rate_degraded": 5}, "error_rate_degraded"),  # 5 meant as 5 %: never degraded
        ({"error_rate_unhealthy": 1.5}, "error_rate_unhealthy"),
        ({"write_failures_unhealthy": 2.0}, "write_failures_unhealthy"),
        ({"process_memory_limit_mb": "512"}, "process_memory_limit_mb"),
    ],
)
async def test_bad_health_thresholds_are_refused_when_made(kwargs: dict[str, Any], field: str) -> None:
    """Bad limits were accepted, then their check failed with "check raised TypeError" on every run."""
    with pytest.raises(InvalidSettingError, match=f"^{field}: got "):
        HealthThresholds(**kwargs)
    limits = HealthThresholds(memory_percent_unhealthy=100.0, process_memory_limit_mb=None)
    status = await HealthChecker(thresholds=limits).perform_health_check()
    assert status.status is HealthState.HEALTHY


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"memory_percent_degraded": 150.0},
            "memory_percent_degraded: got 150.0; allowed a percentage from 0",
        ),
        ({"memory_percent_unhealthy": 101}, "memory_percent_unhealthy: got 101; allowed a percentage from 0"),
        ({"memory_percent_degraded": -1.0}, "memory_percent_degraded: got -1.0; allowed a percentage from 0"),
        ({"process_memory_limit_mb": -512.0}, "process_memory_limit_mb: got -512.0; allowed a number >= 0"),
        (
            {"memory_percent_degraded": 95.0, "memory_percent_unhealthy": 80.0},
            "memory_percent_degraded: got 95.0; allowed at most memory_percent_unhealthy (80.0)",
        ),
        (
            {"memory_percent_unhealthy": 85.0},  # below the default degraded level (90)
            "memory_percent_degraded: got 90.0; allowed at most memory_percent_unhealthy (85.0)",
        ),
        (
            {"error_rate_degraded": 0.5, "error_rate_unhealthy": 0.2},
            "error_rate_degraded: got 0.5; allowed at most error_rate_unhealthy (0.2)",
        ),
    ],
)
def test_health_thresholds_out_of_range_or_out_of_order_are_refused(
    kwargs: dict[str, Any], message: str
) -> None:
    """A percentage over 100 never fired, a negative limit always did, and a degraded level above the
    unhealthy one never showed (the check is unhealthy first): all were accepted silently."""
    with pytest.raises(InvalidSettingError, match=f"^{re.escape(message)}"):
        HealthThresholds(**kwargs)
    # the limits that make sense stay accepted, the edges included (equal levels, 0 and 100)
    HealthThresholds(memory_percent_degraded=0.0, memory_percent_unhealthy=0.0, process_memory_limit_mb=0.0)
    HealthThresholds(memory_percent_degraded=100, memory_percent_unhealthy=100)
    HealthThresholds(error_rate_degraded=0.3, error_rate_unhealthy=0.3, memory_percent_unhealthy=90.0)


async def test_numpy_numbers_are_accepted_as_health_thresholds() -> None:
    """numpy.int64(5) was refused as "not an integer" (and numpy.float32 as "not a number")."""
    import numpy

    limits = HealthThresholds(
        min_operations=numpy.int64(5),
        error_rate_degraded=numpy.float32(0.1),
        min_free_disk_mb=numpy.int64(1),
        memory_percent_unhealthy=100.0,
        process_memory_limit_mb=None,
    )
    assert type(limits.min_operations) is int and limits.min_operations == 5
    assert type(limits.error_rate_degraded) is float
    status = await HealthChecker(thresholds=limits).perform_health_check()
    assert status.status is HealthState.HEALTHY


def test_invalid_registrations_change_nothing() -> None:
    checker = HealthChecker()
    with pytest.raises(InvalidHealthCheckError, match="name: got 'storage'; allowed a name not registered"):
        checker.register_check("storage", lambda: True)
    with pytest.raises(InvalidHealthCheckError, match="name: got ''"):
        checker.register_check("", lambda: True)
    with pytest.raises(InvalidHealthCheckError, match="fn: got 'x'; allowed a callable"):
        checker.register_check("x", "x")  # type: ignore[arg-type]
    with pytest.raises(InvalidHealthCheckError, match="name: got 'nope'; allowed one of"):
        checker.unregister_check("nope")
    assert checker.check_names == BUILTIN
    with pytest.raises(InvalidHealthCheckError, match=r"^critical: got 'no'; allowed True or False"):
        checker.register_check("x", lambda: True, critical="no")  # type: ignore[arg-type]
    with pytest.raises(InvalidHealthCheckError, match=r"^replace: got 1; allowed True or False"):
        checker.register_check("storage", lambda: False, replace=1)  # type: ignore[arg-type]
    assert checker.check_names == BUILTIN
    checker.unregister_check("event_loop")
    assert "event_loop" not in checker.check_names


# ------------------------------------------------------------------------------ faults and recovery


async def test_removed_storage_directory_degrades_and_auto_recovery_recreates_it(tmp_path: Path) -> None:
    storage = tmp_path / "store"
    storage.mkdir()
    checker = HealthChecker(storage_path=storage, enable_auto_recovery=False)
    assert (await checker.perform_health_check()).status is HealthState.HEALTHY
    shutil.rmtree(storage)  # the fault

    status = await checker.perform_health_check()
    assert status.status is HealthState.DEGRADED
    result = status.checks["storage"]
    assert result.status is HealthState.UNHEALTHY and f"{storage} is missing" in result.message
    assert "recreate missing directories" in (result.recommendation or "")
    assert status.recoveries == []

    checker.enable_auto_recovery = True
    status = await checker.perform_health_check()
    assert status.status is HealthState.HEALTHY
    assert storage.is_dir()
    assert [(r.check, r.success) for r in status.recoveries] == [("storage", True)]
    assert status.recoveries[0].action == f"recreated {storage}"
    assert checker.recovery_history == status.recoveries


async def test_auto_recovery_follows_the_context_manager_config(tmp_path: Path) -> None:
    on = _Parts(config=ContextManagerConfig(cache_path=tmp_path, enable_auto_recovery=True))
    off = _Parts(config=ContextManagerConfig(cache_path=tmp_path, enable_auto_recovery=False))
    assert HealthChecker(context_manager=on).enable_auto_recovery is True
    assert HealthChecker(context_manager=off).enable_auto_recovery is False
    assert HealthChecker().enable_auto_recovery is False


async def test_low_free_disk_space(tmp_path: Path) -> None:
    free_mb = shutil.disk_usage(tmp_path).free / 1048576.0
    checker = HealthChecker(storage_path=tmp_path, thresholds=HealthThresholds(min_free_disk_mb=free_mb * 2))
    result = (await checker.perform_health_check()).checks["storage"]
    assert result.status is HealthState.DEGRADED and "MB free" in result.message
    checker = HealthChecker(storage_path=tmp_path, thresholds=HealthThresholds(min_free_disk_mb=free_mb * 20))
    assert (await checker.perform_health_check()).checks["storage"].status is HealthState.UNHEALTHY


@pytest.fixture
def store(tmp_path: Path) -> Any:
    store = SQLiteStore(tmp_path / "memories.sqlite3")
    store.open()
    now = time.time()
    store.put(
        [
            Memory(id=f"m{i}", content=f"python fact {i}", tier=MemoryTier.LONG, created_at=now)
            for i in range(30)
        ]
    )
    yield store
    store.close()


async def test_damaged_fts_index_degrades_and_auto_recovery_rebuilds_it(store: SQLiteStore) -> None:
    checker = HealthChecker(context_manager=_Parts(memory_manager=store))
    assert (await checker.perform_health_check()).status is HealthState.HEALTHY
    with sqlite3.connect(store.path) as damage:  # the fault, from another connection
        damage.execute("DELETE FROM memories_fts_data WHERE id > 1")

    status = await checker.perform_health_check()
    assert status.status is HealthState.DEGRADED
    database = status.checks["database"]
    assert database.status is HealthState.DEGRADED and "full-text index damaged" in database.message
    assert database.details["sqlite"] == "ok" and database.details["fts"] != "ok"
    assert "malformed" in database.details["fts"]  # found by the quick check's read of the index

    checker.enable_auto_recovery = True
    status = await checker.perform_health_check()
    assert status.status is HealthState.HEALTHY
    assert [(r.check, r.action, r.success) for r in status.recoveries] == [
        ("database", "rebuilt the full-text index (30 rows)", True)
    ]
    assert len(store.search('"python"', 5)) == 5


async def test_memory_pressure_thresholds() -> None:
    checker = HealthChecker(thresholds=HealthThresholds(memory_percent_degraded=0.0))
    result = (await checker.perform_health_check()).checks["memory_pressure"]
    assert result.status is HealthState.DEGRADED and result.details["system_memory_percent"] > 0
    limits = HealthThresholds(memory_percent_degraded=0.0, memory_percent_unhealthy=0.0)
    checker = HealthChecker(thresholds=limits)
    assert (await checker.perform_health_check()).checks["memory_pressure"].status is HealthState.UNHEALTHY
    checker = HealthChecker(thresholds=HealthThresholds(process_memory_limit_mb=1.0))
    result = (await checker.perform_health_check()).checks["memory_pressure"]
    assert result.status is HealthState.DEGRADED and "process uses" in result.message


async def test_a_blocked_event_loop_is_detected() -> None:
    checker = HealthChecker()
    asyncio.get_running_loop().call_later(0.005, time.sleep, 0.25)  # the fault: block the loop
    result = (await checker.perform_health_check()).checks["event_loop"]
    assert result.status is HealthState.DEGRADED
    assert result.details["lag_ms"] >= 100.0
    assert "asyncio.to_thread" in (result.recommendation or "")


async def test_error_rate_from_the_managers_and_running_monitors() -> None:
    own = PerformanceMonitor(collect_library_operations=False)
    checker = HealthChecker(context_manager=_Parts(performance_monitor=own))
    for index in range(20):
        own.record_operation("search_memory", 0.001, index % 10 != 0)  # 10 % failures
    result = (await checker.perform_health_check()).checks["error_rate"]
    assert result.status is HealthState.DEGRADED and result.details["error_rate"] == pytest.approx(0.1)

    running = PerformanceMonitor(sample_interval=10.0)
    async with running:
        for _ in range(10):
            running.record_operation("execute_tool", 0.001, False)
        result = (await HealthChecker().perform_health_check()).checks["error_rate"]
        assert result.status is HealthState.UNHEALTHY and result.details["error_rate"] == 1.0


async def test_a_dead_background_task_is_restarted() -> None:
    class Worker:
        def __init__(self) -> None:
            self.task: asyncio.Task[None] | None = None
            self.starts = 0

        async def start(self) -> None:
            self.starts += 1
            self.task = asyncio.create_task(self._run())

        async def _run(self) -> None:
            if self.starts == 1:
                raise RuntimeError("worker crashed")
            await asyncio.Event().wait()

    worker = Worker()
    await worker.start()
    with pytest.raises(RuntimeError):
        await worker.task  # type: ignore[misc]
    checker = HealthChecker(enable_auto_recovery=False)
    checker.watch_background_task(
        "worker", lambda: worker.task is not None and not worker.task.done(), worker.start
    )
    status = await checker.perform_health_check()
    assert status.checks["background_tasks"].status is HealthState.DEGRADED
    assert status.checks["background_tasks"].details["dead"] == ["worker"]

    checker.enable_auto_recovery = True
    status = await checker.perform_health_check()
    assert status.status is HealthState.HEALTHY and worker.starts == 2
    assert [(r.check, r.action) for r in status.recoveries] == [("background_tasks", "restarted worker")]
    assert worker.task is not None
    worker.task.cancel()
    await asyncio.gather(worker.task, return_exceptions=True)


async def test_a_failed_repair_is_recorded() -> None:
    checker = HealthChecker(enable_auto_recovery=True)

    def broken_restart() -> None:
        raise OSError("cannot restart")

    checker.watch_background_task("gone", lambda: False, broken_restart)
    status = await checker.perform_health_check()
    assert status.status is HealthState.DEGRADED
    assert status.recoveries[0].success is False
    assert status.recoveries[0].action.startswith("repair failed: OSError: cannot restart")
    report = await checker.generate_diagnostic_report()
    assert any(error["source"] == "recovery:background_tasks" for error in report.recent_errors)


# -------------------------------------------------------------------------------- periodic, report


async def test_periodic_checks_run_in_the_background_and_stop_cleanly() -> None:
    ran = asyncio.Event()

    async def probe() -> bool:
        ran.set()
        return True

    async with HealthChecker(check_interval=0.01) as checker:
        checker.register_check("probe", probe)
        assert checker.is_running
        await ran.wait()
    assert not checker.is_running
    assert _others() == []


def test_no_pending_task_after_stop_in_debug_mode(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        checker = HealthChecker(check_interval=0.005)
        ran = asyncio.Event()

        async def probe() -> bool:
            ran.set()
            return True

        checker.register_check("probe", probe)
        await checker.start()
        await ran.wait()
        await checker.stop()
        assert [task for task in asyncio.all_tasks() if task is not asyncio.current_task()] == []

    assert DESTROYED_PENDING not in run_leaving_leftovers(main, caplog)


async def test_diagnostic_report(tmp_path: Path) -> None:
    monitor = PerformanceMonitor(collect_library_operations=False)
    for _ in range(10):
        monitor.record_operation("execute_tool", 0.001, False, error=TimeoutError("tool slow"))
    created = time.perf_counter()
    checker = HealthChecker(context_manager=_Parts(performance_monitor=monitor), storage_path=tmp_path)
    (tmp_path / "data.bin").write_bytes(b"x" * 1000)
    (tmp_path / "memories.sqlite3").write_bytes(b"y" * 100)
    report = await checker.generate_diagnostic_report()
    assert isinstance(report, DiagnosticReport)
    assert report.status is HealthState.DEGRADED
    assert "Operations are failing: see the recent errors in the diagnostic report." in report.recommendations
    assert any(
        line.startswith("Error rate is 100.0%") for line in report.recommendations
    )  # the monitor's rule
    assert {"python", "platform", "pid", "process_memory_mb", "system_memory_percent"} <= set(report.system)
    # the lag is the event_loop check's reading; the uptime counts from the checker's creation
    assert report.system["event_loop_lag_ms"] == report.checks["event_loop"].details["lag_ms"]
    assert 0.0 < report.system["checker_uptime_s"] <= time.perf_counter() - created + 0.05
    assert report.storage["database_files"] == {str(tmp_path / "memories.sqlite3"): 100}
    directory = report.storage["directories"][0]
    assert directory["path"] == str(tmp_path) and directory["exists"] and directory["size_bytes"] >= 1000
    assert directory["free_disk_mb"] > 0
    sources = {error["source"] for error in report.recent_errors}
    assert {"check:error_rate", "operation:execute_tool"} <= sources
    data = report.to_dict()
    assert data["status"] == "degraded" and data["checks"]["error_rate"]["status"] == "unhealthy"
    json.dumps(data)  # JSON-friendly


async def test_a_healthy_report_has_no_recommendations(tmp_path: Path) -> None:
    report = await HealthChecker(check_interval=5.0, storage_path=tmp_path).generate_diagnostic_report()
    assert report.status is HealthState.HEALTHY
    assert report.recommendations == []


async def test_the_periodic_database_check_never_waits_for_writes(tmp_path: Path) -> None:
    """Issue 18.10, through the health checker of a real manager: the database check completes while
    the memory write lock is held (it used to queue behind it, and writes behind the check)."""
    from context_manager.core.enhanced_context_manager import EnhancedContextManager

    config = ContextManagerConfig(cache_path=tmp_path, enable_health_checks=False)
    async with EnhancedContextManager(config) as manager:
        await manager.memory_manager.add_memory("kept in the long-term tier", importance=0.9)
        assert manager.health_checker is not None
        async with manager.memory_manager._write_lock:
            status = await asyncio.wait_for(manager.health_checker.perform_health_check(), 5.0)
        database = status.checks["database"]
        assert database.status is HealthState.HEALTHY and database.details["mode"] == "quick"


async def test_failing_memory_writes_make_health_degraded_then_unhealthy_and_it_recovers(
    tmp_path: Path,
) -> None:
    """Issue 15.2: health said "healthy" while writes failed. A real failure: the storage directory
    is gone, so compaction (a new file next to the log) fails with StorageError."""
    from context_manager.core.enhanced_context_manager import EnhancedContextManager
    from context_manager.core.errors import StorageError

    config = ContextManagerConfig(
        cache_path=tmp_path / "cache",
        storage_path=tmp_path / "storage",
        enable_health_checks=False,
        enable_auto_recovery=False,
    )
    async with EnhancedContextManager(config) as manager:
        checker = manager.health_checker
        assert checker is not None
        memory = manager.memory_manager
        await memory.add_memory("written before the fault")
        writes = (await checker.perform_health_check()).checks["storage_writes"]
        assert writes.status is HealthState.HEALTHY and writes.message == "1 write, none failed"
        shutil.rmtree(config.resolved_storage_path)
        verdicts = []
        for _ in range(3):
            with pytest.raises(StorageError):
                await memory.optimize()
            verdicts.append((await checker.perform_health_check()).checks["storage_writes"])
        assert [result.status for result in verdicts] == [
            HealthState.DEGRADED,
            HealthState.DEGRADED,
            HealthState.UNHEALTHY,
        ]
        assert verdicts[0].message.startswith("the latest memory write failed: StorageError: ")
        assert verdicts[2].message.startswith("the last 3 memory writes failed: StorageError: ")
        assert verdicts[2].details["consecutive_failures"] == 3 and verdicts[2].critical
        assert verdicts[2].recommendation and "free disk space" in verdicts[2].recommendation
        status = await checker.perform_health_check()
        assert status.status is HealthState.UNHEALTHY  # a critical check
        assert (await memory.get_memory_stats())["writes"]["failures"] == 3

        config.resolved_storage_path.mkdir(mode=0o700)  # the fault is gone: the next write succeeds
        await memory.optimize()
        recovered = (await checker.perform_health_check()).checks["storage_writes"]
        assert recovered.status is HealthState.HEALTHY
        assert recovered.message.startswith("writes succeed again (2 succeeded, 3 failed; the last failure:")


async def test_a_sync_check_still_hung_from_an_earlier_run_is_not_started_again(tmp_path: Path) -> None:
    """Every run started the hung check again in a new thread: after 16 runs (16 minutes of periodic
    checks) the checker's threads were all held by it and every built-in sync check (storage, memory
    pressure, error rate, background tasks) reported "timed out" too, so a removed storage directory
    went unseen and unrepaired."""
    gate = threading.Event()
    calls: list[float] = []

    def hangs() -> bool:
        calls.append(time.monotonic())
        return gate.wait(30)

    # fsync is slow under load; and a loaded machine's timers fire late (107 ms at load 16: the built-in
    # event-loop check failed), which is no check held by the hung one
    checker = HealthChecker(storage_path=tmp_path, check_timeout=3.0, thresholds=LOAD_PROOF)
    checker.register_check("upstream", hangs)
    try:
        for run in range(20):
            status = await checker.perform_health_check()
            failing = {result.name: result.message for result in status.failing_checks}
            assert list(failing) == ["upstream"], (run, failing)
            if run:
                assert failing["upstream"].startswith("still hung: the run started ")
                assert "not started again until it returns" in failing["upstream"]
            advice = status.checks["upstream"].recommendation
            assert advice == "Check 'upstream' hangs: look at what it waits for."
        assert len(calls) == 1
    finally:
        gate.set()
    for _ in range(500):  # its thread returns; the next run starts the check again
        status = await checker.perform_health_check()
        if status.checks["upstream"].status is HealthState.HEALTHY:
            break
        await asyncio.sleep(0.01)
    assert status.status is HealthState.HEALTHY
    assert len(calls) == 2


async def test_a_replaced_hung_check_runs_at_once() -> None:
    gate = threading.Event()
    # 1 s: the replacing check's thread must start and return within it (at 0.05 s it timed out 1 run of 40
    # on a loaded machine: "timed out after 0.05 s" instead of healthy)
    checker = HealthChecker(check_timeout=1.0)
    checker.register_check("upstream", lambda: gate.wait(30))
    try:
        assert (await checker.perform_health_check()).checks["upstream"].status is HealthState.UNHEALTHY
        checker.register_check("upstream", lambda: True, replace=True)
        assert (await checker.perform_health_check()).checks["upstream"].status is HealthState.HEALTHY
    finally:
        gate.set()


async def test_a_sync_repair_still_hung_from_an_earlier_run_is_not_started_again(tmp_path: Path) -> None:
    """Each periodic run started the failing check's hung sync repair again in a new thread: after 16
    runs the built-in sync checks found no thread and all reported "timed out"."""
    gate = threading.Event()
    repairs: list[float] = []

    def repair() -> str:
        repairs.append(time.monotonic())
        gate.wait(30)
        return "reconnected"

    checker = HealthChecker(
        storage_path=tmp_path,
        enable_auto_recovery=True,
        repair_timeout=0.05,
        thresholds=LOAD_PROOF,  # the event-loop check failed at load 15 ("a timer fired ... late")
    )
    checker.register_check("upstream", lambda: CheckOutcome(HealthState.DEGRADED, "down", repair=repair))
    try:
        for run in range(20):
            status = await checker.perform_health_check()
            assert [result.name for result in status.failing_checks] == ["upstream"], run
            [recovery] = status.recoveries
            assert not recovery.success
            if run:
                assert recovery.action.startswith("repair not started: the one started ")
            else:
                assert recovery.action == "repair failed: timed out after 0.05 s"
        assert len(repairs) == 1
    finally:
        gate.set()
    for _ in range(500):  # the hung repair returns; the next failing run repairs again
        status = await checker.perform_health_check()
        if status.recoveries[0].action == "reconnected":
            break
        await asyncio.sleep(0.01)
    assert len(repairs) == 2


def test_a_checker_serves_a_second_event_loop() -> None:
    """The run lock was bound to the first event loop that waited on it: in a second loop (a job run
    with ``asyncio.run`` again, a test's own loop), a health check made beside the periodic one raised
    ``RuntimeError: ... is bound to a different event loop``."""
    checker = HealthChecker(check_interval=60.0)

    async def two_at_once() -> list[HealthState]:
        statuses = await asyncio.gather(checker.perform_health_check(), checker.perform_health_check())
        return [status.status for status in statuses]

    for _ in range(2):
        assert asyncio.run(two_at_once()) == [HealthState.HEALTHY, HealthState.HEALTHY]


async def test_a_bad_watch_registration_names_the_argument_and_changes_nothing() -> None:
    """A restart that was not callable was reported as ``is_alive: got <the is_alive function>``."""
    checker = HealthChecker()
    with pytest.raises(
        InvalidHealthCheckError, match=r"^restart: got 'start'; allowed a callable without arguments or None"
    ):
        checker.watch_background_task("worker", lambda: True, "start")  # type: ignore[arg-type]
    with pytest.raises(InvalidHealthCheckError, match=r"^is_alive: got True; allowed a callable returning"):
        checker.watch_background_task("worker", True)  # type: ignore[arg-type]
    status = await checker.perform_health_check()
    assert status.checks["background_tasks"].details["watched"] == []


def test_a_checker_whose_event_loop_was_closed_checks_again_in_a_new_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its loop closed with the periodic task pending, the checker still counted itself running:
    ``start()`` in a new loop did nothing (no periodic check ran) and ``stop()`` raised
    ``RuntimeError: Event loop is closed``."""
    checker = HealthChecker(check_interval=0.02)

    async def start() -> None:
        await checker.start()

    run_leaving_leftovers(start, caplog)  # the loop is closed with the periodic task pending
    assert not checker.is_running

    async def afterwards() -> None:
        await checker.start()
        assert checker.is_running
        for _ in range(500):
            if checker.last_status is not None:
                break
            await asyncio.sleep(0.01)
        assert checker.last_status is not None
        await asyncio.wait_for(checker.stop(), 5.0)

    asyncio.run(afterwards())
    run_leaving_leftovers(start, caplog)

    async def stop_only() -> None:
        await asyncio.wait_for(checker.stop(), 5.0)

    asyncio.run(stop_only())
    assert not checker.is_running
    gc.collect()  # the dropped tasks of the closed loops go now, not in a later test's log


async def test_the_error_rate_check_forgets_failures_older_than_its_window() -> None:
    """The check judged the last 1,000 operations whatever their age: a burst of failures long ago kept a
    recovered, quiet service unhealthy at every periodic check."""
    assert HealthThresholds().error_window_s == 300.0
    own = PerformanceMonitor(collect_library_operations=False)
    checker = HealthChecker(
        context_manager=_Parts(performance_monitor=own), thresholds=HealthThresholds(error_window_s=0.3)
    )
    for _ in range(10):
        own.record_operation("execute_tool", 0.001, False)
    result = (await checker.perform_health_check()).checks["error_rate"]
    assert result.status is HealthState.UNHEALTHY
    assert result.message == "100.0% of the last 10 operations failed (in the last 0.3 s)"
    assert result.details["window_s"] == 0.3
    await asyncio.sleep(0.4)
    result = (await checker.perform_health_check()).checks["error_rate"]
    assert result.status is HealthState.HEALTHY and result.details["operations"] == 0
    for _ in range(10):
        own.record_operation("execute_tool", 0.001, True)
    result = (await checker.perform_health_check()).checks["error_rate"]
    assert result.status is HealthState.HEALTHY and result.details["error_rate"] == 0.0
    assert result.details["operations"] == 10


@pytest.mark.parametrize("window", [0.0, -300.0, float("nan"), "300", None])
def test_a_bad_health_error_window_is_refused(window: Any) -> None:
    with pytest.raises(InvalidSettingError, match=r"^error_window_s: got .*; allowed a number > 0"):
        HealthThresholds(error_window_s=window)


async def test_a_report_with_an_unbounded_error_window_is_strict_json() -> None:
    """``error_window_s=math.inf`` (judge the whole ring buffer) put ``inf`` in the check's details, and
    ``report.to_dict()`` was no longer valid JSON (``Infinity``)."""
    import math

    checker = HealthChecker(thresholds=HealthThresholds(error_window_s=math.inf))
    report = await checker.generate_diagnostic_report()
    json.dumps(report.to_dict(), allow_nan=False)
    assert report.checks["error_rate"].details["window_s"] is None


async def test_a_report_with_custom_details_that_are_not_json_is_still_strict_json() -> None:
    """A custom check's details with NaN, an infinity, a set, a tuple or another object (a queue's
    ``ratio`` of 0/0, a set of stuck worker names) went into ``report.to_dict()`` as they were:
    ``json.dumps`` then failed (``set is not JSON serializable``) or wrote ``NaN``, which is not JSON,
    although the report is documented as JSON-ready. The check itself stays healthy."""
    import decimal
    import math

    details = {
        "ratio": math.nan,
        "peak": math.inf,
        "workers": {"w2", "w1"},
        "pair": (1, 2.5),
        "nested": {"low": [-math.inf, 3]},
        "amount": decimal.Decimal("1.5"),
        ("a", "b"): "a tuple key",
        7: "an int key",
    }
    checker = HealthChecker()
    checker.register_check("queue", lambda: CheckOutcome(HealthState.HEALTHY, "ok", details))
    report = await checker.generate_diagnostic_report()
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["checks"]["queue"]["status"] == "healthy"
    assert data["checks"]["queue"]["details"] == {
        "ratio": None,
        "peak": None,
        "workers": ["w1", "w2"],
        "pair": [1, 2.5],
        "nested": {"low": [None, 3]},
        "amount": "1.5",
        "('a', 'b')": "a tuple key",
        "7": "an int key",
    }
    assert report.checks["queue"].details["workers"] == {"w1", "w2"}  # the report itself is unchanged


async def test_health_thresholds_assigned_later_are_checked_and_used() -> None:
    """``manager.health_checker.thresholds = {...}`` was taken silently; then every built-in check using a
    limit failed with "check raised AttributeError" at each run."""
    own = PerformanceMonitor(collect_library_operations=False)
    checker = HealthChecker(context_manager=_Parts(performance_monitor=own))
    for index in range(10):
        own.record_operation("op", 0.001, index != 0)  # 10 %: degraded by default
    with pytest.raises(InvalidSettingError, match=r"^thresholds: got .*; allowed a HealthThresholds"):
        checker.thresholds = {"error_rate_degraded": 0.2}  # type: ignore[assignment]
    assert (await checker.perform_health_check()).checks["error_rate"].status is HealthState.DEGRADED
    checker.thresholds = HealthThresholds(error_rate_degraded=0.2)
    assert (await checker.perform_health_check()).checks["error_rate"].status is HealthState.HEALTHY


async def test_managers_sharing_a_store_run_one_storage_and_database_check_per_interval(
    tmp_path: Path,
) -> None:
    """Each manager of a shared store ran its own storage and database checks: 1,000 open managers ran
    ~1,000 of each a minute against one store. One check per store runs; the others of the same
    interval reuse its result (marked with its age). A manager's own check after its interval, or
    after a repair, is real: what one manager alone reports is unchanged."""
    from context_manager.core.enhanced_context_manager import EnhancedContextManager

    config = ContextManagerConfig(cache_path=tmp_path / "cache", enable_health_checks=False)
    managers = [EnhancedContextManager(config, conversation_id=f"c-{index}") for index in range(5)]
    for manager in managers:
        await manager.initialize()
    try:
        checkers = [manager.health_checker for manager in managers]
        assert all(checker is not None for checker in checkers)
        statuses = await asyncio.gather(*(checker.perform_health_check() for checker in checkers if checker))
        owners: dict[str, int] = {}
        for name in ("storage", "database"):
            results = [status.checks[name] for status in statuses]
            assert all(result.status is HealthState.HEALTHY for result in results)
            assert len({result.message for result in results}) == 1
            real = [
                index for index, result in enumerate(results) if "reused_result_age_s" not in result.details
            ]
            ages = [result.details.get("reused_result_age_s") for result in results]
            assert len(real) == 1, f"{name}: {len(real)} real checks of one store"
            owners[name] = real[0]
            assert all(age is None or 0 <= age < 5 for age in ages)
        assert all("reused_result_age_s" not in status.checks["event_loop"].details for status in statuses)
        # the owner's next check is real (its own result is never reused); the others reuse that one
        owner = checkers[owners["storage"]]
        assert owner is not None
        again = await owner.perform_health_check()
        assert "reused_result_age_s" not in again.checks["storage"].details
        other = checkers[(owners["storage"] + 1) % len(checkers)]
        assert other is not None
        assert "reused_result_age_s" in (await other.perform_health_check()).checks["storage"].details
        # older than the checker's interval: real again
        other.check_interval = 0.05
        await asyncio.sleep(0.1)
        assert "reused_result_age_s" not in (await other.perform_health_check()).checks["storage"].details
    finally:
        for manager in managers:
            await manager.cleanup()


def _health_threads() -> list[threading.Thread]:
    return [
        thread for thread in threading.enumerate() if thread.name.startswith("context-manager-health-check")
    ]


async def test_health_checks_leave_no_idle_threads_behind(tmp_path: Path) -> None:
    """Each checker kept the threads of its sync built-in checks (memory pressure, error rate,
    background tasks, storage) idle for ever, also after cleanup(): 50 open managers held ~160 threads,
    1,000 would hold thousands. The light checks run on the loop, and the checker's threads end once
    its run is over (a hung check's thread still runs until its call returns)."""
    from context_manager.core.enhanced_context_manager import EnhancedContextManager

    config = ContextManagerConfig(cache_path=tmp_path / "cache", enable_health_checks=False)
    managers = [EnhancedContextManager(config, conversation_id=f"c-{index}") for index in range(10)]
    for manager in managers:
        await manager.initialize()
    try:
        before = len(_health_threads())
        for manager in managers:
            assert manager.health_checker is not None
            status = await manager.health_checker.perform_health_check()
            assert status.status is HealthState.HEALTHY
            assert status.checks["memory_pressure"].details["process_memory_mb"] > 0
        for _ in range(100):  # idle threads end asynchronously, at once
            if len(_health_threads()) <= before:
                break
            await asyncio.sleep(0.01)
        assert len(_health_threads()) <= before
    finally:
        for manager in managers:
            await manager.cleanup()


async def test_an_unreachable_postgres_server_is_reported_as_such_not_as_a_hung_check(
    postgres_dsn: str, tmp_path: Path
) -> None:
    # The server goes down (or the network is cut) while the service runs. The database check waits for
    # a pooled connection for postgres_connect_timeout, 10 s by default as check_timeout is: the check
    # timed out first and read "timed out ... Check 'database' hangs: look at what it waits for",
    # not that the PostgreSQL server is unreachable, and not what to do about it.
    from context_manager.core.enhanced_context_manager import EnhancedContextManager
    from tests.postgres_support import ServerOutage

    outage = ServerOutage(postgres_dsn)
    await outage.restore()
    seconds = 2.0  # the defaults' relation (both 10 s), shorter
    try:
        config = ContextManagerConfig(
            memory_backend="postgres",
            postgres_dsn=outage.dsn,
            postgres_connect_timeout=seconds,
            postgres_pool_size=2,
            cache_path=tmp_path / "cache",
            storage_path=tmp_path / "memory",
            enable_health_checks=False,
        )
        async with EnhancedContextManager(config) as manager:
            checker = HealthChecker(context_manager=manager, check_timeout=seconds)
            status = await checker.perform_health_check()
            assert status.checks["database"].status is HealthState.HEALTHY, status.checks["database"].message
            await outage.cut()
            loop = asyncio.get_running_loop()
            started = loop.time()
            status = await checker.perform_health_check()
            database = status.checks["database"]
            assert loop.time() - started < seconds + 1.5
            assert database.status is HealthState.UNHEALTHY
            assert "PostgreSQL" in database.message and "hangs" not in (database.recommendation or "")
            assert database.recommendation is not None and "postgres_dsn" in database.recommendation
            assert status.status is HealthState.UNHEALTHY  # a critical check
            await outage.restore()
    finally:
        await outage.close()


async def test_concurrent_health_checks_share_the_next_run_instead_of_queueing_one_each() -> None:
    """Each call waited for the run lock and then ran every check itself: probes calling the checker at
    once (a readiness and a liveness probe, a load balancer) queued one run each, so with a check taking
    its whole ``check_timeout`` (a PostgreSQL server down), six callers waited six timeouts and a probe
    behind them timed out. A call made during a run now shares the next run with every other such call:
    two runs at most, each result from checks started after the call."""
    runs: list[float] = []

    async def slow() -> bool:
        runs.append(time.monotonic())
        await asyncio.sleep(60)  # hangs: timed out by the checker
        return True

    checker = HealthChecker(check_timeout=0.3)
    checker.register_check("slow", slow)
    started = time.monotonic()
    statuses = await asyncio.gather(*(checker.perform_health_check() for _ in range(6)))
    elapsed = time.monotonic() - started
    assert len(runs) == 2, runs  # one run per call: 6
    assert elapsed < 1.5, elapsed  # 1.8 s and more, six timeouts one after the other
    assert all(status.checks["slow"].message == "timed out after 0.3 s" for status in statuses)
    assert statuses[1] is statuses[5]  # the callers of the second run share it

    # a probe with a deadline, behind callers already waiting, is answered within two runs
    waiting = [asyncio.create_task(checker.perform_health_check()) for _ in range(4)]
    await asyncio.sleep(0)
    async with asyncio.timeout(1.2):
        await checker.perform_health_check()
    await asyncio.gather(*waiting)


async def test_a_call_made_during_a_run_gets_checks_started_after_it() -> None:
    state = {"value": "before"}
    seen: list[str] = []
    gate, running = asyncio.Event(), asyncio.Event()

    async def reads_state() -> CheckOutcome:
        value = state["value"]
        seen.append(value)
        running.set()
        if len(seen) == 1:
            await gate.wait()  # the first run is in progress while the state changes
        return CheckOutcome(HealthState.HEALTHY if value == "before" else HealthState.DEGRADED, value)

    checker = HealthChecker(check_timeout=5.0)
    checker.register_check("state", reads_state)
    first = asyncio.create_task(checker.perform_health_check())
    await running.wait()
    state["value"] = "after"  # changed during the first run: later callers must see it
    later = [asyncio.create_task(checker.perform_health_check()) for _ in range(3)]
    await asyncio.sleep(0.01)
    gate.set()
    assert (await first).checks["state"].message == "before"
    for status in await asyncio.gather(*later):
        assert status.checks["state"].message == "after" and status.status is HealthState.DEGRADED
    assert seen == ["before", "after"]


async def test_callers_sharing_a_run_whose_caller_was_cancelled_still_get_a_result() -> None:
    gate, running = asyncio.Event(), asyncio.Event()
    calls = 0

    async def blocks_first() -> bool:
        nonlocal calls
        calls += 1
        running.set()
        if calls == 1:
            await gate.wait()
        return True

    checker = HealthChecker(check_timeout=5.0)
    checker.register_check("blocks_first", blocks_first)
    first = asyncio.create_task(checker.perform_health_check())
    await running.wait()
    leader = asyncio.create_task(checker.perform_health_check())  # asks for the next run
    await asyncio.sleep(0.01)
    follower = asyncio.create_task(checker.perform_health_check())  # shares it
    await asyncio.sleep(0.01)
    leader.cancel()  # a probe's request dropped before the run it asked for started
    await asyncio.sleep(0.01)
    gate.set()
    assert (await first).status is HealthState.HEALTHY
    assert (await asyncio.wait_for(follower, 5)).status is HealthState.HEALTHY
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert calls == 2
    assert (await checker.perform_health_check()).status is HealthState.HEALTHY  # and later calls run
    assert calls == 3


async def test_a_check_or_repair_that_swallows_its_timeout_and_returns_late_is_timed_out(
    tmp_path: Path,
) -> None:
    """An async check that caught the cancellation of ``check_timeout`` and returned later (a probe library
    cleaning up under ``except BaseException``, a ``try/except CancelledError: return True``) was reported
    with what it returned, healthy, although it ran past ``check_timeout``; a repair doing so past
    ``repair_timeout`` was reported as done."""
    late = asyncio.Event()

    async def swallows_its_timeout() -> bool:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await late.wait()  # the timeout fired; it goes on anyway
        return True

    async def repair_swallows_its_timeout() -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)
        return "fixed"

    checker = HealthChecker(storage_path=tmp_path, check_timeout=0.05, enable_auto_recovery=True)
    checker.register_check("swallows", swallows_its_timeout)
    checker.register_check(
        "broken", lambda: CheckOutcome(HealthState.UNHEALTHY, "stuck", repair=repair_swallows_its_timeout)
    )
    checker.repair_timeout = 0.05
    running = asyncio.ensure_future(checker.perform_health_check())
    await asyncio.sleep(0.2)  # well past check_timeout
    late.set()
    status = await asyncio.wait_for(running, timeout=10)
    swallows = status.checks["swallows"]
    assert swallows.status is HealthState.UNHEALTHY
    assert swallows.message.startswith("timed out after 0.05 s")
    assert swallows.recommendation == "Check 'swallows' hangs: look at what it waits for."
    [recovery] = status.recoveries
    assert recovery.action == "repair failed: timed out after 0.05 s"
    assert not recovery.success


async def test_hung_durations_and_uptime_follow_the_monotonic_clock_not_the_wall_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """How long a hung check has run and ``checker_uptime_s`` were ``time.time()`` differences: after the
    wall clock stepped back an hour (NTP, a resumed VM) the check "started -3600 s ago" and the uptime read
    -3600. They are measured on the monotonic clock now; ``hung_since`` stays a wall-clock date."""
    checker_module = importlib.import_module("context_manager.core.health_checker.checker")
    gate = threading.Event()
    checker = HealthChecker(storage_path=tmp_path, check_timeout=1.0)
    checker.register_check("upstream", lambda: gate.wait(30))
    try:
        started = time.time()
        first = await checker.perform_health_check()
        assert first.checks["upstream"].status is HealthState.UNHEALTHY  # timed out, its thread still runs
        clocks = {name: getattr(time, name) for name in ("monotonic", "perf_counter", "sleep")}
        stepped_back = types.SimpleNamespace(time=lambda: time.time() - 3600.0, **clocks)
        monkeypatch.setattr(checker_module, "time", stepped_back)
        again = (await checker.perform_health_check()).checks["upstream"]
        ago = re.match(r"still hung: the run started (-?\d+) s ago", again.message)
        assert ago is not None and 0 <= int(ago.group(1)) < 60, again.message
        assert abs(again.details["hung_since"] - started) < 60  # the date it started, as the wall clock read
        report = await checker.generate_diagnostic_report()
        assert 0.0 <= report.system["checker_uptime_s"] < 60.0
    finally:
        gate.set()
