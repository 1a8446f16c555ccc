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
``storage_writes``  memory writes succeed (critical: 3 failures in a row)         none (recovers by itself)
``database``        ``check_integrity(quick=True)``: SQLite pages, FTS index      ``rebuild_index()`` (FTS)
``memory_pressure`` memory in use (host, or cgroup limit in a container); RSS    none
``event_loop``      how late a short timer fires (something blocks the loop)     none
``error_rate``      failures of the last 5 min in the manager's/running monitors none
``background_tasks`` watched background tasks are alive                          restart them
=================== ============================================================ =========================

``storage`` needs a path (``storage_path=`` or the context manager's configuration) and ``database``
a context manager with a memory manager; the others always run. ``database`` runs ``PRAGMA
quick_check`` and a read of the whole full-text index on a separate read-only connection, without the
memory write lock: a periodic check never makes writes wait. The full ``integrity_check`` is
``await memory_manager.check_integrity()``.

The checkers of managers sharing one store (``core/shared_store.py``) share its ``storage`` and
``database`` results: one of them checks for real per ``check_interval``, the others reuse that result
(``details["reused_result_age_s"]``) or wait for the run in progress. A checker never reuses its own.

Overall state: any *critical* check unhealthy -> ``UNHEALTHY``; otherwise any check not healthy ->
``DEGRADED``; else ``HEALTHY``. Score: mean of check scores (healthy 1, degraded 0.5, unhealthy 0),
critical checks counting twice.

The package's modules: ``models`` (states, outcomes, status, report, thresholds), ``checks`` (the
built-in checks), ``recovery`` (their repairs), ``report`` (system and storage facts) and ``checker``.
psutil is imported on first use, not here.
"""

from __future__ import annotations

from context_manager.core.health_checker.checker import HealthChecker
from context_manager.core.health_checker.models import (
    CheckOutcome,
    CheckResult,
    DiagnosticReport,
    HealthState,
    HealthStatus,
    HealthThresholds,
    RecoveryAction,
)

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
