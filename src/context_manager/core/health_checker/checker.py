"""The :class:`HealthChecker`: runs checks on demand and periodically, repairs, reports."""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from context_manager.core.async_only import AsyncContextManagerOnly
from context_manager.core.async_operations import cancel_and_wait, task_alive
from context_manager.core.errors import InvalidHealthCheckError, InvalidSettingError
from context_manager.core.health_checker.checks import (
    WatchedTask,
    check_background_tasks,
    check_database,
    check_error_rate,
    check_event_loop,
    check_memory_pressure,
    check_storage,
    check_storage_writes,
    with_stale_conversation,
)
from context_manager.core.health_checker.models import (
    CheckOutcome,
    CheckResult,
    DiagnosticReport,
    HealthState,
    HealthStatus,
    HealthThresholds,
    RecoveryAction,
    Repair,
    as_outcome,
    combine,
)
from context_manager.core.health_checker.recovery import run_repair
from context_manager.core.health_checker.report import storage_facts, system_facts
from context_manager.core.performance_monitor import PerformanceMonitor, running_monitors
from context_manager.core.threads import UserThreads, is_async_callable

__all__ = ["HealthChecker"]

logger = logging.getLogger(__name__)

_MAX_RECENT_ERRORS = 50


_NOT_OURS = "its own await was cancelled"


def _being_cancelled() -> bool:
    """Whether the running task is being cancelled.

    Not so for a ``CancelledError`` out of something a check awaited: that is the check's failure.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _manager_directories(config: Any) -> list[Path]:
    """The directories a context manager with ``config`` creates (and so the ``storage`` check watches)."""
    created = getattr(config, "created_directories", None)
    if created is None:  # a configuration of another kind: its cache and storage directories
        created = [config.cache_path, config.resolved_storage_path]
    return [Path(directory) for directory in created]


_STORAGE_SILENT = (
    "The storage directories do not answer (a hung network filesystem?): check the mount under "
    "storage_path; the report could not read their sizes and free disk."
)


def _hangs(name: str) -> str:
    return f"Check {name!r} hangs: look at what it waits for."


def _still_hung(name: str, run: _ThreadRun) -> CheckOutcome:
    return CheckOutcome(
        HealthState.UNHEALTHY,
        f"still hung: the run started {run.running_s():.0f} s ago timed out and has not returned "
        "(a thread cannot be interrupted); not started again until it returns",
        {"hung_since": run.started_at or time.time()},
        recommendation=_hangs(name),
    )


def _raised(name: str, error: Exception) -> CheckOutcome:
    return CheckOutcome(
        HealthState.UNHEALTHY,
        f"check raised {type(error).__name__}: {error}",
        {"error_type": type(error).__name__},
        recommendation=f"Check {name!r} fails with {type(error).__name__}: fix its cause.",
    )


class _ThreadRun:
    """One run of a sync check in a thread: whether it started, ended, or was given up before it started."""

    __slots__ = ("ended", "given_up", "started_at", "started_monotonic")

    def __init__(self) -> None:
        self.started_at: float | None = None  # time.time() when its thread began the call (a date shown)
        self.started_monotonic: float | None = None  # time.monotonic() then (how long it has run)
        self.ended = False
        self.given_up = False

    def start(self) -> None:
        """Note that its thread begins the call now."""
        self.started_at, self.started_monotonic = time.time(), time.monotonic()

    def running_s(self) -> float:
        """Seconds since its thread began the call (monotonic: a wall-clock step does not move it)."""
        return 0.0 if self.started_monotonic is None else time.monotonic() - self.started_monotonic


_SHARED_RUNS = "_health_check_runs"
"""The attribute of a memory manager holding the latest run of each store check (see :class:`_SharedRun`)."""
_shared_lock = threading.Lock()


def _renew_shared_lock() -> None:
    """In a forked child: a new lock.

    A thread of the parent running a health check at the fork held it, and that thread does not exist
    here: the child's first health check of a store waited for ever.
    """
    global _shared_lock
    _shared_lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_renew_shared_lock)


@dataclass(slots=True)
class _SharedRun:
    """One run of a check of a store that the checkers of the managers sharing it reuse.

    Kept on the (shared) memory manager, so it goes with it: the managers of one process sharing a store
    (``core/shared_store.py``) hold one memory manager object.
    """

    owner: object
    """The token of the checker that runs it (its own result is never reused by itself)."""
    loop: asyncio.AbstractEventLoop
    outcome: asyncio.Future[CheckOutcome]
    """Done when the run finished (cancelled if it was cancelled)."""
    finished: float | None = None
    """``time.monotonic()`` when it finished."""


@dataclass(slots=True)
class _Check:
    name: str
    function: Callable[[], Any]
    critical: bool
    share_key: Callable[[], tuple[Any, tuple[Any, ...]] | None] | None = None
    """For a check of a store (built-in ``storage`` and ``database``): returns (the memory manager,
    what else the result depends on), the key under which the checkers sharing that store share one
    result per ``check_interval``; ``None`` (or returning ``None``): not shared."""
    hung: _ThreadRun | None = None
    """A run that timed out while its thread still runs the call: the check is not started again meanwhile
    (each run would hold one more of the checker's threads, until the built-in checks found none)."""
    repair_hung: _ThreadRun | None = None
    """The same for the check's sync repair, given up after ``repair_timeout``."""


class HealthChecker(AsyncContextManagerOnly):
    """Runs health checks on demand and periodically; repairs known faults when enabled.

    Args:
        check_interval: Seconds between background checks after :meth:`start` (> 0).
        context_manager: An ``EnhancedContextManager`` whose storage, memory manager, monitor and
            background tasks are checked.
        enable_auto_recovery: Repair known faults (True or False); ``None`` follows the context
            manager's ``config.enable_auto_recovery`` (False without a context manager). The directories
            of a context manager that is not open are never created: that is ``initialize()``'s work.
        storage_path: A directory to check (in addition to the context manager's directories).
        thresholds: Limits of the built-in checks.
        check_timeout: Seconds one check may take before it counts as unhealthy (> 0).
        repair_timeout: Seconds one auto-recovery repair may take before it counts as failed (> 0); a
            repair rebuilding the indexes of a large store takes a while, a hung one is given up.

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
        repair_timeout: float = 300.0,
    ) -> None:
        for setting, value in (
            ("check_interval", check_interval),
            ("check_timeout", check_timeout),
            ("repair_timeout", repair_timeout),
        ):
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
        self.repair_timeout = float(repair_timeout)
        """Seconds one repair may take."""
        self._context_manager: Any = context_manager
        self._context_manager_ref: weakref.ref[Any] | None = None  # set once the manager is cleaned up
        if enable_auto_recovery is not None and not isinstance(enable_auto_recovery, bool):
            raise InvalidSettingError(  # "no" is truthy: it switched repairs on
                "enable_auto_recovery", enable_auto_recovery, "True, False or None"
            )
        if enable_auto_recovery is None:
            config = getattr(context_manager, "config", None)
            enable_auto_recovery = bool(getattr(config, "enable_auto_recovery", False))
        self.enable_auto_recovery = enable_auto_recovery
        """Whether known faults are repaired."""
        self._thresholds = thresholds or HealthThresholds()
        self._storage_path = None if storage_path is None else Path(storage_path)
        self._checks: dict[str, _Check] = {}
        self._watched: dict[str, WatchedTask] = {}
        self._recent_errors: deque[dict[str, Any]] = deque(maxlen=_MAX_RECENT_ERRORS)
        self._recoveries: deque[RecoveryAction] = deque(maxlen=_MAX_RECENT_ERRORS)
        self._last_status: HealthStatus | None = None
        self._last_lag_ms = 0.0
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None
        self._waiting_run: asyncio.Future[HealthStatus] | None = None  # the next run, shared by its callers
        self._task: asyncio.Task[None] | None = None
        self._threads = UserThreads("context-manager-health-check", max_threads=16)
        self._hung_lock = threading.Lock()
        self._token = object()  # tells this checker's shared runs from another's
        self._active_runs = 0  # health check runs in progress (in any event loop), under _hung_lock
        self._started_at = time.monotonic()  # checker_uptime_s: a duration
        self._register_builtin_checks()
        # the report's storage read (its function is passed per read): not a check, but given up and not
        # started again while hung like one
        self._storage_read = _Check("report:storage", dict, critical=False)
        own_monitor = getattr(context_manager, "performance_monitor", None)
        if isinstance(own_monitor, PerformanceMonitor):  # its sampler should run while it is monitoring
            self.watch_background_task(
                "performance_monitor",
                lambda: own_monitor.sampler_alive or not own_monitor.is_monitoring,
                own_monitor.start_monitoring,
            )

    @property
    def thresholds(self) -> HealthThresholds:
        """Limits of the built-in checks; assign new ones to change them (used from the next check)."""
        return self._thresholds

    @thresholds.setter
    def thresholds(self, thresholds: HealthThresholds) -> None:
        if not isinstance(thresholds, HealthThresholds):  # else every check using a limit failed
            raise InvalidSettingError("thresholds", thresholds, "a HealthThresholds")
        self._thresholds = thresholds

    # ------------------------------------------------------------------------------------ registry

    def register_check(
        self, name: str, fn: Callable[[], Any], critical: bool = False, *, replace: bool = False
    ) -> None:
        """Add a check.

        Args:
            name: A unique, non-empty name.
            fn: A function or coroutine function without arguments returning a :class:`CheckOutcome`,
                a bool (True healthy, False unhealthy), a :class:`HealthState` or None (healthy). An
                exception makes the check unhealthy. Plain functions run in a worker thread of the
                checker's own pool (a check that hangs past ``check_timeout`` keeps its thread, never
                one the memory stores need, and is reported ``still hung`` without being started again
                until that call returns).
            critical: If True, this check being unhealthy makes the whole system unhealthy.
            replace: Replace a check of the same name (e.g. a built-in one) instead of raising.

        Raises:
            InvalidHealthCheckError: Bad or duplicate name, ``fn`` not callable, or ``critical`` or
                ``replace`` not a bool.
        """
        for flag, value in (("critical", critical), ("replace", replace)):
            if not isinstance(value, bool):  # "no" is truthy
                raise InvalidHealthCheckError(flag, value, "True or False")
        if not isinstance(name, str) or not name.strip():
            raise InvalidHealthCheckError("name", name, "a non-empty string")
        if name in self._checks and not replace:
            raise InvalidHealthCheckError(
                "name", name, "a name not registered yet (or replace=True)", detail="duplicate check"
            )
        if not callable(fn):
            raise InvalidHealthCheckError("fn", fn, "a callable without arguments")
        self._checks[name] = _Check(name, fn, critical)

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

        Raises:
            InvalidHealthCheckError: ``name`` is not a non-empty string, ``is_alive`` is not callable, or
                ``restart`` is neither callable nor ``None`` (nothing is watched).
        """
        if not isinstance(name, str) or not name.strip():
            raise InvalidHealthCheckError("name", name, "a non-empty string")
        if not callable(is_alive):
            raise InvalidHealthCheckError("is_alive", is_alive, "a callable returning whether the task runs")
        if restart is not None and not callable(restart):
            raise InvalidHealthCheckError("restart", restart, "a callable without arguments or None")
        self._watched[name] = WatchedTask(is_alive, restart)

    def unwatch_background_task(self, name: str) -> None:
        """Stop watching a background task (no error if it was not watched)."""
        self._watched.pop(name, None)

    # ----------------------------------------------------------------------------------- lifecycle

    @property
    def is_running(self) -> bool:
        """Whether the periodic checks are running (not if their event loop was closed under them)."""
        return task_alive(self._task)

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
        await cancel_and_wait(task, owner="health checker")
        self._release_idle_threads()

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
        """Run every check (concurrently), repair known faults if enabled, and return the result.

        One run at a time: a call made while a run is in progress waits for the next run, which starts
        when that one ends and which every call made meanwhile shares (each gets a result of checks
        started after its call). Concurrent callers (a readiness and a liveness probe, a load balancer)
        so wait for at most two runs, however many they are, instead of queueing one run each.
        """
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:  # an asyncio.Lock serves one event loop
            self._lock, self._lock_loop = asyncio.Lock(), loop
        while (waiting := self._waiting_run) is not None and waiting.get_loop() is loop:
            try:  # the next run is already asked for: share it
                return await asyncio.shield(waiting)
            except asyncio.CancelledError:
                if _being_cancelled():
                    raise
                # the caller that was to run it was cancelled before it ran: ask for one again
                if self._waiting_run is waiting:
                    self._waiting_run = None
        mine: asyncio.Future[HealthStatus] = loop.create_future()
        self._waiting_run = mine
        with self._hung_lock:
            self._active_runs += 1
        try:
            async with self._lock:
                if self._waiting_run is mine:  # started: a caller from now on waits for the run after it
                    self._waiting_run = None
                status = await self._perform(started=time.perf_counter())
        except BaseException as error:
            if self._waiting_run is mine:
                self._waiting_run = None
            if not mine.done():
                if isinstance(error, Exception):
                    mine.set_exception(error)
                    mine.exception()  # retrieved: no "never retrieved" warning without other callers
                else:
                    mine.cancel()
            raise
        finally:
            with self._hung_lock:
                self._active_runs -= 1
            self._release_idle_threads()
        mine.set_result(status)
        return status

    def _release_idle_threads(self) -> None:
        """End the idle threads of the sync checks once no run is in progress.

        A checker runs once a minute: idle threads kept in between were one or more per open manager
        (thousands with many managers). A hung call keeps its thread until it returns.
        """
        with self._hung_lock:
            if self._active_runs:
                return
        self._threads.shutdown()

    async def _perform(self, started: float) -> HealthStatus:
        checks = list(self._checks.values())
        runs = await asyncio.gather(*(self._run_check(check) for check in checks))
        results = {result.name: result for result, _ in runs}
        recoveries: list[RecoveryAction] = []
        if self.enable_auto_recovery:
            for check, (result, outcome) in zip(checks, runs, strict=True):
                if result.status is HealthState.HEALTHY or outcome is None or outcome.repair is None:
                    continue
                action = await self._repair(check, outcome.repair)
                after, _ = await self._run_check(check, fresh=True)
                recovery = RecoveryAction(
                    check.name, action, after.status is HealthState.HEALTHY, time.time()
                )
                recoveries.append(recovery)
                self._recoveries.append(recovery)
                if not recovery.success:
                    self._note_error(f"recovery:{check.name}", f"{action}; still {after.status.value}")
                results[check.name] = after
        status = combine(results, recoveries, started)
        self._last_status = status
        return status

    def _shared_run(self, check: _Check, fresh: bool) -> tuple[_SharedRun | None, _SharedRun | None]:
        """(a run of another checker of the same store to reuse, or the run this checker publishes).

        Reused: another checker's, in this event loop, running or finished less than this checker's
        ``check_interval`` ago. ``(None, None)`` for a check that is not shared.
        """
        try:
            identity = check.share_key() if check.share_key is not None else None
        except Exception:  # the check itself will say what is wrong
            identity = None
        if identity is None:
            return None, None
        store, inputs = identity
        loop = asyncio.get_running_loop()
        key = (check.name, inputs)
        with _shared_lock:
            runs = getattr(store, _SHARED_RUNS, None)
            if runs is None:
                runs = {}
                try:
                    setattr(store, _SHARED_RUNS, runs)
                except (AttributeError, TypeError):  # an object without room for it: not shared
                    return None, None
            run = runs.get(key)
            if (
                not fresh
                and run is not None
                and run.owner is not self._token
                and run.loop is loop
                and not run.outcome.cancelled()
                and (run.finished is None or time.monotonic() - run.finished < self.check_interval)
            ):
                return run, None
            mine = _SharedRun(self._token, loop, loop.create_future())
            runs[key] = mine
            return None, mine

    @staticmethod
    def _publish(run: _SharedRun | None, outcome: CheckOutcome | None) -> None:
        """Finish this checker's shared run with ``outcome`` (``None``: it was cancelled)."""
        if run is None or run.outcome.done():
            return
        run.finished = time.monotonic()
        if outcome is None:
            run.outcome.cancel()
        else:
            run.outcome.set_result(outcome)

    async def _run_check(
        self, check: _Check, *, fresh: bool = False
    ) -> tuple[CheckResult, CheckOutcome | None]:
        started = time.perf_counter()
        outcome: CheckOutcome | None = None
        reused, mine = self._shared_run(check, fresh)
        if reused is not None:
            try:
                async with asyncio.timeout(self.check_timeout):
                    shared = await asyncio.shield(reused.outcome)
            except asyncio.CancelledError:
                if _being_cancelled():
                    raise
                # the other checker's run was cancelled (its manager stopped): run this one
                return await self._run_check(check, fresh=True)
            except TimeoutError:  # the other checker's run hangs: so does this check
                outcome = CheckOutcome(
                    HealthState.UNHEALTHY,
                    f"timed out after {self.check_timeout:g} s",
                    recommendation=_hangs(check.name),
                )
            else:
                age = time.monotonic() - (reused.finished or time.monotonic())
                outcome = replace(shared, details={**shared.details, "reused_result_age_s": round(age, 3)})
            return self._result(check, outcome, started), outcome
        try:
            result, outcome = await self._run_own_check(check, started)
        except BaseException:
            self._publish(mine, None)
            raise
        self._publish(mine, outcome)
        return result, outcome

    async def _run_own_check(self, check: _Check, started: float) -> tuple[CheckResult, CheckOutcome]:
        outcome: CheckOutcome | None = None
        scope = asyncio.timeout(self.check_timeout)
        try:
            async with scope:
                if is_async_callable(check.function):
                    value = await check.function()
                elif check.hung is not None:  # its earlier run still holds a thread
                    value = _still_hung(check.name, check.hung)
                else:  # the checker's own threads: a hung check never takes one storage I/O needs
                    value = await self._run_in_thread(check, check.function, "hung")
                    if inspect.isawaitable(value):
                        value = await value
            if scope.expired():  # the timeout cancelled it; it caught that and returned late anyway
                outcome = CheckOutcome(
                    HealthState.UNHEALTHY,
                    f"timed out after {self.check_timeout:g} s (it caught the cancellation and returned "
                    f"after {time.perf_counter() - started:.1f} s)",
                    recommendation=_hangs(check.name),
                )
            else:
                outcome = as_outcome(value)
        except TimeoutError as error:
            if scope.expired():
                outcome = CheckOutcome(
                    HealthState.UNHEALTHY,
                    f"timed out after {self.check_timeout:g} s",
                    recommendation=_hangs(check.name),
                )
            else:  # the check's own TimeoutError (its probe's timeout): it failed, it did not hang
                outcome = _raised(check.name, error)
        except asyncio.CancelledError:
            if _being_cancelled():
                raise  # this run is being cancelled
            outcome = CheckOutcome(  # something the check awaited was cancelled: the check failed
                HealthState.UNHEALTHY,
                f"check raised CancelledError ({_NOT_OURS})",
                {"error_type": "CancelledError"},
                recommendation=f"Check {check.name!r} awaits something that gets cancelled: fix its cause.",
            )
        except Exception as error:
            outcome = _raised(check.name, error)
        if not isinstance(outcome.status, HealthState) or not isinstance(outcome.details, Mapping):
            outcome = CheckOutcome(  # a custom check built its outcome wrong: that check fails, not the run
                HealthState.UNHEALTHY,
                f"check returned a malformed outcome (status {outcome.status!r}, details "
                f"{type(outcome.details).__name__}); allowed a HealthState and a dict",
                recommendation=f"Check {check.name!r}: return CheckOutcome(HealthState.X, message, {{}}).",
            )
        return self._result(check, outcome, started), outcome

    def _result(self, check: _Check, outcome: CheckOutcome, started: float) -> CheckResult:
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
        return result

    async def _run_in_thread(self, check: _Check, function: Callable[[], Any], slot: str) -> Any:
        """Run a sync check (``slot="hung"``) or repair (``"repair_hung"``) in one of the checker's threads.

        Given up (a timeout) while its thread runs the call, the run is kept in ``check.<slot>`` until the
        call returns, and the check (or repair) is not started again meanwhile: one thread per hung call,
        not one per health check run.
        """
        run = _ThreadRun()
        lock = self._hung_lock

        def call() -> Any:
            with lock:
                if run.given_up:  # given up before a thread took it: nothing to run
                    return None
                run.start()
            try:
                return function()
            finally:
                with lock:
                    run.ended = True
                    if getattr(check, slot) is run:
                        setattr(check, slot, None)

        try:
            return await self._threads.run(call)
        except asyncio.CancelledError:
            with lock:
                run.given_up = True
                if run.started_at is not None and not run.ended:
                    setattr(check, slot, run)
            raise

    async def _repair(self, check: _Check, repair: Repair) -> str:
        """Run ``repair`` for ``check`` (within ``repair_timeout``); return what it did or why it failed."""
        hung = check.repair_hung
        if hung is not None:
            return (
                f"repair not started: the one started {hung.running_s():.0f} s ago timed out and has "
                "not returned (a thread cannot be interrupted)"
            )
        if not is_async_callable(repair):

            async def in_thread() -> Any:
                return await self._run_in_thread(check, repair, "repair_hung")

            return await run_repair(check.name, in_thread, time_limit=self.repair_timeout)
        return await run_repair(check.name, repair, time_limit=self.repair_timeout, threads=self._threads)

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
        storage = await self._read_storage_facts()
        if "error" in storage:
            error = {"source": "report:storage", "message": storage["error"], "timestamp": time.time()}
            recent_errors.append(error)
            if _STORAGE_SILENT not in recommendations:
                recommendations.append(_STORAGE_SILENT)
        recent_errors.sort(key=lambda error: error["timestamp"])
        return DiagnosticReport(
            status=status.status,
            health_score=status.health_score,
            checks=status.checks,
            recommendations=recommendations,
            system={
                **await asyncio.to_thread(system_facts),
                "event_loop_lag_ms": self._last_lag_ms,
                "checker_uptime_s": time.monotonic() - self._started_at,
            },
            storage=storage,
            recent_errors=recent_errors[-_MAX_RECENT_ERRORS:],
            recoveries=self.recovery_history,
            generated_at=time.time(),
        )

    async def _read_storage_facts(self) -> dict[str, Any]:
        """The report's storage facts, read within ``check_timeout`` in one of the checker's threads.

        Storage on a hung network filesystem blocks every stat and listing for ever: the report says so
        instead of never returning, and while that read still hangs the next report does not start
        another one (each would hold one more thread). A read that fails (a dead mount, a stale NFS
        handle) is reported with its error too.
        """
        directories = self._storage_directories()
        read = self._storage_read
        if read.hung is not None:
            problem = (
                f"storage read still hung: the one started {read.hung.running_s():.0f} s ago timed out and "
                "has not returned"
            )
        else:
            scope = asyncio.timeout(self.check_timeout)
            try:
                async with scope:
                    facts: dict[str, Any] = await self._run_in_thread(
                        read, lambda: storage_facts(directories), "hung"
                    )
                return facts
            except TimeoutError:
                if not scope.expired():
                    raise
            except OSError as error:  # a dead mount (ENOTCONN), a stale NFS handle, an I/O error: reported
                return {
                    "directories": [{"path": str(path)} for path in directories],
                    "error": f"storage read failed: {error}",
                }
            problem = f"storage read: no answer within {self.check_timeout:g} s (a hung filesystem?)"
        return {
            "directories": [{"path": str(path)} for path in directories],
            "timed_out_s": self.check_timeout,
            "error": problem,
        }

    # ------------------------------------------------------------------------------ built-in checks

    def _register_builtin_checks(self) -> None:
        self.register_check("storage", self._check_storage)
        self.register_check("storage_writes", self._check_storage_writes, critical=True)
        self.register_check("database", self._check_database, critical=True)
        # the managers sharing a store share these two results per interval (replacing them ends that)
        self._checks["storage"].share_key = self._storage_share_key
        self._checks["database"].share_key = self._database_share_key
        self.register_check("memory_pressure", self._check_memory_pressure)
        self.register_check("event_loop", self._check_event_loop)
        self.register_check("error_rate", self._check_error_rate)
        self.register_check("background_tasks", self._check_background_tasks)

    @property
    def context_manager(self) -> Any:
        """The context manager being checked, if any."""
        ref = self._context_manager_ref
        return self._context_manager if ref is None else ref()

    @context_manager.setter
    def context_manager(self, value: Any) -> None:
        self._context_manager = value
        self._context_manager_ref = None

    def _hold_manager_weakly(self) -> None:
        """Refer to the context manager weakly from now on (its ``cleanup()`` calls this).

        The manager refers to its checker (``manager.health_checker``): while the checker refers back
        to it, a manager a web app drops after its request is freed only by a run of the cyclic garbage
        collector, with its whole window (thousands of messages), which meanwhile go through every
        generation and lengthen its full runs.
        """
        manager = self._context_manager
        if manager is not None and self._context_manager_ref is None:
            try:
                self._context_manager_ref = weakref.ref(manager)
            except TypeError:  # an object without weak references: held as it was
                return
            self._context_manager = None

    def _storage_directories(self) -> list[Path]:
        paths: list[Path] = []
        config = getattr(self.context_manager, "config", None)
        if config is not None:
            paths.extend(_manager_directories(config))
        if self._storage_path is not None:
            paths.append(self._storage_path)
        unique: list[Path] = []
        for path in paths:
            if path not in unique:
                unique.append(path)
        return unique

    def _memory_manager(self) -> Any:
        return getattr(self.context_manager, "memory_manager", None)

    def _monitors(self) -> list[PerformanceMonitor]:
        monitors: list[PerformanceMonitor] = []
        own = getattr(self.context_manager, "performance_monitor", None)
        if isinstance(own, PerformanceMonitor):
            monitors.append(own)
        for monitor in running_monitors():
            if monitor not in monitors:
                monitors.append(monitor)
        return monitors

    def _storage_share_key(self) -> tuple[Any, tuple[Any, ...]] | None:
        memory = self._memory_manager()
        if memory is None:
            return None
        directories, conversations, absent_allowed = self._storage_inputs()
        inputs = (
            tuple(directories),
            id(conversations),
            tuple(absent_allowed),
            self.thresholds.min_free_disk_mb,
        )
        return memory, inputs

    def _database_share_key(self) -> tuple[Any, tuple[Any, ...]] | None:
        memory = self._memory_manager()
        return None if memory is None else (memory, ())

    def _storage_inputs(self) -> tuple[list[Path], Any, list[Path]]:
        """What the storage check looks at: directories, conversations store, directories allowed absent."""
        conversations = getattr(self.context_manager, "conversation_store", None)
        # a manager that is not open has not created its directories (or is done with them): a check of it
        # must not count them missing, nor auto-recovery create them
        manager_open = getattr(self.context_manager, "is_initialized", True) is not False
        config = getattr(self.context_manager, "config", None)
        absent_allowed = _manager_directories(config) if config is not None and not manager_open else []
        if self._storage_path is not None and self._storage_path in absent_allowed:
            absent_allowed.remove(self._storage_path)  # named to the checker: always required
        return self._storage_directories(), conversations, absent_allowed

    def _check_storage(self) -> CheckOutcome:
        directories, conversations, absent_allowed = self._storage_inputs()
        return check_storage(
            directories,
            self._memory_manager(),
            self.thresholds,
            conversations=conversations,
            absent_allowed=absent_allowed,
        )

    async def _check_storage_writes(self) -> CheckOutcome:
        outcome = check_storage_writes(self._memory_manager(), self.thresholds)
        return with_stale_conversation(outcome, self.context_manager)

    async def _check_database(self) -> CheckOutcome:
        # a little less than check_timeout: a PostgreSQL server that is down makes the integrity check wait
        # postgres_connect_timeout (10 s, as check_timeout) for a connection; said so, not "hangs"
        return await check_database(self._memory_manager(), time_limit=self.check_timeout * 0.9)

    # the light checks run on the loop (two quick /proc reads, in-memory figures): a thread each was one
    # more idle thread per open manager
    async def _check_memory_pressure(self) -> CheckOutcome:
        return check_memory_pressure(self.thresholds)

    async def _check_event_loop(self) -> CheckOutcome:
        outcome = await check_event_loop(self.thresholds.event_loop_lag_ms)
        self._last_lag_ms = float(outcome.details["lag_ms"])
        return outcome

    async def _check_error_rate(self) -> CheckOutcome:
        return check_error_rate(self._monitors(), self.thresholds)

    async def _check_background_tasks(self) -> CheckOutcome:
        return check_background_tasks(self._watched)
