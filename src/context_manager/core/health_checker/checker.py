"""Health checks, diagnostic reports and automatic repair: :class:`HealthChecker`.

A checker runs named checks (built-in and your own), folds them into a :class:`HealthStatus` (a
:class:`HealthState`, a score in [0, 1] and one :class:`CheckResult` per check) and, with
auto-recovery, repairs the faults it knows how to repair::

    checker = HealthChecker(check_interval=5.0, context_manager=manager)
    await checker.start()                           # periodic checks in one owned background task
    status = await checker.perform_health_check()
    print(status.status.value, f"{status.health_score:.2f}")
    report = await checker.generate_diagnostic_report()
    await checker.stop()

Built-in checks (each can be replaced with ``register_check(name, fn, replace=True)``):

=================== ============================================================ =========================
name                what it looks at                                              repair (auto-recovery)
=================== ============================================================ =========================
``storage``         cache/storage directories exist, are writable; free disk      recreate a missing dir
``database``        ``memory_manager.check_integrity()``: SQLite and FTS index   ``rebuild_index()`` (FTS)
``memory_pressure`` system memory in use, process RSS                            none
``event_loop``      how late a short timer fires (something blocks the loop)     none
``error_rate``      recent failures in the manager's and running monitors        none
``background_tasks`` watched background tasks are alive                          restart them
=================== ============================================================ =========================

``storage`` needs a path (``storage_path=`` or the context manager's configuration) and ``database``
a context manager with a memory manager; the others always run.

Overall state: any *critical* check unhealthy -> ``UNHEALTHY``; otherwise any check not healthy ->
``DEGRADED``; else ``HEALTHY``. Score: mean of check scores (healthy 1, degraded 0.5, unhealthy 0),
critical checks counting twice.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import os
import platform
import shutil
import sys
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from context_manager.core.errors import InvalidHealthCheckError, InvalidSettingError
from context_manager.core.performance_monitor import PerformanceMonitor, running_monitors

__all__ = [
    "CheckOutcome",
    "CheckResult",
    "DiagnosticReport",
    "HealthChecker",
    "HealthState",
    "HealthStatus",
    "HealthThresholds",
    "RecoveryAction",
]

logger = logging.getLogger(__name__)

_MAX_RECENT_ERRORS = 50


class HealthState(StrEnum):
    """How healthy a check, or the whole system, is."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"

    @property
    def score(self) -> float:
        """1.0 healthy, 0.5 degraded, 0.0 unhealthy."""
        return _STATE_SCORE[self]


_STATE_SCORE = {HealthState.HEALTHY: 1.0, HealthState.DEGRADED: 0.5, HealthState.UNHEALTHY: 0.0}

Repair = Callable[[], Awaitable[str] | str]
"""An auto-recovery action: returns (or resolves to) a description of what it did; raises on failure."""


@dataclass(slots=True)
class CheckOutcome:
    """What a check function returns (it may also return a bool, a :class:`HealthState` or None)."""

    status: HealthState
    """The check's verdict."""
    message: str = ""
    """One line for humans."""
    details: dict[str, Any] = field(default_factory=dict)
    """Figures behind the verdict (JSON-friendly values)."""
    recommendation: str | None = None
    """What to do about it, for the diagnostic report."""
    repair: Repair | None = None
    """A repair auto-recovery may run when the check is not healthy."""


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The result of one check in one health check run."""

    name: str
    """The check's name."""
    status: HealthState
    """Its verdict."""
    message: str
    """One line for humans."""
    duration_ms: float
    """How long the check took."""
    details: dict[str, Any]
    """Figures behind the verdict."""
    critical: bool
    """Whether this check being unhealthy makes the whole system unhealthy."""
    recommendation: str | None = None
    """What to do about it (``None`` when healthy)."""


@dataclass(frozen=True, slots=True)
class RecoveryAction:
    """One repair attempted by auto-recovery."""

    check: str
    """The check whose fault was repaired."""
    action: str
    """What was done (or attempted)."""
    success: bool
    """Whether the check is healthy after the repair."""
    timestamp: float
    """When (``time.time()``)."""


@dataclass(frozen=True, slots=True)
class HealthStatus:
    """The result of :meth:`HealthChecker.perform_health_check`."""

    status: HealthState
    """The overall state (``status.value`` is ``"healthy"``, ``"degraded"`` or ``"unhealthy"``)."""
    health_score: float
    """Weighted mean of the check scores, in [0, 1]."""
    checks: dict[str, CheckResult]
    """Every check's result by name."""
    recoveries: list[RecoveryAction]
    """Repairs made during this run (auto-recovery)."""
    timestamp: float
    """When the run finished (``time.time()``)."""
    duration_ms: float
    """How long the run took."""

    @property
    def failing_checks(self) -> list[CheckResult]:
        """The checks that are not healthy."""
        return [result for result in self.checks.values() if result.status is not HealthState.HEALTHY]


@dataclass(frozen=True, slots=True)
class DiagnosticReport:
    """The result of :meth:`HealthChecker.generate_diagnostic_report`."""

    status: HealthState
    """The overall state at the time of the report."""
    health_score: float
    """The health score at the time of the report."""
    checks: dict[str, CheckResult]
    """Every check's result by name."""
    recommendations: list[str]
    """What to do, from failing checks and the monitors' rules (empty when all is well)."""
    system: dict[str, Any]
    """Python, platform, process and machine facts (memory, CPU, load, event-loop lag)."""
    storage: dict[str, Any]
    """Storage directories (exists, size, free disk) and database facts."""
    recent_errors: list[dict[str, Any]]
    """Recent problems: failed checks and repairs, and the monitors' recent operation errors."""
    recoveries: list[RecoveryAction]
    """Recent repairs made by auto-recovery, oldest first."""
    generated_at: float
    """When the report was made (``time.time()``)."""

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON-friendly dicts and lists."""
        data = asdict(self)
        data["status"] = self.status.value
        for result in data["checks"].values():
            result["status"] = result["status"].value
        return data


@dataclass(frozen=True, slots=True)
class HealthThresholds:
    """Limits the built-in checks compare with."""

    min_free_disk_mb: float = 100.0
    """Free disk below this on a storage volume is degraded (below a tenth of it, unhealthy)."""
    memory_percent_degraded: float = 90.0
    """System memory in use (percent) from which memory pressure is degraded."""
    memory_percent_unhealthy: float = 97.0
    """System memory in use (percent) from which memory pressure is unhealthy."""
    process_memory_limit_mb: float | None = None
    """Process RSS above this is degraded; ``None`` disables it."""
    event_loop_lag_ms: float = 100.0
    """A probe timer firing this late is degraded (ten times as late: unhealthy)."""
    error_rate_degraded: float = 0.05
    """Recent error rate from which the error-rate check is degraded."""
    error_rate_unhealthy: float = 0.25
    """Recent error rate from which it is unhealthy."""
    min_operations: int = 10
    """The error-rate check judges only monitors with at least this many recent operations."""


@dataclass(slots=True)
class _Check:
    name: str
    function: Callable[[], Any]
    critical: bool


@dataclass(slots=True)
class _WatchedTask:
    is_alive: Callable[[], bool]
    restart: Callable[[], Awaitable[Any] | Any] | None


class HealthChecker:
    """Runs health checks on demand and periodically; repairs known faults when enabled.

    Args:
        check_interval: Seconds between background checks after :meth:`start` (> 0).
        context_manager: An ``EnhancedContextManager`` whose storage, memory manager, monitor and
            background tasks are checked.
        enable_auto_recovery: Repair known faults; ``None`` follows the context manager's
            ``config.enable_auto_recovery`` (False without a context manager).
        storage_path: A directory to check (in addition to the context manager's directories).
        thresholds: Limits of the built-in checks.
        check_timeout: Seconds one check may take before it counts as unhealthy (> 0).

    Raises:
        InvalidSettingError: A setting is out of range.
    """

    def __init__(
        self,
        check_interval: float = 60.0,
        context_manager: Any = None,
        *,
        enable_auto_recovery: bool | None = None,
        storage_path: str | os.PathLike[str] | None = None,
        thresholds: HealthThresholds | None = None,
        check_timeout: float = 10.0,
    ) -> None:
        for setting, value in (("check_interval", check_interval), ("check_timeout", check_timeout)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not (0 < value < math.inf):
                raise InvalidSettingError(setting, value, "a finite number of seconds > 0")
        if thresholds is not None and not isinstance(thresholds, HealthThresholds):
            raise InvalidSettingError("thresholds", thresholds, "a HealthThresholds or None")
        if storage_path is not None and not isinstance(storage_path, str | os.PathLike):
            raise InvalidSettingError("storage_path", storage_path, "a str, a Path or None")
        self.check_interval = float(check_interval)
        """Seconds between background checks."""
        self.check_timeout = float(check_timeout)
        """Seconds one check may take."""
        self.context_manager = context_manager
        """The context manager being checked, if any."""
        if enable_auto_recovery is None:
            config = getattr(context_manager, "config", None)
            enable_auto_recovery = bool(getattr(config, "enable_auto_recovery", False))
        self.enable_auto_recovery = enable_auto_recovery
        """Whether known faults are repaired."""
        self.thresholds = thresholds or HealthThresholds()
        """Limits of the built-in checks."""
        self._storage_path = None if storage_path is None else Path(storage_path)
        self._checks: dict[str, _Check] = {}
        self._watched: dict[str, _WatchedTask] = {}
        self._recent_errors: deque[dict[str, Any]] = deque(maxlen=_MAX_RECENT_ERRORS)
        self._recoveries: deque[RecoveryAction] = deque(maxlen=_MAX_RECENT_ERRORS)
        self._last_status: HealthStatus | None = None
        self._last_lag_ms = 0.0
        self._lock: asyncio.Lock | None = None
        self._task: asyncio.Task[None] | None = None
        self._started_at = time.time()
        self._register_builtin_checks()
        own_monitor = getattr(context_manager, "performance_monitor", None)
        if isinstance(own_monitor, PerformanceMonitor):  # its sampler should run while it is monitoring
            self.watch_background_task(
                "performance_monitor",
                lambda: own_monitor.sampler_alive or not own_monitor.is_monitoring,
                own_monitor.start_monitoring,
            )

    # ------------------------------------------------------------------------------------ registry

    def register_check(
        self, name: str, fn: Callable[[], Any], critical: bool = False, *, replace: bool = False
    ) -> None:
        """Add a check.

        Args:
            name: A unique, non-empty name.
            fn: A function or coroutine function without arguments returning a :class:`CheckOutcome`,
                a bool (True healthy, False unhealthy), a :class:`HealthState` or None (healthy). An
                exception makes the check unhealthy. Plain functions run in a worker thread.
            critical: If True, this check being unhealthy makes the whole system unhealthy.
            replace: Replace a check of the same name (e.g. a built-in one) instead of raising.

        Raises:
            InvalidHealthCheckError: Bad or duplicate name, or ``fn`` not callable.
        """
        if not isinstance(name, str) or not name.strip():
            raise InvalidHealthCheckError("name", name, "a non-empty string")
        if name in self._checks and not replace:
            raise InvalidHealthCheckError(
                "name", name, "a name not registered yet (or replace=True)", detail="duplicate check"
            )
        if not callable(fn):
            raise InvalidHealthCheckError("fn", fn, "a callable without arguments")
        self._checks[name] = _Check(name, fn, bool(critical))

    def unregister_check(self, name: str) -> None:
        """Remove a check.

        Raises:
            InvalidHealthCheckError: No check has this name.
        """
        if name not in self._checks:
            raise InvalidHealthCheckError("name", name, "one of " + ", ".join(sorted(self._checks)))
        del self._checks[name]

    @property
    def check_names(self) -> list[str]:
        """The registered checks, in run order."""
        return list(self._checks)

    def watch_background_task(
        self,
        name: str,
        is_alive: Callable[[], bool],
        restart: Callable[[], Awaitable[Any] | Any] | None = None,
    ) -> None:
        """Have the ``background_tasks`` check watch a background task (replaces one of the same name).

        Args:
            name: What to call it in reports.
            is_alive: Returns whether the task is running as it should.
            restart: Starts it again (auto-recovery); ``None`` if it cannot be restarted.
        """
        if not isinstance(name, str) or not name.strip():
            raise InvalidHealthCheckError("name", name, "a non-empty string")
        if not callable(is_alive) or (restart is not None and not callable(restart)):
            raise InvalidHealthCheckError("is_alive", is_alive, "callables for is_alive and restart")
        self._watched[name] = _WatchedTask(is_alive, restart)

    def unwatch_background_task(self, name: str) -> None:
        """Stop watching a background task (no error if it was not watched)."""
        self._watched.pop(name, None)

    # ----------------------------------------------------------------------------------- lifecycle

    @property
    def is_running(self) -> bool:
        """Whether the periodic checks are running."""
        return self._task is not None and not self._task.done()

    @property
    def last_status(self) -> HealthStatus | None:
        """The latest health check's result (``None`` before the first)."""
        return self._last_status

    @property
    def recovery_history(self) -> list[RecoveryAction]:
        """Recent repairs, oldest first."""
        return list(self._recoveries)

    async def start(self) -> None:
        """Run a health check every ``check_interval`` seconds in a background task. Idempotent."""
        if self.is_running:
            return
        self._task = asyncio.create_task(self._periodic(), name="HealthChecker.periodic")

    async def stop(self) -> None:
        """Stop the periodic checks (the task is cancelled and awaited). Idempotent."""
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
        except Exception:  # pragma: no cover - _periodic does not raise
            logger.exception("health checker task failed")

    async def __aenter__(self) -> HealthChecker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval)
            try:
                status = await self.perform_health_check()
            except Exception:
                logger.exception("periodic health check failed")
                continue
            if status.status is not HealthState.HEALTHY:
                logger.warning(
                    "health %s (score %.2f): %s",
                    status.status.value,
                    status.health_score,
                    "; ".join(f"{r.name}: {r.message}" for r in status.failing_checks),
                )

    # ------------------------------------------------------------------------------------- running

    async def perform_health_check(self) -> HealthStatus:
        """Run every check (concurrently), repair known faults if enabled, and return the result."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            started = time.perf_counter()
            checks = list(self._checks.values())
            runs = await asyncio.gather(*(self._run_check(check) for check in checks))
            results = {result.name: result for result, _ in runs}
            recoveries: list[RecoveryAction] = []
            if self.enable_auto_recovery:
                for check, (result, outcome) in zip(checks, runs, strict=True):
                    if result.status is HealthState.HEALTHY or outcome is None or outcome.repair is None:
                        continue
                    action = await self._repair(check, outcome.repair)
                    after, _ = await self._run_check(check)
                    recovery = RecoveryAction(
                        check.name, action, after.status is HealthState.HEALTHY, time.time()
                    )
                    recoveries.append(recovery)
                    self._recoveries.append(recovery)
                    if not recovery.success:
                        self._note_error(f"recovery:{check.name}", f"{action}; still {after.status.value}")
                    results[check.name] = after
            status = _combine(results, recoveries, started)
            self._last_status = status
            return status

    async def _run_check(self, check: _Check) -> tuple[CheckResult, CheckOutcome | None]:
        started = time.perf_counter()
        outcome: CheckOutcome | None = None
        try:
            async with asyncio.timeout(self.check_timeout):
                if _is_async(check.function):
                    value = await check.function()
                else:
                    value = await asyncio.to_thread(check.function)
                    if inspect.isawaitable(value):
                        value = await value
            outcome = _as_outcome(value)
        except TimeoutError:
            outcome = CheckOutcome(
                HealthState.UNHEALTHY,
                f"timed out after {self.check_timeout:g} s",
                recommendation=f"Check {check.name!r} hangs: look at what it waits for.",
            )
        except Exception as error:
            outcome = CheckOutcome(
                HealthState.UNHEALTHY,
                f"check raised {type(error).__name__}: {error}",
                {"error_type": type(error).__name__},
                recommendation=f"Check {check.name!r} fails with {type(error).__name__}: fix its cause.",
            )
        duration_ms = (time.perf_counter() - started) * 1000.0
        if outcome.status is not HealthState.HEALTHY:
            self._note_error(f"check:{check.name}", f"{outcome.status.value}: {outcome.message}")
        result = CheckResult(
            name=check.name,
            status=outcome.status,
            message=outcome.message or outcome.status.value,
            duration_ms=duration_ms,
            details=dict(outcome.details),
            critical=check.critical,
            recommendation=None if outcome.status is HealthState.HEALTHY else outcome.recommendation,
        )
        return result, outcome

    async def _repair(self, check: _Check, repair: Repair) -> str:
        try:
            value = repair()
            if inspect.isawaitable(value):
                value = await value
            logger.info("auto-recovery for %s: %s", check.name, value)
            return str(value)
        except Exception as error:
            logger.warning("auto-recovery for %s failed: %r", check.name, error)
            return f"repair failed: {type(error).__name__}: {error}"

    def _note_error(self, source: str, message: str) -> None:
        self._recent_errors.append({"source": source, "message": message, "timestamp": time.time()})

    # -------------------------------------------------------------------------------------- report

    async def generate_diagnostic_report(self) -> DiagnosticReport:
        """Run a health check and return it with system and storage facts, advice and recent errors."""
        status = await self.perform_health_check()
        recommendations: list[str] = []
        for result in status.checks.values():
            if result.recommendation and result.recommendation not in recommendations:
                recommendations.append(result.recommendation)
        recent_errors = list(self._recent_errors)
        for monitor in self._monitors():
            for line in monitor.recommendations():
                if line not in recommendations:
                    recommendations.append(line)
            recent_errors.extend(
                {
                    "source": f"operation:{error['operation']}",
                    "message": error["message"],
                    "timestamp": error["timestamp"],
                }
                for error in monitor.recent_errors()
            )
        recent_errors.sort(key=lambda error: error["timestamp"])
        return DiagnosticReport(
            status=status.status,
            health_score=status.health_score,
            checks=status.checks,
            recommendations=recommendations,
            system=await asyncio.to_thread(self._system_facts),
            storage=await asyncio.to_thread(self._storage_facts),
            recent_errors=recent_errors[-_MAX_RECENT_ERRORS:],
            recoveries=self.recovery_history,
            generated_at=time.time(),
        )

    def _system_facts(self) -> dict[str, Any]:
        import psutil

        process = psutil.Process()
        with process.oneshot():
            rss = process.memory_info().rss
            threads = process.num_threads()
        memory = psutil.virtual_memory()
        facts: dict[str, Any] = {
            "python": sys.version.split()[0],
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "pid": os.getpid(),
            "cpu_count": os.cpu_count(),
            "process_memory_mb": rss / 1048576.0,
            "process_threads": threads,
            "system_memory_total_mb": memory.total / 1048576.0,
            "system_memory_available_mb": memory.available / 1048576.0,
            "system_memory_percent": memory.percent,
            "event_loop_lag_ms": self._last_lag_ms,
            "checker_uptime_s": time.time() - self._started_at,
        }
        if hasattr(os, "getloadavg"):
            facts["load_average"] = list(os.getloadavg())
        return facts

    def _storage_facts(self) -> dict[str, Any]:
        directories = []
        for path in self._storage_directories():
            entry: dict[str, Any] = {"path": str(path), "exists": path.is_dir()}
            if entry["exists"]:
                entry["size_bytes"] = _directory_size(path)
                usage = shutil.disk_usage(path)
                entry["free_disk_mb"] = usage.free / 1048576.0
                entry["total_disk_mb"] = usage.total / 1048576.0
            directories.append(entry)
        facts: dict[str, Any] = {"directories": directories}
        database = self._database_files()
        if database:
            facts["database_files"] = {str(path): path.stat().st_size for path in database if path.exists()}
        return facts

    # ------------------------------------------------------------------------------ built-in checks

    def _register_builtin_checks(self) -> None:
        self.register_check("storage", self._check_storage)
        self.register_check("database", self._check_database, critical=True)
        self.register_check("memory_pressure", self._check_memory_pressure)
        self.register_check("event_loop", self._check_event_loop)
        self.register_check("error_rate", self._check_error_rate)
        self.register_check("background_tasks", self._check_background_tasks)

    def _storage_directories(self) -> list[Path]:
        paths: list[Path] = []
        config = getattr(self.context_manager, "config", None)
        if config is not None:
            paths.append(Path(config.cache_path))
            paths.append(Path(config.resolved_storage_path))
        if self._storage_path is not None:
            paths.append(self._storage_path)
        unique: list[Path] = []
        for path in paths:
            if path not in unique:
                unique.append(path)
        return unique

    def _memory_manager(self) -> Any:
        return getattr(self.context_manager, "memory_manager", None)

    def _database_files(self) -> list[Path]:
        files: list[Path] = []
        for directory in self._storage_directories():
            if directory.is_dir():
                files.extend(sorted(directory.glob("*.sqlite3")))
        return files

    def _check_storage(self) -> CheckOutcome:
        directories = self._storage_directories()
        if not directories:
            return CheckOutcome(HealthState.HEALTHY, "no storage configured", {"directories": []})
        limits = self.thresholds
        missing: list[Path] = []
        problems: list[str] = []
        details: dict[str, Any] = {}
        worst = HealthState.HEALTHY
        for path in directories:
            info: dict[str, Any] = {"exists": path.is_dir()}
            details[str(path)] = info
            if not info["exists"]:
                missing.append(path)
                problems.append(f"{path} is missing")
                worst = HealthState.UNHEALTHY
                continue
            probe = path / f".health-probe-{uuid.uuid4().hex}"
            try:
                with open(probe, "wb") as handle:
                    handle.write(b"ok")
                    handle.flush()
                    os.fsync(handle.fileno())
                probe.unlink()
                info["writable"] = True
            except OSError as error:
                info["writable"] = False
                problems.append(f"{path} is not writable ({error.strerror or error})")
                worst = HealthState.UNHEALTHY
                continue
            free_mb = shutil.disk_usage(path).free / 1048576.0
            info["free_disk_mb"] = round(free_mb, 1)
            if free_mb < limits.min_free_disk_mb / 10:
                problems.append(f"{path}: only {free_mb:.0f} MB free")
                worst = HealthState.UNHEALTHY
            elif free_mb < limits.min_free_disk_mb:
                problems.append(f"{path}: {free_mb:.0f} MB free (< {limits.min_free_disk_mb:.0f} MB)")
                if worst is HealthState.HEALTHY:
                    worst = HealthState.DEGRADED
        memory = self._memory_manager()
        lost = self._lost_memory_files(memory)
        if lost:
            names = ", ".join(path.name for path in lost)
            problems.append(f"memory files removed while open: {names}")
            details["lost_memory_files"] = [str(path) for path in lost]
            worst = HealthState.UNHEALTHY
        if worst is HealthState.HEALTHY:
            return CheckOutcome(worst, f"{len(directories)} directories writable", details)
        log_lost = any(path.suffix == ".jsonl" for path in lost)
        recommendation = (
            "Storage is not usable: recreate missing directories (enable_auto_recovery does), fix "
            "permissions or free disk space under storage_path."
        )
        if any(path.suffix != ".jsonl" for path in lost):
            recommendation += (
                " The long-term database file was deleted while open: its rows live only in the open "
                "file until the process ends. Export them now (memory_manager.export_memories), then "
                "restart and import them."
            )

        async def recreate() -> str:
            done = []
            for path in missing:
                await asyncio.to_thread(path.mkdir, mode=0o700, parents=True, exist_ok=True)
                done.append(f"recreated {path}")
            if log_lost and memory is not None and hasattr(memory, "optimize"):
                await memory.optimize()  # compaction rewrites the log from the live memories and reopens it
                done.append("rewrote the memory log from the live memories")
            return "; ".join(done)

        return CheckOutcome(
            worst,
            "; ".join(problems),
            details,
            recommendation=recommendation,
            repair=recreate if missing or log_lost else None,
        )

    @staticmethod
    def _lost_memory_files(memory: Any) -> list[Path]:
        """Files an open memory manager writes to that no longer exist (deleted behind its back)."""
        if memory is None or not getattr(memory, "is_initialized", False):
            return []
        from context_manager.core.memory.file_store import LOG_FILE_NAME
        from context_manager.core.memory.sqlite_store import DATABASE_FILE_NAME

        root = Path(memory.storage_path)
        return [root / name for name in (LOG_FILE_NAME, DATABASE_FILE_NAME) if not (root / name).exists()]

    async def _check_database(self) -> CheckOutcome:
        memory_manager = self._memory_manager()
        check_integrity = getattr(memory_manager, "check_integrity", None)
        if check_integrity is None:
            return CheckOutcome(HealthState.HEALTHY, "no database to check", {"checked": False})
        report = check_integrity()
        if inspect.isawaitable(report):
            report = await report
        details = dict(report) if isinstance(report, dict) else {"result": report}
        sqlite_state = str(details.get("sqlite", "ok"))
        # every other entry ("fts", "short_index", "medium_index" ...) is a rebuildable full-text index
        index_problems = {
            key: str(value) for key, value in details.items() if key not in ("ok", "sqlite") and value != "ok"
        }
        if sqlite_state != "ok":
            return CheckOutcome(
                HealthState.UNHEALTHY,
                f"database integrity check failed: {sqlite_state}",
                details,
                recommendation=(
                    "The long-term memory database is damaged: restore it from a backup, or move it aside "
                    "(with its -wal/-shm files) to start the long-term tier empty."
                ),
            )
        if index_problems:
            rebuild_index = getattr(memory_manager, "rebuild_index", None)

            async def rebuild() -> str:
                assert rebuild_index is not None
                result = rebuild_index()
                if inspect.isawaitable(result):
                    result = await result
                if isinstance(result, dict):
                    counts = ", ".join(f"{tier}: {count}" for tier, count in result.items())
                    return f"rebuilt the full-text indexes ({counts} rows)"
                return f"rebuilt the full-text index ({result} rows)"

            return CheckOutcome(
                HealthState.DEGRADED,
                "full-text index damaged: "
                + "; ".join(f"{key}: {value}" for key, value in index_problems.items()),
                details,
                recommendation="Rebuild the full-text index: await memory_manager.rebuild_index().",
                repair=rebuild if rebuild_index is not None else None,
            )
        return CheckOutcome(HealthState.HEALTHY, "database and full-text index intact", details)

    def _check_memory_pressure(self) -> CheckOutcome:
        import psutil

        limits = self.thresholds
        memory = psutil.virtual_memory()
        rss_mb = psutil.Process().memory_info().rss / 1048576.0
        details = {"system_memory_percent": memory.percent, "process_memory_mb": round(rss_mb, 1)}
        recommendation = (
            "Memory is short: run optimize_system(), lower short_term_memory_size or max_tokens, "
            "or give the process more memory."
        )
        if memory.percent >= limits.memory_percent_unhealthy:
            return CheckOutcome(
                HealthState.UNHEALTHY, f"system memory {memory.percent:.0f}% used", details, recommendation
            )
        if memory.percent >= limits.memory_percent_degraded:
            return CheckOutcome(
                HealthState.DEGRADED, f"system memory {memory.percent:.0f}% used", details, recommendation
            )
        if limits.process_memory_limit_mb is not None and rss_mb > limits.process_memory_limit_mb:
            return CheckOutcome(
                HealthState.DEGRADED,
                f"process uses {rss_mb:.0f} MB (> {limits.process_memory_limit_mb:.0f} MB)",
                details,
                recommendation,
            )
        return CheckOutcome(
            HealthState.HEALTHY, f"system memory {memory.percent:.0f}% used, process {rss_mb:.0f} MB", details
        )

    async def _check_event_loop(self) -> CheckOutcome:
        loop = asyncio.get_running_loop()
        probe_s = 0.02
        started = loop.time()
        await asyncio.sleep(probe_s)
        lag_ms = max(0.0, (loop.time() - started - probe_s) * 1000.0)
        self._last_lag_ms = lag_ms
        limit = self.thresholds.event_loop_lag_ms
        details = {"lag_ms": round(lag_ms, 3), "limit_ms": limit}
        if lag_ms <= limit:
            return CheckOutcome(HealthState.HEALTHY, f"lag {lag_ms:.1f} ms", details)
        return CheckOutcome(
            HealthState.UNHEALTHY if lag_ms > 10 * limit else HealthState.DEGRADED,
            f"event loop blocked: a timer fired {lag_ms:.0f} ms late",
            details,
            recommendation="Something blocks the event loop: run blocking calls with asyncio.to_thread().",
        )

    def _monitors(self) -> list[PerformanceMonitor]:
        monitors: list[PerformanceMonitor] = []
        own = getattr(self.context_manager, "performance_monitor", None)
        if isinstance(own, PerformanceMonitor):
            monitors.append(own)
        for monitor in running_monitors():
            if monitor not in monitors:
                monitors.append(monitor)
        return monitors

    def _check_error_rate(self) -> CheckOutcome:
        limits = self.thresholds
        worst_rate, worst_count, judged = 0.0, 0, 0
        for monitor in self._monitors():
            rate, count = monitor.recent_error_rate()
            if count < limits.min_operations:
                continue
            judged += 1
            if rate >= worst_rate:
                worst_rate, worst_count = rate, count
        details = {"monitors": judged, "error_rate": worst_rate, "operations": worst_count}
        if not judged:
            return CheckOutcome(HealthState.HEALTHY, "not enough recorded operations to judge", details)
        message = f"{worst_rate:.1%} of the last {worst_count} operations failed"
        recommendation = "Operations are failing: see the recent errors in the diagnostic report."
        if worst_rate >= limits.error_rate_unhealthy:
            return CheckOutcome(HealthState.UNHEALTHY, message, details, recommendation)
        if worst_rate >= limits.error_rate_degraded:
            return CheckOutcome(HealthState.DEGRADED, message, details, recommendation)
        return CheckOutcome(HealthState.HEALTHY, message, details)

    def _check_background_tasks(self) -> CheckOutcome:
        dead = [name for name, watched in self._watched.items() if not _alive(watched)]
        details = {"watched": sorted(self._watched), "dead": dead}
        if not dead:
            return CheckOutcome(HealthState.HEALTHY, f"{len(self._watched)} background tasks alive", details)
        restartable = {name: self._watched[name].restart for name in dead if self._watched[name].restart}

        async def restart() -> str:
            for restart_task in restartable.values():
                assert restart_task is not None
                value = restart_task()
                if inspect.isawaitable(value):
                    await value
            return "restarted " + ", ".join(restartable)

        return CheckOutcome(
            HealthState.DEGRADED,
            "background tasks not running: " + ", ".join(dead),
            details,
            recommendation="A background task died: enable_auto_recovery restarts it (see its logged error).",
            repair=restart if restartable else None,
        )


def _alive(watched: _WatchedTask) -> bool:
    try:
        return bool(watched.is_alive())
    except Exception:
        return False


def _is_async(function: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(function):
        return True
    call = getattr(function, "__call__", None)  # noqa: B004 - an object with an async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def _as_outcome(value: Any) -> CheckOutcome:
    if isinstance(value, CheckOutcome):
        return value
    if value is None or value is True:
        return CheckOutcome(HealthState.HEALTHY)
    if value is False:
        return CheckOutcome(HealthState.UNHEALTHY, "check returned False")
    if isinstance(value, HealthState):
        return CheckOutcome(value)
    return CheckOutcome(
        HealthState.UNHEALTHY,
        f"check returned {type(value).__name__}; expected CheckOutcome, bool, HealthState or None",
    )


def _combine(
    results: dict[str, CheckResult], recoveries: list[RecoveryAction], started: float
) -> HealthStatus:
    weights = {name: (2.0 if result.critical else 1.0) for name, result in results.items()}
    total_weight = sum(weights.values())
    score = (
        sum(result.status.score * weights[name] for name, result in results.items()) / total_weight
        if total_weight
        else 1.0
    )
    if any(result.critical and result.status is HealthState.UNHEALTHY for result in results.values()):
        state = HealthState.UNHEALTHY
    elif any(result.status is not HealthState.HEALTHY for result in results.values()):
        state = HealthState.DEGRADED
    else:
        state = HealthState.HEALTHY
    return HealthStatus(
        status=state,
        health_score=score,
        checks=results,
        recoveries=recoveries,
        timestamp=time.time(),
        duration_ms=(time.perf_counter() - started) * 1000.0,
    )


def _directory_size(path: Path, limit: int = 10_000) -> int:
    """Bytes in the files under ``path`` (stops counting after ``limit`` files)."""
    total = 0
    for count, (root, _, files) in enumerate(os.walk(path)):
        if count > limit:
            break
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total
