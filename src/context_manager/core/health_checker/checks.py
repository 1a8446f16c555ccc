"""The built-in checks, as functions of what they look at (the checker passes its parts in).

Each returns a :class:`CheckOutcome`; a fault auto-recovery can repair carries its ``repair``
(see :mod:`.recovery`).
"""

from __future__ import annotations

import asyncio
import inspect
import math
import os
import shutil
import uuid
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from context_manager.core.health_checker.cgroup import read_cgroup_memory
from context_manager.core.health_checker.models import CheckOutcome, HealthState, HealthThresholds
from context_manager.core.health_checker.recovery import (
    rebuild_full_text_index,
    restart_background_tasks,
    restore_storage,
)
from context_manager.core.performance_monitor import PerformanceMonitor
from context_manager.core.performance_monitor.rules import describe_window

__all__ = [
    "WatchedTask",
    "check_background_tasks",
    "check_database",
    "check_error_rate",
    "check_event_loop",
    "check_memory_pressure",
    "check_storage",
    "check_storage_writes",
    "conversation_file_faults",
    "lost_memory_files",
    "memory_file_faults",
    "with_stale_conversation",
]


@dataclass(slots=True)
class WatchedTask:
    """A background task the ``background_tasks`` check watches."""

    is_alive: Callable[[], bool]
    """Returns whether the task runs as it should."""
    restart: Callable[[], Awaitable[Any] | Any] | None
    """Starts it again (auto-recovery); ``None`` if it cannot be restarted."""

    def alive(self) -> bool:
        """``is_alive()``, with an exception counting as dead."""
        try:
            return bool(self.is_alive())
        except Exception:
            return False


def check_storage(
    directories: list[Path],
    memory_manager: Any,
    limits: HealthThresholds,
    *,
    conversations: Any = None,
    absent_allowed: Collection[Path] = (),
) -> CheckOutcome:
    """Directories exist and are writable (a real fsync'd probe file), free disk, memory files present.

    ``conversations`` (a conversation store with ``file_faults()`` and ``restore_file()``, the embedded
    ``conversations.sqlite3``) is watched and restored the same way as the memory files.
    ``absent_allowed`` are directories of a context manager that is not open (before ``initialize()``,
    which creates them, or after ``cleanup()``): their absence is no fault, and no repair creates them.
    """
    if not directories:
        return CheckOutcome(HealthState.HEALTHY, "no storage configured", {"directories": []})
    missing: list[Path] = []
    absent: list[Path] = []
    problems: list[str] = []
    details: dict[str, Any] = {}
    worst = HealthState.HEALTHY
    for path in directories:
        info: dict[str, Any] = {"exists": path.is_dir()}
        details[str(path)] = info
        if not info["exists"] and path in absent_allowed and not path.exists():
            info["required"] = False  # a health check creates no state
            absent.append(path)
            continue
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
    faults = memory_file_faults(memory_manager)
    lost = [Path(memory_manager.storage_path) / name for name in faults]
    if faults:
        for problem in ("removed", "replaced", "truncated"):
            names = [name for name, found in faults.items() if found == problem]
            if names:
                problems.append(f"memory files {problem} while open: {', '.join(names)}")
        details["lost_memory_files"] = [str(path) for path in lost]
        details["memory_file_faults"] = dict(faults)
        worst = HealthState.UNHEALTHY
    conversation_faults = conversation_file_faults(conversations)
    if conversation_faults:
        for problem in ("removed", "replaced"):
            names = [name for name, found in conversation_faults.items() if found == problem]
            if names:
                problems.append(f"conversation files {problem} while open: {', '.join(names)}")
        details["conversation_file_faults"] = dict(conversation_faults)
        worst = HealthState.UNHEALTHY
    restorations = getattr(memory_manager, "storage_restorations", None)
    if restorations:  # the latest repair stays visible in the check's details
        details["last_restore"] = restorations[-1]
    if worst is HealthState.HEALTHY:
        writable = _count(len(directories) - len(absent), "directory", "directories")
        message = f"{writable} writable"
        if absent:
            message = (
                f"{message}; {_count(len(absent), 'directory', 'directories')} absent while the context "
                "manager is not open (initialize() creates them)"
            )
        return CheckOutcome(worst, message, details)
    recommendation = (
        "Storage is not usable: recreate missing directories (enable_auto_recovery does), fix "
        "permissions or free disk space under storage_path."
    )
    if faults:
        recommendation += (
            " Memory files were deleted, replaced or truncated while open: the process still holds their "
            "data (the open database, the in-process tiers) until it ends. "
            "await memory_manager.restore_storage() writes them again (enable_auto_recovery does)."
        )
    if conversation_faults:
        recommendation += (
            " The persisted conversations' database was deleted or replaced while open: the open "
            "connection still reads it until the process ends; auto-recovery copies it back."
        )
    if any(name.endswith(".sqlite3") and problem == "truncated" for name, problem in faults.items()):
        recommendation += (
            " The long-term database was truncated: its rows cannot be read back from this process; "
            "restore it from a backup (export_memories keeps what the other tiers hold)."
        )
    repair = None
    restore = getattr(memory_manager, "restore_storage", None)
    if conversation_faults:
        restore = _restore_with_conversations(restore if faults else None, conversations)
    elif not faults:
        restore = None
    if missing or faults or conversation_faults:
        repair = restore_storage(missing, restore)
    return CheckOutcome(worst, "; ".join(problems), details, recommendation=recommendation, repair=repair)


def conversation_file_faults(conversations: Any) -> dict[str, str]:
    """Files of an open conversation store removed or replaced behind its back (empty without files)."""
    faults = getattr(conversations, "file_faults", None)
    return dict(faults()) if faults is not None else {}


def _restore_with_conversations(
    restore_memory: Callable[[], Awaitable[Any]] | None, conversations: Any
) -> Callable[[], Awaitable[dict[str, Any]]]:
    """The memory files' restore (when they need one), then the conversations database's."""

    async def restore() -> dict[str, Any]:
        report: dict[str, Any] = {"restored": [], "failed": {}}
        if restore_memory is not None:
            memory_report = await restore_memory()
            report["restored"] += list(memory_report.get("restored", []))
            report["failed"].update(memory_report.get("failed", {}))
        if conversation_file_faults(conversations):  # the memory restore may have recreated the directory
            try:
                report["restored"].append(await conversations.restore_file())
            except Exception as error:  # reported in the repair, the check stays unhealthy
                report["failed"][Path(conversations.path).name] = str(error)
        return report

    return restore


def check_storage_writes(memory_manager: Any, limits: HealthThresholds) -> CheckOutcome:
    """Whether the memory manager's writes succeed (``memory_manager.write_health``).

    The directory probe of :func:`check_storage` writes two bytes; a full disk, a file-size limit or a
    read-only file shows only when real writes fail. The latest write failing is degraded,
    ``limits.write_failures_unhealthy`` failing in a row unhealthy; the next write that succeeds makes
    it healthy again.
    """
    snapshot = getattr(memory_manager, "write_health", None)
    if snapshot is None or not hasattr(snapshot, "consecutive_failures"):
        return CheckOutcome(HealthState.HEALTHY, "no memory writes to watch", {"watched": False})
    details = snapshot.to_dict()
    failing = snapshot.consecutive_failures
    if failing == 0:
        if snapshot.failures:
            message = (
                f"writes succeed again ({snapshot.writes} succeeded, {snapshot.failures} failed; "
                f"the last failure: {snapshot.last_error})"
            )
        else:
            message = f"{_count(snapshot.writes, 'write')}, none failed"
        return CheckOutcome(HealthState.HEALTHY, message, details)
    state = HealthState.UNHEALTHY if failing >= limits.write_failures_unhealthy else HealthState.DEGRADED
    latest = "the latest memory write" if failing == 1 else f"the last {failing} memory writes"
    return CheckOutcome(
        state,
        f"{latest} failed: {snapshot.last_error}",
        details,
        recommendation=(
            "Memory writes fail (disk full, read-only files or directory, a failing device): free disk "
            "space or fix permissions under storage_path. Nothing acknowledged is lost; writes resume by "
            "themselves and this check is healthy again with the next write that succeeds."
        ),
    )


def with_stale_conversation(outcome: CheckOutcome, manager: Any) -> CheckOutcome:
    """``outcome`` of the memory writes, degraded if the manager's persisted conversation is stale.

    Stale: the reload after a conflict failed, so every change of the conversation is refused (with
    ``ConversationConflictError``) until ``reload()`` succeeds; the repair calls it.
    """
    conversation = getattr(manager, "_conversation", None)
    if conversation is None or not getattr(conversation, "is_stale", False):
        return outcome
    name = conversation.conversation_id
    state = outcome.status if outcome.status is HealthState.UNHEALTHY else HealthState.DEGRADED
    healthy = outcome.status is HealthState.HEALTHY
    if getattr(getattr(conversation, "_conflict", None), "owned_by_another_user", False):
        # another end user's manager created the id first: no reload can succeed, so no repair
        taken = (
            f"conversation {name!r} is stale: another end user's manager created this id first, so every "
            "change is refused"
        )
        advice = "Open a manager with another conversation_id for this user."
        return CheckOutcome(
            state,
            taken if healthy else f"{outcome.message}; {taken}",
            {**outcome.details, "conversation_stale": True},
            recommendation=advice if healthy else f"{outcome.recommendation} {advice}",
        )
    stale = (
        f"conversation {name!r} is stale (its reload after a conflict failed): every change is refused "
        "until it is reloaded"
    )

    async def reload() -> str:
        version = await manager.reload()
        return f"reloaded conversation {name!r} at version {version}"

    advice = (
        "Call `await manager.reload()` once storage can be read (auto-recovery does it); until then "
        "every change of the conversation raises ConversationConflictError."
    )
    return CheckOutcome(
        state,
        stale if healthy else f"{outcome.message}; {stale}",
        {**outcome.details, "conversation_stale": True},
        recommendation=advice if healthy else f"{outcome.recommendation} {advice}",
        repair=reload,
    )


def _count(number: int, noun: str, plural: str | None = None) -> str:
    """``"1 write"``, ``"3 writes"``: a count a person reads without tripping."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"


def memory_file_faults(memory_manager: Any) -> dict[str, str]:
    """Files an open memory manager uses that were removed, replaced or truncated behind its back.

    From ``memory_manager.storage_faults()`` (file name -> ``"removed"``, ``"replaced"`` or
    ``"truncated"``); empty for a manager that is not open or keeps its memory on a server.
    """
    if memory_manager is None or not getattr(memory_manager, "is_initialized", False):
        return {}
    faults = getattr(memory_manager, "storage_faults", None)
    return dict(faults()) if faults is not None else {}


def lost_memory_files(memory_manager: Any) -> list[Path]:
    """Paths of the files :func:`memory_file_faults` reports (removed, replaced or truncated)."""
    faults = memory_file_faults(memory_manager)
    return [Path(memory_manager.storage_path) / name for name in faults]


async def check_database(memory_manager: Any, time_limit: float | None = None) -> CheckOutcome:
    """``memory_manager.check_integrity(quick=True)``: SQLite (unhealthy) and full-text indexes (degraded).

    A memory manager that is not open (before ``initialize()``, after ``cleanup()``) has nothing to check.
    ``time_limit``: seconds the integrity check may take (the checker gives a little less than its
    ``check_timeout``); past them the database is reported unreachable, with what to do: a PostgreSQL
    server that is down makes the call wait ``postgres_connect_timeout`` (10 s, as ``check_timeout``)
    for a connection, which read as a hung check.

    The quick check runs on a separate read-only connection without the memory write lock, so a
    periodic health check never makes writes wait (the full ``integrity_check`` took the write lock
    for about 1 s at 200k memories).
    """
    check_integrity = getattr(memory_manager, "check_integrity", None)
    if check_integrity is None:
        return CheckOutcome(HealthState.HEALTHY, "no database to check", {"checked": False})
    if not getattr(memory_manager, "is_initialized", True):  # before initialize() or after cleanup()
        return CheckOutcome(HealthState.HEALTHY, "memory not open: no database to check", {"checked": False})
    report = check_integrity(quick=True)
    if inspect.isawaitable(report):
        scope = asyncio.timeout(time_limit)
        try:
            async with scope:
                report = await report
        except TimeoutError:
            if not scope.expired():
                raise
            return _no_answer(memory_manager, time_limit)
    details = dict(report) if isinstance(report, dict) else {"result": report}
    if "postgres" in details:
        return _postgres_outcome(memory_manager, details)
    sqlite_state = str(details.get("sqlite", "ok"))
    # every other entry ("fts", "short_index", "medium_index" ...) is a rebuildable full-text index
    index_problems = {
        key: str(value)
        for key, value in details.items()
        if key not in ("ok", "sqlite", "mode") and value != "ok"
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
        return CheckOutcome(
            HealthState.DEGRADED,
            "full-text index damaged: "
            + "; ".join(f"{key}: {value}" for key, value in index_problems.items()),
            details,
            recommendation="Rebuild the full-text index: await memory_manager.rebuild_index().",
            repair=rebuild_full_text_index(rebuild_index) if rebuild_index is not None else None,
        )
    if details.get("mode") == "quick":  # pages and index readable; rows against the index not compared
        return CheckOutcome(HealthState.HEALTHY, "database and full-text index intact (quick check)", details)
    return CheckOutcome(HealthState.HEALTHY, "database and full-text index intact", details)


def _no_answer(memory_manager: Any, time_limit: float | None) -> CheckOutcome:
    """The outcome of an integrity check that did not finish within ``time_limit`` seconds."""
    waited = f"no answer within {time_limit:g} s"
    if getattr(getattr(memory_manager, "backend", None), "database", None) is not None:  # PostgreSQL
        return _postgres_outcome(
            memory_manager, {"postgres": f"{waited} (the server is down, unreachable or overloaded)"}
        )
    return CheckOutcome(
        HealthState.UNHEALTHY,
        f"database integrity check: {waited}",
        {"timed_out_s": time_limit},
        recommendation=(
            "The memory database does not answer: look for a process holding it (a long write, a backup) "
            "and at the disk under storage_path (slow, full or failing)."
        ),
    )


def _postgres_outcome(memory_manager: Any, details: dict[str, Any]) -> CheckOutcome:
    """The PostgreSQL server answers and holds the schema; the pool's counters in the details."""
    database = getattr(getattr(memory_manager, "backend", None), "database", None)
    if database is not None:
        details["server"] = database.location
        details["pool"] = database.stats()
    state = str(details["postgres"])
    if state == "ok":
        return CheckOutcome(HealthState.HEALTHY, "PostgreSQL server answers; schema in place", details)
    return CheckOutcome(
        HealthState.UNHEALTHY,
        f"PostgreSQL memory storage not usable: {state}",
        details,
        recommendation=(
            "Check that the PostgreSQL server runs and is reachable (postgres_dsn). The connection pool "
            "reconnects by itself once it is back; until then memory calls fail with StorageError and the "
            "context window keeps working."
        ),
    )


def check_memory_pressure(limits: HealthThresholds, *, root: str | os.PathLike[str] = "/") -> CheckOutcome:
    """Memory in use (the host's, or of a container's cgroup limit) and the process's RSS against the limits.

    The host's memory (psutil) and, where the process's cgroup has a memory limit smaller than the host's
    memory (a container's), the cgroup's working set against that limit (see :mod:`.cgroup`): the higher
    of the two percentages is judged, and ``details["memory_limit"]`` says whose it is (``"host"``,
    ``"cgroup v1"`` or ``"cgroup v2"``). ``root``: where ``/proc`` and ``/sys/fs/cgroup`` are read.
    """
    import psutil

    memory = psutil.virtual_memory()
    rss_mb = psutil.Process().memory_info().rss / 1048576.0
    percent, limit_bytes, source = memory.percent, memory.total, "host"
    used_mb = (memory.total - memory.available) / 1048576.0
    cgroup = read_cgroup_memory(root)
    details: dict[str, Any] = {"system_memory_percent": memory.percent, "process_memory_mb": round(rss_mb, 1)}
    if cgroup is not None:
        details["cgroup"] = cgroup.to_dict()
        cgroup_limit, cgroup_percent = cgroup.limit_bytes, cgroup.percent
        if cgroup_limit is not None and cgroup_limit < memory.total and cgroup_percent is not None:
            details["cgroup_memory_percent"] = round(cgroup_percent, 1)
            if cgroup_percent >= percent:
                percent, used_mb = cgroup_percent, cgroup.working_set_bytes / 1048576.0
                limit_bytes, source = cgroup_limit, f"cgroup v{cgroup.version}"
    details["memory_limit"] = source
    details["memory_limit_mb"] = round(limit_bytes / 1048576.0, 1)
    details["memory_percent"] = round(percent, 1)
    if source == "host":
        described = f"system memory {percent:.0f}% used"
    else:
        described = (
            f"container memory {percent:.0f}% used ({used_mb:.0f} of {limit_bytes / 1048576.0:.0f} MB, "
            f"the {source} limit)"
        )
    recommendation = (
        "Memory is short: run optimize_system(), lower short_term_memory_size or max_tokens, "
        "or give the process more memory"
        + (" (raise the container's memory limit)." if source != "host" else ".")
    )
    if percent >= limits.memory_percent_unhealthy:
        return CheckOutcome(HealthState.UNHEALTHY, described, details, recommendation)
    if percent >= limits.memory_percent_degraded:
        return CheckOutcome(HealthState.DEGRADED, described, details, recommendation)
    if limits.process_memory_limit_mb is not None and rss_mb > limits.process_memory_limit_mb:
        return CheckOutcome(
            HealthState.DEGRADED,
            f"process uses {rss_mb:.0f} MB (> {limits.process_memory_limit_mb:.0f} MB)",
            details,
            recommendation,
        )
    return CheckOutcome(HealthState.HEALTHY, f"{described}, process {rss_mb:.0f} MB", details)


async def check_event_loop(limit_ms: float) -> CheckOutcome:
    """How late a 20 ms timer fires (``details["lag_ms"]``); ten times the limit is unhealthy."""
    loop = asyncio.get_running_loop()
    probe_s = 0.02
    started = loop.time()
    await asyncio.sleep(probe_s)
    lag_ms = max(0.0, (loop.time() - started - probe_s) * 1000.0)
    details = {"lag_ms": round(lag_ms, 3), "limit_ms": limit_ms}
    if lag_ms <= limit_ms:
        return CheckOutcome(HealthState.HEALTHY, f"lag {lag_ms:.1f} ms", details)
    return CheckOutcome(
        HealthState.UNHEALTHY if lag_ms > 10 * limit_ms else HealthState.DEGRADED,
        f"event loop blocked: a timer fired {lag_ms:.0f} ms late",
        details,
        recommendation="Something blocks the event loop: run blocking calls with asyncio.to_thread().",
    )


def check_error_rate(monitors: Iterable[PerformanceMonitor], limits: HealthThresholds) -> CheckOutcome:
    """The worst recent error rate among monitors with ``min_operations`` in the last ``error_window_s`` s."""
    window_s = limits.error_window_s
    worst_rate, worst_count, judged = 0.0, 0, 0
    for monitor in monitors:
        rate, count = monitor.recent_error_rate(window_s=window_s)
        if count < limits.min_operations:
            continue
        judged += 1
        if rate >= worst_rate:
            worst_rate, worst_count = rate, count
    details = {
        "monitors": judged,
        "error_rate": worst_rate,
        "operations": worst_count,
        "window_s": window_s if math.isfinite(window_s) else None,  # None: any age (JSON has no inf)
    }
    if not judged:
        return CheckOutcome(HealthState.HEALTHY, "not enough recent operations to judge", details)
    message = f"{worst_rate:.1%} of the last {worst_count} operations failed{describe_window(window_s)}"
    recommendation = "Operations are failing: see the recent errors in the diagnostic report."
    if worst_rate >= limits.error_rate_unhealthy:
        return CheckOutcome(HealthState.UNHEALTHY, message, details, recommendation)
    if worst_rate >= limits.error_rate_degraded:
        return CheckOutcome(HealthState.DEGRADED, message, details, recommendation)
    return CheckOutcome(HealthState.HEALTHY, message, details)


def check_background_tasks(watched: dict[str, WatchedTask]) -> CheckOutcome:
    """Every watched task is alive; dead ones with a restart function can be restarted."""
    dead = [name for name, task in watched.items() if not task.alive()]
    details = {"watched": sorted(watched), "dead": dead}
    if not dead:
        return CheckOutcome(HealthState.HEALTHY, f"{_count(len(watched), 'background task')} alive", details)
    restarts = {name: restart for name in dead if (restart := watched[name].restart) is not None}
    return CheckOutcome(
        HealthState.DEGRADED,
        "background tasks not running: " + ", ".join(dead),
        details,
        recommendation="A background task died: enable_auto_recovery restarts it (see its logged error).",
        repair=restart_background_tasks(restarts) if restarts else None,
    )
