"""The health checker's value objects: states, check outcomes and results, status, report, thresholds."""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from context_manager.core.errors import InvalidSettingError
from context_manager.core.performance_monitor.metrics import check_limits

__all__ = [
    "CheckOutcome",
    "CheckResult",
    "DiagnosticReport",
    "HealthState",
    "HealthStatus",
    "HealthThresholds",
    "RecoveryAction",
    "Repair",
    "as_outcome",
    "combine",
]


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
    """Storage directories (exists, size, free disk) and database facts; read within ``check_timeout``:
    past it (a hung filesystem) the directories' paths with ``timed_out_s`` and ``error``."""
    recent_errors: list[dict[str, Any]]
    """Recent problems: failed checks and repairs, and the monitors' recent operation errors."""
    recoveries: list[RecoveryAction]
    """Recent repairs made by auto-recovery, oldest first."""
    generated_at: float
    """When the report was made (``time.time()``)."""

    def to_dict(self) -> dict[str, Any]:
        """Return the report as dicts and lists that ``json.dumps(..., allow_nan=False)`` writes.

        What a custom check put in its details that JSON has no form for is written as JSON can: NaN and
        infinities as ``None``, sets (sorted) and tuples as lists, other keys and objects as ``str()``.
        """
        data = asdict(self)
        data["status"] = self.status.value
        for result in data["checks"].values():
            result["status"] = result["status"].value
        ready: dict[str, Any] = json_ready(data)
        return ready


def json_ready(value: Any) -> Any:
    """``value`` with what strict JSON cannot write made writable (see :meth:`DiagnosticReport.to_dict`).

    Shared by every output that must be strict JSON (the MCP server's statistics too): NaN and infinities
    become ``None``, sets (sorted) and tuples lists, other keys and objects ``str()``.
    """
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, Mapping):
        return {key if isinstance(key, str) else str(key): json_ready(item) for key, item in value.items()}
    if not isinstance(value, list | tuple | set | frozenset):
        return str(value)
    items = [json_ready(item) for item in value]
    if isinstance(value, set | frozenset):
        try:
            items.sort()
        except TypeError:  # mixed types: an order all the same
            items.sort(key=repr)
    return items


@dataclass(frozen=True, slots=True)
class HealthThresholds:
    """Limits the built-in checks compare with."""

    min_free_disk_mb: float = 100.0
    """Free disk below this on a storage volume is degraded (below a tenth of it, unhealthy)."""
    memory_percent_degraded: float = 90.0
    """Memory in use (percent, 0 to 100) from which memory pressure is degraded: of the host's memory or,
    in a container whose cgroup limit is smaller, of that limit (the higher of the two is judged)."""
    memory_percent_unhealthy: float = 97.0
    """Memory in use (percent, 0 to 100, not below the degraded level; the host's or the container's, as
    for ``memory_percent_degraded``) from which it is unhealthy."""
    process_memory_limit_mb: float | None = None
    """Process RSS above this (>= 0) is degraded; ``None`` disables it."""
    event_loop_lag_ms: float = 100.0
    """A probe timer firing this late is degraded (ten times as late: unhealthy)."""
    error_rate_degraded: float = 0.05
    """Recent error rate (a fraction, 0 to 1) from which the error-rate check is degraded."""
    error_rate_unhealthy: float = 0.25
    """Recent error rate (a fraction, 0 to 1, not below the degraded rate) from which it is unhealthy."""
    min_operations: int = 10
    """The error-rate check judges only monitors with at least this many recent operations."""
    write_failures_unhealthy: int = 3
    """Memory writes failing in a row from which ``storage_writes`` is unhealthy (one is degraded)."""
    error_window_s: float = 300.0
    """The error-rate check counts each monitor's operations of the last this many seconds (> 0), among
    its last ``history_size`` (1,000 by default): older failures no longer count, and a monitor with fewer
    than ``min_operations`` operations in the window is not judged. ``math.inf``: the whole ring buffer."""

    def __post_init__(self) -> None:
        """Check the limits' types at once (a bad one made its check fail with a ``TypeError``).

        Raises:
            InvalidSettingError: a limit is not a number (an integer for the counts; a bool is neither),
                is NaN, is negative where only a count or a size makes sense, is an error rate outside
                0 to 1 (5 meant as 5 % would never fire) or a memory percentage outside 0 to 100 (above
                100 it never fires), or a degraded level is above its unhealthy one (the check is
                unhealthy first, so degraded would never show: set both when lowering the unhealthy one), or
                ``error_window_s`` is not > 0.
        """
        check_limits(
            self,
            integers=("min_operations", "write_failures_unhealthy"),
            fractions=("error_rate_degraded", "error_rate_unhealthy"),
            positive=("error_window_s",),
            non_negative=(
                "min_free_disk_mb",
                "process_memory_limit_mb",
                "event_loop_lag_ms",
                "min_operations",
                "write_failures_unhealthy",
            ),
        )
        for name in ("memory_percent_degraded", "memory_percent_unhealthy"):
            value = getattr(self, name)
            if not 0 <= value <= 100:
                raise InvalidSettingError(
                    name, value, "a percentage from 0 to 100 (of the memory in use: 90 is 90 %)"
                )
        for degraded, unhealthy in (
            ("memory_percent_degraded", "memory_percent_unhealthy"),
            ("error_rate_degraded", "error_rate_unhealthy"),
        ):
            low, high = getattr(self, degraded), getattr(self, unhealthy)
            if low > high:
                raise InvalidSettingError(
                    degraded, low, f"at most {unhealthy} ({high}): the degraded level comes first"
                )


def as_outcome(value: Any) -> CheckOutcome:
    """Turn what a check function returned into a :class:`CheckOutcome` (anything else is unhealthy)."""
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


def combine(
    results: dict[str, CheckResult], recoveries: list[RecoveryAction], started: float
) -> HealthStatus:
    """Fold check results into a :class:`HealthStatus` (state and score rules: see the package docstring).

    ``started`` is the ``time.perf_counter()`` reading when the run began.
    """
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
