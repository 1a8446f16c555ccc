"""The process-wide registry of running monitors, and the fan-out of library operations to them.

A monitor created with ``collect_library_operations=True`` joins the registry when it starts and leaves
it when it stops; :func:`record_library_operation` records an operation in every registered monitor
(plus a component's own monitor). The registry is an immutable tuple replaced under a lock, so the
hot path reads it without locking.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from context_manager.core.performance_monitor.monitor import PerformanceMonitor

__all__ = ["join", "leave", "record_library_operation", "record_library_tokens", "running_monitors"]

_registry_lock = threading.Lock()
_running: tuple[PerformanceMonitor, ...] = ()


def _renew_registry_lock() -> None:
    """In a forked child: a new lock.

    A thread of the parent starting or stopping a monitor at the fork held it, and that thread does not
    exist here: the child's first monitor waited for ever.
    """
    global _registry_lock
    _registry_lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_renew_registry_lock)


def running_monitors() -> tuple[PerformanceMonitor, ...]:
    """Return the running monitors that collect library operations (a snapshot)."""
    return _running


def join(monitor: PerformanceMonitor) -> None:
    """Add ``monitor`` to the registry (no effect if it is there already)."""
    global _running
    with _registry_lock:
        if monitor not in _running:
            _running = (*_running, monitor)


def leave(monitor: PerformanceMonitor) -> None:
    """Remove ``monitor`` from the registry (no effect if it is not there)."""
    global _running
    with _registry_lock:
        _running = tuple(running for running in _running if running is not monitor)


def record_library_operation(
    name: str,
    duration_s: float,
    success: bool,
    *,
    own_monitor: PerformanceMonitor | None = None,
    error: BaseException | str | None = None,
    rejected: bool | None = None,
) -> None:
    """Record one library operation in every running monitor and in ``own_monitor``.

    Args:
        name: The operation's name, e.g. ``"add_message"``.
        duration_s: How long it took, in seconds.
        success: Whether it succeeded.
        own_monitor: A component's own monitor (e.g. ``context_manager.performance_monitor``); it is
            recorded once even if it is also running and collecting library operations.
        error: The exception (or its description) when the operation failed.
        rejected: Whether it was refused for the caller's bad input (see
            :meth:`PerformanceMonitor.record_operation`; ``None``: decided from ``error``).
    """
    monitors = _running
    for monitor in monitors:
        monitor.record_operation(name, duration_s, success, error=error, rejected=rejected)
    if own_monitor is not None and own_monitor not in monitors:
        own_monitor.record_operation(name, duration_s, success, error=error, rejected=rejected)


def record_library_tokens(
    name: str,
    input_tokens: int,
    output_tokens: int,
    *,
    own_monitor: PerformanceMonitor | None = None,
) -> None:
    """Record the tokens one model call cost in every running monitor and in ``own_monitor``.

    Args:
        name: The operation's name, e.g. ``"summarize"``.
        input_tokens: Prompt tokens billed.
        output_tokens: Completion tokens billed.
        own_monitor: A component's own monitor; recorded once even if it is also running.
    """
    monitors = _running
    for monitor in monitors:
        monitor.record_token_usage(name, input_tokens, output_tokens)
    if own_monitor is not None and own_monitor not in monitors:
        own_monitor.record_token_usage(name, input_tokens, output_tokens)
