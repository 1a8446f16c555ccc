"""Prometheus export of a monitor's figures (``pip install 'python-context-manager[prometheus]'``)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from context_manager.core.errors import InvalidArgumentError, InvalidSettingError, MissingDependencyError

if TYPE_CHECKING:
    from context_manager.core.performance_monitor.monitor import PerformanceMonitor

__all__ = ["PrometheusCollector"]

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


class PrometheusCollector:
    """A ``prometheus_client`` collector for a :class:`PerformanceMonitor` (the same figures).

    Register it with ``registry.register(collector)``. Metrics (prefix ``namespace``):
    ``_operations_total{operation,outcome}``, ``_operation_latency_seconds{operation,quantile}``,
    ``_tokens_total{operation,direction}`` (model tokens, e.g. of LLM summaries; direction ``input`` or
    ``output``), ``_error_rate``, ``_operations_per_second``, ``_memory_usage_bytes``, ``_cpu_percent``,
    ``_event_loop_lag_seconds`` and ``_health_score``.

    Args:
        monitor: The monitor whose figures are exported.
        namespace: Prefix of every metric name.

    Raises:
        InvalidArgumentError: ``monitor`` is not a :class:`PerformanceMonitor`.
        InvalidSettingError: ``namespace`` is not a valid start of a metric name.
        MissingDependencyError: ``prometheus_client`` is not installed.
    """

    def __init__(self, monitor: PerformanceMonitor, namespace: str = "context_manager") -> None:
        from context_manager.core.performance_monitor.monitor import PerformanceMonitor

        if not isinstance(monitor, PerformanceMonitor):  # else an AttributeError at the first scrape
            raise InvalidArgumentError("monitor", monitor, "a PerformanceMonitor")
        if not isinstance(namespace, str) or not _METRIC_NAME.fullmatch(namespace):
            raise InvalidSettingError(
                "namespace",
                namespace,
                "a Prometheus metric name prefix (letters, digits, _ and :, not first a digit)",
            )
        try:
            import prometheus_client.core as families
        except ImportError:
            raise MissingDependencyError("prometheus_collector", "prometheus-client", "prometheus") from None
        self.monitor = monitor
        """The monitor whose figures are exported."""
        self.namespace = namespace
        """Prefix of every metric name."""
        self._families: Any = families

    def collect(self) -> Iterator[Any]:
        """Yield the metric families (called by the Prometheus registry on each scrape)."""
        families = self._families
        prefix = self.namespace
        metrics = self.monitor.get_current_metrics()
        operations = families.CounterMetricFamily(
            f"{prefix}_operations", "Operations recorded, by outcome.", labels=["operation", "outcome"]
        )
        latency = families.GaugeMetricFamily(
            f"{prefix}_operation_latency_seconds",
            "Operation latency quantiles.",
            labels=["operation", "quantile"],
        )
        for name, stats in self.monitor.operation_stats().items():
            operations.add_metric([name, "success"], stats.successes)
            operations.add_metric([name, "failure"], stats.failures)
            for quantile, value_ms in (("0.5", stats.p50_ms), ("0.95", stats.p95_ms), ("0.99", stats.p99_ms)):
                latency.add_metric([name, quantile], value_ms / 1000.0)
        yield operations
        yield latency
        tokens = families.CounterMetricFamily(
            f"{prefix}_tokens",
            "Model tokens billed, by operation and direction.",
            labels=["operation", "direction"],
        )
        for name, usage in self.monitor.token_usage().items():
            tokens.add_metric([name, "input"], usage["input_tokens"])
            tokens.add_metric([name, "output"], usage["output_tokens"])
        yield tokens
        for suffix, documentation, value in (
            ("error_rate", "Failures / operations over the monitor's lifetime.", metrics.error_rate),
            ("operations_per_second", "Throughput over the last minute.", metrics.operations_per_second),
            ("memory_usage_bytes", "Resident memory of the process.", metrics.memory_usage_mb * 1048576.0),
            ("cpu_percent", "CPU use of the process, percent of one core.", metrics.cpu_percent),
            (
                "event_loop_lag_seconds",
                "How late the sampler's timer fired.",
                metrics.event_loop_lag_ms / 1e3,
            ),
            ("health_score", "Health score in [0, 1].", metrics.health_score),
        ):
            yield families.GaugeMetricFamily(f"{prefix}_{suffix}", documentation, value=value)
