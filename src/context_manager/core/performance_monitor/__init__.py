"""Performance monitoring: operation timings, percentiles, system samples, health score, advice.

A :class:`PerformanceMonitor` records operations (name, duration, success) in bounded structures
(ring buffers, and fixed-size latency reservoirs: one per operation name for at most
``max_operation_names`` names, further names folded into one overflow bucket) and, while started,
samples the process's resident memory, CPU use and the event loop's lag in one background task it owns::

    monitor = PerformanceMonitor(sample_interval=0.1)
    await monitor.start_monitoring()
    with monitor.operation_timer("parse"):
        parse(document)
    metrics = monitor.get_current_metrics()        # PerformanceMetrics
    summary = monitor.get_performance_summary()    # dict with health_score and recommendations
    await monitor.stop_monitoring()

How library operations reach monitors
-------------------------------------
The library's instrumented operations (``EnhancedContextManager.add_message``, ``search_memory``,
``execute_tool``) call :func:`record_library_operation`, which fans each operation out to

* every *running* monitor created with ``collect_library_operations=True`` (the default): a monitor
  joins a process-wide registry in :meth:`PerformanceMonitor.start_monitoring` and leaves it in
  :meth:`PerformanceMonitor.stop_monitoring`, so a monitor you start observes every context manager in
  the process while it runs, and costs nothing once stopped;
* the context manager's own monitor (``context_manager.performance_monitor``, created when
  ``enable_performance_monitor`` is set), which is not in the registry and sees only that manager.

Your own code can use the same path with the :func:`monitored_operation` decorator or by calling
:func:`record_library_operation`.

Health score and recommendations
--------------------------------
Both are computed from the recorded data by explicit rules with the limits in
:class:`PerformanceThresholds` (see :mod:`.rules`). *Recent* is the last ``recent_window_s`` seconds
(300 by default): the error rate of the operations of that span (among the last ``history_size``), the
event-loop lag and CPU of its samples.

Prometheus export (``pip install 'python-context-manager[prometheus]'``)::

    from prometheus_client import REGISTRY
    REGISTRY.register(monitor.prometheus_collector())
    # several monitors in one registry: one collector, a label per monitor
    REGISTRY.register(PrometheusCollector({"support": first, "billing": second}, label="manager"))

The package's modules: ``metrics`` (value objects), ``reservoir`` (bounded latency sample and
percentiles), ``monitor`` (the monitor), ``timer``, ``rules`` (health score and advice), ``profiling``
(cProfile of timed blocks), ``registry`` and ``instrumentation`` (library operations), ``prometheus``.
psutil, cProfile and prometheus_client are imported on first use, not here.
"""

from __future__ import annotations

from context_manager.core.performance_monitor.instrumentation import monitored_operation
from context_manager.core.performance_monitor.metrics import (
    OperationStats,
    PerformanceMetrics,
    PerformanceThresholds,
    SystemSample,
)
from context_manager.core.performance_monitor.monitor import PerformanceMonitor
from context_manager.core.performance_monitor.prometheus import PrometheusCollector
from context_manager.core.performance_monitor.registry import (
    record_library_operation,
    record_library_tokens,
    running_monitors,
)
from context_manager.core.performance_monitor.reservoir import percentile
from context_manager.core.performance_monitor.timer import OperationTimer

__all__ = [
    "OperationStats",
    "OperationTimer",
    "PerformanceMetrics",
    "PerformanceMonitor",
    "PerformanceThresholds",
    "PrometheusCollector",
    "SystemSample",
    "monitored_operation",
    "percentile",
    "record_library_operation",
    "record_library_tokens",
    "running_monitors",
]
